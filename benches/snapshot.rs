//! Restoring from a snapshot against booting (`cargo bench --bench
//! snapshot`, as root). One VM (TCG, 2 vcpu, 1 GiB) is booted and
//! snapshotted `BANGER_BENCH_RUNS` times (5): the snapshot's creation time
//! and size. Then, alternating in the same run: `vm run --rm --cold --
//! true` (the baseline, a cold boot), `vm run --rm -- true` (warm start,
//! the default, once its automatic snapshot exists) and `vm run --rm --from
//! <snapshot> -- true`. Then a workspace whose setup takes 20 s: `vm run
//! --rm ./repo -- sh -c '<setup> && <test>'` against `vm run --rm --warm
//! '<setup>' ./repo -- <test>` (after the first, which makes the
//! snapshot). Prints wall times, medians and the restore stages.

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
    timed(&b, &["vm", "create", "--cold", "--name", "src"]);
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
    // The warm-start snapshot, made after the first cold boot.
    let t0 = Instant::now();
    while !run(&mut b.cmd(&["snapshot", "list", "--json"])).contains("\"auto\": true")
        || run(&mut b.cmd(&["vm", "list", "--json"])).contains("warm-")
    {
        assert!(t0.elapsed() < Duration::from_secs(600), "no warm snapshot");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut cold, mut warm, mut from, mut last) =
        (Vec::new(), Vec::new(), Vec::new(), String::new());
    for i in 0..runs {
        let (c, _) = timed(&b, &["vm", "run", "--rm", "--cold", "--", "true"]);
        let (w, err) = timed(&b, &["vm", "run", "--rm", "--", "true"]);
        let (f, _) = timed(&b, &["vm", "run", "--rm", "--from", "s0", "--", "true"]);
        assert!(err.contains("  restore: "), "{err}");
        cold.push(c);
        warm.push(w);
        from.push(f);
        last = err;
        eprintln!(
            "run {i}: cold {:.2}s, warm {:.2}s, from snapshot {:.2}s",
            c.as_secs_f64(),
            w.as_secs_f64(),
            f.as_secs_f64()
        );
    }
    // A workspace with a 20 s setup.
    let repo = b.root().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        run(std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_AUTHOR_NAME", "b")
            .env("GIT_AUTHOR_EMAIL", "b@example.invalid")
            .env("GIT_COMMITTER_NAME", "b")
            .env("GIT_COMMITTER_EMAIL", "b@example.invalid"))
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join(".gitignore"), "deps/\n").unwrap();
    std::fs::write(repo.join("lock"), "v1\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "init"]);
    let setup = "sleep 20 && mkdir -p deps && touch deps/ok";
    let both = format!("{setup} && test -e deps/ok");
    let r = repo.to_str().unwrap();
    let warm_args = [
        "vm",
        "run",
        "--rm",
        "--warm",
        setup,
        "--warm-key",
        "lock",
        r,
        "--",
        "test",
        "-e",
        "deps/ok",
    ];
    timed(&b, &warm_args);
    let (mut plain, mut warmws) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (p, _) = timed(&b, &["vm", "run", "--rm", r, "--", "sh", "-c", &both]);
        let (w, _) = timed(&b, &warm_args);
        plain.push(p);
        warmws.push(w);
        eprintln!(
            "workspace run {i}: plain {:.2}s, --warm {:.2}s",
            p.as_secs_f64(),
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
        "vm run --rm -- true (warm start)   median {:.2}s  {:?}",
        median(&mut warm.clone()).as_secs_f64(),
        secs(&warm)
    );
    println!(
        "vm run --rm --from SNAP -- true    median {:.2}s  {:?}",
        median(&mut from.clone()).as_secs_f64(),
        secs(&from)
    );
    println!(
        "workspace, 20 s setup, plain       median {:.2}s  {:?}",
        median(&mut plain.clone()).as_secs_f64(),
        secs(&plain)
    );
    println!(
        "workspace, 20 s setup, --warm      median {:.2}s  {:?}",
        median(&mut warmws.clone()).as_secs_f64(),
        secs(&warmws)
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
    run(&mut b.cmd(&["snapshot", "prune", "--days", "0"]));
}
