//! `vm run --rm -- true` against the same boot done by hand (`cargo bench
//! --bench vm_run`, as root). Baseline: the same kernel, image (qcow2 overlay
//! and work disk), QEMU command line and guest agent, launched directly, then
//! `ssh root@guest true` retried until it succeeds. Both run in one
//! network namespace made here, alternating, `BANGER_BENCH_RUNS` times (3).
//! Prints wall times, banger's per-stage timings and the overhead.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger::protocol::helper::QemuMachine;
use banger::vmm::qemu;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vdv() -> PathBuf {
    banger::host::vsock_bridge::find_binary().expect("vhost-device-vsock")
}

fn baseline(
    ns: &str,
    dir: &Path,
    image: &Path,
    kernel: &Path,
    key: &Path,
    pubkey: &str,
) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let t0 = Instant::now();
    // The same disks banger makes: a qcow2 overlay and a copied work seed.
    std::fs::hard_link(image.join("rootfs.ext4"), dir.join("base.ext4")).unwrap();
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "base.ext4",
            "root.qcow2",
        ])
        .current_dir(dir));
    banger::fsutil::copy_synced(&image.join("work-seed.ext4"), &dir.join("work.ext4")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("work.ext4"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let _ = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(dir.join("work.ext4"))
        .output();
    run(Command::new("resize2fs")
        .arg("-f")
        .arg(dir.join("work.ext4")));
    let vhost = dir.join("vhost.sock");
    let mut vs = Command::new(vdv())
        .arg("--vm")
        .arg(format!(
            "guest-cid=3,socket={},uds-path={}",
            vhost.display(),
            dir.join("vsock.sock").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while !vhost.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ip = Ipv4Addr::new(172, 16, 0, 200);
    let params = banger_agent::cmdline::GuestParams {
        name: Some("baseline".into()),
        ip: Some((ip, 24)),
        gw: Some(Ipv4Addr::new(172, 16, 0, 1)),
        dns: vec![],
        ssh_key: Some(pubkey.into()),
    };
    let m = QemuMachine {
        kvm: false,
        vcpu: 2,
        memory_mib: 1024,
        kernel: kernel.join("vmlinux"),
        initrd: Some(kernel.join("initrd.img")),
        cmdline: qemu::kernel_cmdline(false, &params),
        disks: vec![
            (dir.join("root.qcow2"), "qcow2".into()),
            (dir.join("work.ext4"), "raw".into()),
        ],
        tap: Some("bgtbench".into()),
        mac: Some("02:42:ac:10:00:c8".into()),
        vhost_vsock: Some(vhost),
        serial_log: dir.join("serial.log"),
    };
    let mut q = Command::new("ip")
        .args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(qemu::argv(&m, None))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ssh",
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=1",
                "-i",
            ])
            .arg(key)
            .arg(format!("root@{ip}"))
            .arg("true")
            .status()
            .unwrap()
            .success();
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = t0.elapsed();
    let _ = q.kill();
    let _ = q.wait();
    let _ = vs.kill();
    let _ = vs.wait();
    let _ = std::fs::remove_dir_all(dir);
    d
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "run as root");
    let runs: usize = std::env::var("BANGER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::Builder::new()
        .prefix("banger-bench-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let cache = std::env::var_os("BANGER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/banger-ci/test-cache".into());
    let banger = env!("CARGO_BIN_EXE_banger");
    let ns = format!("bgbench-{}", std::process::id());
    let envs = |c: &mut Command| {
        c.env("HOME", root.join("home"))
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_STATE_HOME", root.join("state"))
            .env("XDG_CACHE_HOME", &cache)
            .env("XDG_RUNTIME_DIR", root.join("run"))
            .env("BANGER_SYSTEM", "0")
            .env("NO_COLOR", "1");
    };
    // Kernel and image from the cache (built there if needed), outside the namespace.
    for args in [
        &["kernel", "pull", "debian-cloud"][..],
        &["image", "build", "debian-bookworm"][..],
        &["daemon", "stop"][..],
    ] {
        let mut c = Command::new(banger);
        envs(&mut c);
        run(c.args(args));
    }
    std::fs::create_dir_all(root.join("config/banger")).unwrap();
    std::fs::write(
        root.join("config/banger/config.toml"),
        "[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"2G\"\n",
    )
    .unwrap();
    run(Command::new("ip").args(["netns", "add", &ns]));
    run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    let image = root.join("state/banger/images/debian-bookworm");
    let kernel = root.join("state/banger/kernels/debian-cloud");
    let key = root.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let pubkey = std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    // Warm banger once (starts the daemon, creates the bridge) so both sides
    // find the bridge; the baseline's tap is made by hand.
    let banger_run = || {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, banger]);
        envs(&mut c);
        let t0 = Instant::now();
        let out = c
            .args(["vm", "run", "--rm", "--", "true"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            t0.elapsed(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    banger_run();
    run(Command::new("ip").args(["-n", &ns, "tuntap", "add", "dev", "bgtbench", "mode", "tap"]));
    run(Command::new("ip").args([
        "-n", &ns, "link", "set", "bgtbench", "master", "banger0", "up",
    ]));
    let (mut b, mut base, mut stages) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let d = baseline(&ns, &root.join("baseline"), &image, &kernel, &key, &pubkey);
        base.push(d);
        let (d, err) = banger_run();
        b.push(d);
        stages.push(err);
        eprintln!(
            "run {i}: baseline {:.1}s, banger {:.1}s",
            base[i].as_secs_f64(),
            b[i].as_secs_f64()
        );
    }
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns, banger]);
    envs(&mut c);
    let _ = c.args(["daemon", "stop"]).output();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mb, mbase) = (med(&mut b), med(&mut base));
    println!(
        "baseline: plain qemu + ssh true   median {:.2}s  ({:?})",
        mbase.as_secs_f64(),
        base.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    println!(
        "banger vm run --rm -- true         median {:.2}s  ({:?})",
        mb.as_secs_f64(),
        b.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    println!(
        "overhead: {:+.1}%",
        (mb.as_secs_f64() / mbase.as_secs_f64() - 1.0) * 100.0
    );
    println!("stages of the last banger run:");
    for l in stages
        .last()
        .unwrap()
        .lines()
        .filter(|l| l.contains(") ") || l.ends_with(')') || l.starts_with("ready"))
    {
        println!("  {}", l.trim());
    }
}
