//! The built kernel and image boot under plain QEMU microvm (TCG here), with
//! the agent answering over its virtio-serial channel and sshd over the tap.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use banger::guest::session::{AgentChannel, AgentSession};
use banger::protocol::helper::QemuMachine;
use banger::vmm::qemu;
use banger_agent::cmdline::GuestParams;

use crate::support::*;

/// One guest under plain QEMU; killed on drop.
struct Guest {
    qemu: Child,
    dir: PathBuf,
    ip: Ipv4Addr,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

impl Guest {
    fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }
}

fn boot(ns: &Netns, dir: &Path, name: &str, ip: Ipv4Addr, tap: &str, key: &str) -> Guest {
    let a = artifacts();
    std::fs::create_dir_all(dir).unwrap();
    let root = dir.join("root.ext4");
    let work = dir.join("work.ext4");
    banger::fsutil::copy_synced(&a.rootfs, &root).unwrap();
    banger::fsutil::copy_synced(&a.work_seed, &work).unwrap();
    run_ok(Command::new("ip").args(["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"]));
    run_ok(Command::new("ip").args([
        "-n", &ns.name, "link", "set", tap, "master", "banger0", "up",
    ]));
    let params = GuestParams {
        name: Some(name.into()),
        ip: Some((ip, 24)),
        gw: Some(Ipv4Addr::new(172, 16, 0, 1)),
        dns: vec![],
        ssh_key: Some(key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
    };
    let spec = QemuMachine {
        kvm: false,
        vcpu: 1,
        memory_mib: 768,
        kernel: a.vmlinux.clone(),
        initrd: Some(a.initrd.clone()),
        cmdline: qemu::kernel_cmdline(false, &params),
        disks: vec![(root, "raw".into()), (work, "raw".into())],
        tap: Some(tap.into()),
        mac: Some(format!("02:42:ac:10:00:{:02x}", ip.octets()[3])),
        agent_socket: Some(dir.join("agent.sock")),
        serial_log: dir.join("serial.log"),
        incoming: false,
        tcg_tb_mib: banger::config::DEFAULT_TCG_TB_MIB,
    };
    let qemu = Command::new("ip")
        .args(["netns", "exec", &ns.name, "qemu-system-x86_64"])
        .args(qemu::argv(&spec, None, None))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.log")).unwrap())
        .spawn()
        .unwrap();
    Guest {
        qemu,
        dir: dir.to_path_buf(),
        ip,
    }
}

fn ssh(ns: &Netns, key: &Path, ip: Ipv4Addr, cmd: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ssh"])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-i",
        ])
        .arg(key)
        .arg(format!("root@{ip}"))
        .arg(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn host_key(ns: &Netns, ip: Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "ssh-keyscan",
            "-t",
            "ed25519",
            "-T",
            "10",
        ])
        .arg(ip.to_string())
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.lines()
        .find(|l| l.contains("ssh-ed25519"))
        .expect("a host key")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string()
}

#[test]
fn built_kernel_and_image_boot_under_qemu_tcg_with_agent_ssh_and_own_host_keys() {
    let _heavy = heavy();
    artifacts();
    let ns = Netns::new();
    run_ok(Command::new("ip").args(["-n", &ns.name, "link", "add", "banger0", "type", "bridge"]));
    run_ok(Command::new("ip").args([
        "-n",
        &ns.name,
        "addr",
        "add",
        "172.16.0.1/24",
        "dev",
        "banger0",
    ]));
    run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "banger0", "up"]));
    let tmp = tempfile::Builder::new()
        .prefix("banger-boot-")
        .tempdir()
        .unwrap();
    let key = tmp.path().join("id_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let guests = [
        boot(
            &ns,
            &tmp.path().join("a"),
            "alpha-1",
            Ipv4Addr::new(172, 16, 0, 2),
            "bgtboota",
            &pubkey,
        ),
        boot(
            &ns,
            &tmp.path().join("b"),
            "beta-2",
            Ipv4Addr::new(172, 16, 0, 3),
            "bgtbootb",
            &pubkey,
        ),
    ];
    let rt = rt();
    let mut keys = Vec::new();
    for (g, name) in guests.iter().zip(["alpha-1", "beta-2"]) {
        // The agent answers over its channel.
        let agent = rt.block_on(async {
            let a = AgentSession::start(AgentChannel::Serial(g.agent_socket()));
            if let Err(e) = a.wait_up(Duration::from_secs(300)).await {
                panic!("agent never answered: {e}\nserial:\n{}", g.serial());
            }
            a
        });
        let health = rt.block_on(agent.health(Duration::from_secs(30))).unwrap();
        assert_eq!(health.init, "systemd", "the agent handed PID 1 to systemd");
        assert_eq!(health.hostname, name);
        assert!(health.setup_errors.is_empty(), "{:?}", health.setup_errors);
        assert_eq!(health.boot_id.len(), 36);
        // sshd shows up in /ports.
        let ports = rt.block_on(async {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                let p = agent
                    .ports(Duration::from_secs(5))
                    .await
                    .unwrap_or_default();
                // Listed with its process: the socket can show before its
                // owner does (sshd re-executes itself at start).
                if p.iter().any(|p| p.port == 22 && p.process.is_some()) {
                    break p;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "sshd never listened; serial:\n{}",
                    g.serial()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let sshd = ports
            .iter()
            .find(|p| p.port == 22 && p.proto.starts_with("tcp"))
            .unwrap();
        assert_eq!(sshd.process.as_deref(), Some("sshd"), "{ports:?}");
        // SSH on the configured IP says the hostname we passed.
        assert_eq!(ssh(&ns, &key, g.ip, "hostname").trim(), name);
        let mounts = ssh(
            &ns,
            &key,
            g.ip,
            "findmnt -n -o SOURCE /root; findmnt -n -o SOURCE /",
        );
        assert_eq!(
            mounts.split_whitespace().collect::<Vec<_>>(),
            ["/dev/vdb", "/dev/vda"]
        );
        keys.push(host_key(&ns, g.ip));
    }
    assert_ne!(
        keys[0], keys[1],
        "two boots of one image must have their own host keys"
    );
}
