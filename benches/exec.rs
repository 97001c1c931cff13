//! Commands in a warm VM (`cargo bench --bench exec`, as root): `banger vm
//! exec dev -- true` against `ssh dev.vm true` (the system ssh with banger's
//! ssh_config, a fresh connection each, as commands ran before the agent did),
//! in the same run; the agent round trip (`vm ping`); the cost
//! of spawning `/bin/true` inside the guest (the floor under exec); and the
//! throughput of 200 MB of stdout through `vm exec` and through ssh.
//! `BANGER_BENCH_RUNS` samples (30) of each latency.

#[path = "common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn timed(mut c: std::process::Command) -> Duration {
    let t = Instant::now();
    let st = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{c:?}");
    t.elapsed()
}

fn report(what: &str, v: &mut [Duration]) {
    let (p50, p90) = (percentile(v, 50), percentile(v, 90));
    println!(
        "{what:<44} p50 {:>8.2} ms  p90 {:>8.2} ms  (n={})",
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        v.len()
    );
}

fn main() {
    let n = runs(30);
    let b = Bench::new("exec", 2);
    b.banger(&["vm", "create", "--name", "dev"]);
    // Pins the host key (waits for sshd) so the baseline can connect.
    b.banger(&["vm", "ssh", "dev", "--", "true"]);
    // Let the guest finish booting before anything is timed.
    b.banger(&[
        "vm",
        "exec",
        "dev",
        "--",
        "sh",
        "-c",
        "systemctl is-system-running --wait >/dev/null 2>&1 || true",
    ]);
    let ssh = || {
        let mut c = b.in_ns("ssh");
        c.arg("-F").arg(b.ssh_config()).arg("dev.vm");
        c
    };
    // In blocks, not alternating: an ssh session leaves work behind in the
    // guest (sshd's teardown) that would slow the next exec down.
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..n {
        ours.push(timed(b.cmd(&["vm", "exec", "dev", "--", "true"])));
    }
    for _ in 0..n {
        let mut s = ssh();
        s.arg("true");
        base.push(timed(s));
    }
    let mut ping_wall = Vec::new();
    for _ in 0..n {
        ping_wall.push(timed(b.cmd(&["vm", "ping", "dev"])));
    }
    let out = b.banger(&["vm", "ping", "dev", "-c", &n.to_string()]);
    let mut rtt: Vec<Duration> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4)?.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    // The floor: 100 spawns of /bin/true inside the guest.
    let floor = b.banger(&[
        "vm", "exec", "dev", "--", "sh", "-c",
        "s=$(date +%s%N); i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done; e=$(date +%s%N); echo $(( (e-s)/100000 ))",
    ]);
    let floor_us: f64 = floor.trim().parse().unwrap_or(0.0);
    // Throughput: 200 MB of stdout.
    let bytes = 200_000_000u64;
    let cmd = format!("head -c {bytes} /dev/zero");
    let (mut tp_ours, mut tp_ssh) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        tp_ours.push(timed(b.cmd(&["vm", "exec", "dev", "--", "sh", "-c", &cmd])));
        let mut s = ssh();
        s.arg(&cmd);
        tp_ssh.push(timed(s));
    }
    // Right after `vm run -d` (restored from the warm snapshot, which is
    // of a settled guest): the first calls, with nothing of the boot left.
    let t0 = Instant::now();
    while !run(&mut b.cmd(&["snapshot", "list", "--json"])).contains("\"auto\": true")
        || run(&mut b.cmd(&["vm", "list", "--json"])).contains("warm-")
    {
        assert!(t0.elapsed() < Duration::from_secs(600), "no warm snapshot");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut first, mut first6) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let name = format!("fresh{i}");
        let err = String::from_utf8_lossy(
            &b.cmd(&["vm", "run", "-d", "--name", &name])
                .output()
                .unwrap()
                .stderr,
        )
        .into_owned();
        assert!(
            err.contains("  restore: "),
            "restored from the warm snapshot: {err}"
        );
        for k in 0..6 {
            let d = timed(b.cmd(&["vm", "exec", &name, "--", "true"]));
            if k == 0 {
                first.push(d);
            }
            first6.push(d);
        }
        b.banger(&["vm", "delete", &name]);
    }
    println!("guest: QEMU TCG, 2 vcpu, 1 GiB; host: this machine");
    report("vm exec -- true, first call after vm run -d", &mut first);
    report("vm exec -- true, first 6 calls after run -d", &mut first6);
    report("banger vm exec dev -- true", &mut ours);
    report("baseline: ssh dev.vm true (fresh connection)", &mut base);
    report("banger vm ping dev (whole CLI call)", &mut ping_wall);
    report("agent round trip (vm ping, as reported)", &mut rtt);
    println!(
        "{:<44} {:>8.2} ms each",
        "/bin/true spawned inside the guest",
        floor_us / 1000.0
    );
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "{:<44} {:>8.1} MB/s  (median of {}: {:?} s)",
        "200 MB stdout through banger vm exec",
        mbps(median(&mut tp_ours)),
        tp_ours.len(),
        secs(&tp_ours)
    );
    println!(
        "{:<44} {:>8.1} MB/s  (median of {}: {:?} s)",
        "200 MB stdout through ssh",
        mbps(median(&mut tp_ssh)),
        tp_ssh.len(),
        secs(&tp_ssh)
    );
}
