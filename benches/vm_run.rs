//! `vm run --rm -- true` against the SSH path done by hand (`cargo bench
//! --bench vm_run`, as root). Baseline: the same kernel, image (qcow2 overlay
//! and work disk) and QEMU command line, launched directly, then `ssh
//! root@guest true` retried until it succeeds (how banger ran commands
//! before its agent did). Both run in one network namespace made here,
//! alternating, `BANGER_BENCH_RUNS` times (5). Prints wall times, medians,
//! banger's per-stage timings and the ratio.

#[path = "common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger::protocol::helper::QemuMachine;
use banger::vmm::qemu;
use common::*;

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
        // No agent channel: the baseline reaches the guest over SSH only.
        agent_socket: None,
        serial_log: dir.join("serial.log"),
        incoming: false,
        // The same cache as banger's VMs.
        tcg_tb_mib: banger::config::DEFAULT_TCG_TB_MIB,
    };
    let mut q = Command::new("ip")
        .args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(qemu::argv(&m, None, None))
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
    let _ = std::fs::remove_dir_all(dir);
    d
}

fn main() {
    let runs = runs(5);
    let b = Bench::new("run", 2);
    let key = b.root().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let pubkey = std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let banger_run = || {
        let t0 = Instant::now();
        let out = b
            .cmd(&["vm", "run", "--rm", "--", "true"])
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
    // Warm banger once (starts the daemon, creates the bridge) so both sides
    // find the bridge; the baseline's tap is made by hand.
    banger_run();
    let ns = b.ns.clone();
    run(Command::new("ip").args(["-n", &ns, "tuntap", "add", "dev", "bgtbench", "mode", "tap"]));
    run(Command::new("ip").args([
        "-n", &ns, "link", "set", "bgtbench", "master", "banger0", "up",
    ]));
    let (mut ours, mut base, mut stages) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let d = baseline(
            &ns,
            &b.root().join("baseline"),
            &b.image_dir(),
            &b.kernel_dir(),
            &key,
            &pubkey,
        );
        base.push(d);
        let (d, err) = banger_run();
        ours.push(d);
        stages.push(err);
        eprintln!(
            "run {i}: baseline {:.1}s, banger {:.1}s",
            base[i].as_secs_f64(),
            ours[i].as_secs_f64()
        );
    }
    let (mo, mb) = (median(&mut ours.clone()), median(&mut base.clone()));
    println!("guest: QEMU TCG, 2 vcpu, 1 GiB; cold boot each run");
    println!(
        "baseline: plain qemu + ssh true   median {:.2}s  {:?}",
        mb.as_secs_f64(),
        secs(&base)
    );
    println!(
        "banger vm run --rm -- true         median {:.2}s  {:?}",
        mo.as_secs_f64(),
        secs(&ours)
    );
    println!(
        "ratio banger/baseline: {:.2}",
        mo.as_secs_f64() / mb.as_secs_f64()
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
