//! Workspace prepare against `git archive HEAD | ssh guest tar -x` (`cargo
//! bench --bench workspace`, as root). A generated repository of 10,000 files
//! / 200 MB; one VM; both transfers alternate `BANGER_BENCH_RUNS` times (3)
//! in the same run. Prints both medians.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/banger-ci/test-cache".into());
    let banger = env!("CARGO_BIN_EXE_banger");
    let ns = format!("bgbenchws-{}", std::process::id());
    let envs = |c: &mut Command| {
        c.env("HOME", root.join("home"))
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_STATE_HOME", root.join("state"))
            .env("XDG_CACHE_HOME", &cache)
            .env("XDG_RUNTIME_DIR", root.join("run"))
            .env("BANGER_SYSTEM", "0")
            .env("NO_COLOR", "1");
    };
    for args in [
        &["kernel", "pull", "debian-cloud"][..],
        &["image", "build", "debian-bookworm"][..],
        &["daemon", "stop"][..],
    ] {
        let mut c = Command::new(banger);
        envs(&mut c);
        run(c.args(args));
    }
    let repo = root.join("bigrepo");
    let t = Instant::now();
    make_repo(&repo);
    eprintln!(
        "generated the repository in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    run(Command::new("ip").args(["netns", "add", &ns]));
    run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, banger]).args(args);
        envs(&mut c);
        c
    };
    run(&mut in_ns(&[
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
    ]));
    let ssh_config = root.join("state/banger/ssh/ssh_config");
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
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns, "ssh", "-F"])
            .arg(&ssh_config)
            .arg("bench.vm")
            .arg("rm -rf /root/base && mkdir -p /root/base && tar -x -C /root/base")
            .stdin(archive.stdout.take().unwrap())
            .status()
            .unwrap();
        archive.wait().unwrap();
        assert!(ok.success());
        base.push(t.elapsed());
        let t = Instant::now();
        run(&mut in_ns(&[
            "vm",
            "workspace",
            "prepare",
            "bench",
            repo.to_str().unwrap(),
        ]));
        ours.push(t.elapsed());
        eprintln!(
            "run {i}: baseline {:.1}s, banger {:.1}s",
            base[i].as_secs_f64(),
            ours[i].as_secs_f64()
        );
    }
    let files = run(&mut in_ns(&[
        "vm",
        "exec",
        "bench",
        "--",
        "sh",
        "-c",
        "git ls-files | wc -l; git status --porcelain | wc -l",
    ]));
    let _ = in_ns(&["vm", "delete", "bench"]).output();
    let _ = in_ns(&["daemon", "stop"]).output();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mb, mo) = (med(&mut base), med(&mut ours));
    println!("repository: 10000 files, 200 MB (hex text); guest: QEMU TCG, 2 vcpu");
    println!(
        "baseline: git archive HEAD | ssh tar -x   median {:.2}s  {:?}",
        mb.as_secs_f64(),
        base.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    println!(
        "banger vm workspace prepare             median {:.2}s  {:?}",
        mo.as_secs_f64(),
        ours.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
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
