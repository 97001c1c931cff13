//! Restoring from a snapshot against booting (`cargo bench --bench
//! snapshot`, as root). One VM (TCG, 2 vcpu, 1 GiB) is booted and
//! snapshotted `BANGER_BENCH_RUNS` times (5): the snapshot's creation time
//! and size. Then, alternating in the same run: `vm run --rm -- true`
//! (the baseline, a cold boot) and `vm run --rm --from <snapshot> -- true`.
//! Prints wall times, medians and the restore stages of the last run.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn timed(b: &Bench, args: &[&str]) -> (Duration, String) {
    let t0 = Instant::now();
    let out = b.cmd(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        t0.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn main() {
    let runs = runs(5);
    let b = Bench::new("snap", 2);
    // Starts the daemon and the bridge; a warm tap pool for both sides.
    timed(&b, &["vm", "run", "--rm", "--", "true"]);
    timed(&b, &["vm", "create", "--name", "src"]);
    let (mut create, mut sizes) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("s{i}");
        let (d, _) = timed(&b, &["vm", "snapshot", "src", "--name", &name]);
        create.push(d);
        let show = run(&mut b.cmd(&["snapshot", "show", &name, "--json"]));
        let v: serde_json::Value = serde_json::from_str(&show).unwrap();
        sizes.push(v["size_bytes"].as_u64().unwrap());
        if i > 0 {
            run(&mut b.cmd(&["snapshot", "delete", &name]));
        }
    }
    let (mut cold, mut warm, mut last) = (Vec::new(), Vec::new(), String::new());
    for i in 0..runs {
        let (c, _) = timed(&b, &["vm", "run", "--rm", "--", "true"]);
        let (w, err) = timed(&b, &["vm", "run", "--rm", "--from", "s0", "--", "true"]);
        cold.push(c);
        warm.push(w);
        last = err;
        eprintln!(
            "run {i}: cold {:.2}s, from snapshot {:.2}s",
            c.as_secs_f64(),
            w.as_secs_f64()
        );
    }
    sizes.sort();
    println!("guest: QEMU TCG, 2 vcpu, 1 GiB");
    println!(
        "vm snapshot (1 GiB guest)          median {:.2}s  {:?}; size median {} MiB",
        median(&mut create.clone()).as_secs_f64(),
        secs(&create),
        sizes[sizes.len() / 2] >> 20
    );
    println!(
        "baseline: vm run --rm -- true      median {:.2}s  {:?}",
        median(&mut cold.clone()).as_secs_f64(),
        secs(&cold)
    );
    println!(
        "vm run --rm --from SNAP -- true    median {:.2}s  {:?}",
        median(&mut warm.clone()).as_secs_f64(),
        secs(&warm)
    );
    println!("stages of the last restore:");
    for l in last
        .lines()
        .filter(|l| l.starts_with("  ") || l.starts_with("ready"))
    {
        println!("  {}", l.trim());
    }
    run(&mut b.cmd(&["vm", "delete", "src"]));
    run(&mut b.cmd(&["snapshot", "delete", "s0"]));
}
