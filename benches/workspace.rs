//! Workspace prepare against `git archive HEAD | ssh guest tar -x` (`cargo
//! bench --bench workspace`, as root). A generated repository of 10,000 files
//! / 200 MB; one VM; both transfers alternate `BANGER_BENCH_RUNS` times (3)
//! in the same run. Prints both medians.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// 10,000 files of 20 KiB of hex text in 100 directories.
fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["init", "-q", "-b", "main"]));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for d in 0..100 {
        let sub = dir.join(format!("pkg{d:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            let mut s = String::with_capacity(20 << 10);
            while s.len() < 20 << 10 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(&format!(
                    "{x:016x}{}",
                    if s.len() % 80 < 16 { "\n" } else { " " }
                ));
            }
            std::fs::write(sub.join(format!("file{f:03}.txt")), s).unwrap();
        }
    }
    run(Command::new("git").arg("-C").arg(dir).args(["add", "."]));
    run(Command::new("git").arg("-C").arg(dir).args([
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@example.invalid",
        "commit",
        "-q",
        "-m",
        "bench",
    ]));
}

fn main() {
    let runs = runs(3);
    let b = Bench::new("ws", 2);
    let repo = b.root().join("bigrepo");
    let t = Instant::now();
    make_repo(&repo);
    eprintln!(
        "generated the repository in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    b.banger(&[
        "vm",
        "create",
        "--name",
        "bench",
        "--vcpu",
        "2",
        "--memory",
        "2G",
        "--disk-size",
        "6G",
    ]);
    // Pins the host key for the baseline's ssh.
    b.banger(&["vm", "ssh", "bench", "--", "true"]);
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let t = Instant::now();
        let mut archive = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["archive", "HEAD"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let ok = b
            .in_ns("ssh")
            .arg("-F")
            .arg(b.ssh_config())
            .arg("bench.vm")
            .arg("rm -rf /root/base && mkdir -p /root/base && tar -x -C /root/base")
            .stdin(archive.stdout.take().unwrap())
            .status()
            .unwrap();
        archive.wait().unwrap();
        assert!(ok.success());
        base.push(t.elapsed());
        let t = Instant::now();
        b.banger(&[
            "vm",
            "workspace",
            "prepare",
            "bench",
            repo.to_str().unwrap(),
        ]);
        ours.push(t.elapsed());
        eprintln!(
            "run {i}: baseline {:.1}s, banger {:.1}s",
            base[i].as_secs_f64(),
            ours[i].as_secs_f64()
        );
    }
    let files = b.banger(&[
        "vm",
        "exec",
        "bench",
        "--",
        "sh",
        "-c",
        "git ls-files | wc -l; git status --porcelain | wc -l",
    ]);
    let (mb, mo) = (median(&mut base.clone()), median(&mut ours.clone()));
    println!("repository: 10000 files, 200 MB (hex text); guest: QEMU TCG, 2 vcpu");
    println!(
        "baseline: git archive HEAD | ssh tar -x   median {:.2}s  {:?}",
        mb.as_secs_f64(),
        secs(&base)
    );
    println!(
        "banger vm workspace prepare             median {:.2}s  {:?}",
        mo.as_secs_f64(),
        secs(&ours)
    );
    println!(
        "ratio banger/baseline: {:.2}",
        mo.as_secs_f64() / mb.as_secs_f64()
    );
    println!(
        "guest check (tracked files, dirty entries): {}",
        files.split_whitespace().collect::<Vec<_>>().join(", ")
    );
}
