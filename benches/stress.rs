//! Warm restores under load (`cargo bench --bench stress`, as root): N
//! (`BANGER_BENCH_RUNS`, 100) `vm run --rm` restored from the automatic
//! snapshot, `BANGER_BENCH_PAR` (4) at a time, each running a CPU and I/O
//! command — `dpkg -V libc6-dev` — and a /tmp file written first and read
//! back 10 s later. Each run has a deadline (10 min): past it, it counts as
//! hung and is killed. Prints ok / failed / hung and the p50 and p99 wall
//! time; failures' last stderr lines. The baseline in the same run is the
//! same command in one long-lived VM through `vm exec` (no restore).

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const SCRIPT: &str = "echo kept > /tmp/stress; dpkg -V libc6-dev >/dev/null && sleep 10 && \
     test \"$(cat /tmp/stress)\" = kept && echo ok";
const DEADLINE: Duration = Duration::from_secs(600);

/// One run: Ok((passed, stderr's last lines, wall time)), or Err(wall
/// time) when it hung past the deadline.
type RunResult = Result<(bool, String, Duration), Duration>;

/// Runs `cmd` with a deadline.
fn within(mut cmd: std::process::Command) -> RunResult {
    use std::io::Read;
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let stdout = o.join().unwrap_or_default();
            let stderr = e.join().unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
            return Ok((
                st.success() && stdout.trim() == "ok",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                t0.elapsed(),
            ));
        }
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    let runs = runs(100);
    let par: usize = std::env::var("BANGER_BENCH_PAR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let b = Arc::new(Bench::new("stress", 1));
    // The first run boots cold and makes the warm snapshot in the background.
    run(&mut b.cmd(&["vm", "run", "--rm", "--", "true"]));
    let t0 = Instant::now();
    while !run(&mut b.cmd(&["snapshot", "list", "--json"])).contains("\"auto\": true")
        || run(&mut b.cmd(&["vm", "list", "--json"])).contains("warm-")
    {
        assert!(t0.elapsed() < Duration::from_secs(600), "no warm snapshot");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Baseline: the same command in one running VM, `runs / 10` times.
    run(&mut b.cmd(&["vm", "create", "--name", "base"]));
    let mut base = Vec::new();
    for _ in 0..(runs / 10).max(3) {
        match within(b.cmd(&["vm", "exec", "base", "--", "sh", "-c", SCRIPT])) {
            Ok((true, _, d)) => base.push(d),
            other => panic!("baseline run failed: {other:?}"),
        }
    }
    run(&mut b.cmd(&["vm", "delete", "base"]));

    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<RunResult>>> = Arc::default();
    let workers: Vec<_> = (0..par)
        .map(|_| {
            let (b, next, results) = (b.clone(), next.clone(), results.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= runs {
                    return;
                }
                let r = within(b.cmd(&["vm", "run", "--rm", "--", "sh", "-c", SCRIPT]));
                match &r {
                    Ok((true, _, d)) => eprintln!("run {i}: ok {:.1}s", d.as_secs_f64()),
                    Ok((false, e, d)) => {
                        eprintln!("run {i}: FAILED {:.1}s: {e}", d.as_secs_f64())
                    }
                    Err(d) => eprintln!("run {i}: HUNG past {:.0}s", d.as_secs_f64()),
                }
                results.lock().unwrap().push(r);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let results = results.lock().unwrap();
    let mut ok: Vec<Duration> = results
        .iter()
        .filter_map(|r| match r {
            Ok((true, _, d)) => Some(*d),
            _ => None,
        })
        .collect();
    let failed = results
        .iter()
        .filter(|r| matches!(r, Ok((false, ..))))
        .count();
    let hung = results.iter().filter(|r| r.is_err()).count();
    let left = run(&mut b.cmd(&["vm", "list", "--json"]));
    println!("guest: QEMU TCG, 1 vcpu, 1 GiB; {runs} warm runs, {par} at a time");
    println!("command: {SCRIPT}");
    println!(
        "baseline: vm exec in one VM        p50 {:.2}s  p99 {:.2}s  ({} runs)",
        percentile(&mut base.clone(), 50).as_secs_f64(),
        percentile(&mut base.clone(), 99).as_secs_f64(),
        base.len()
    );
    if !ok.is_empty() {
        println!(
            "vm run --rm (warm restore)         p50 {:.2}s  p99 {:.2}s",
            percentile(&mut ok, 50).as_secs_f64(),
            percentile(&mut ok, 99).as_secs_f64()
        );
    }
    println!("ok {} / failed {failed} / hung {hung}", ok.len());
    println!("VMs left: {}", left.trim());
}
