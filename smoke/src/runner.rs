//! The run: its private tree and network namespace, the preflight, the
//! pool (pure scenarios in parallel, the repodir chain in one slot), the
//! global scenarios alone afterwards, per-scenario logs, the summary and
//! the cleanup proof.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ctx::{self, secs, Ctx, Env, Stop, BRIDGE, DNS_PORT};
use crate::scenarios::{Class, Outcome, Scenario};
use crate::{Opts, EXIT_ALL_SKIPPED, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// The run's config, written before the daemon first starts (it reads its
/// config once): cold boots only (a warm-start snapshot made in the
/// background would be one more VM; `warm-run` turns it on), small VMs.
pub const CONFIG: &str =
    "warm_start = false\n\n[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = \"2G\"\n";

/// The fixture repository's files (repodir scenarios).
pub const TRACKED: &str = "tracked content\n";

/// One finished scenario.
struct Report {
    name: &'static str,
    outcome: Outcome,
    elapsed: Duration,
    log: PathBuf,
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
    /// Of the selected scenarios only (not the cleanup proof).
    selected_passed: usize,
    selected_failed: usize,
}

fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let gib = (avail_kib >> 20) as usize;
    cores.min(gib).clamp(1, 4)
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

/// Entry point after argument checks (root, known names).
pub fn run(opts: Opts, registry: Vec<Scenario>) -> i32 {
    let started = Instant::now();
    let selected: Vec<Scenario> = if opts.scenarios.is_empty() {
        registry
    } else {
        registry
            .into_iter()
            .filter(|s| opts.scenarios.iter().any(|n| n == s.name))
            .collect()
    };
    for b in ["banger", "bangerd", "bangerd-root"] {
        let p = opts.bin_dir.join(b);
        if !p.is_file() {
            eprintln!(
                "smoke: {} is missing; give the directory of banger, bangerd and bangerd-root with --bin-dir (e.g. target/debug)",
                p.display()
            );
            return EXIT_USAGE;
        }
    }
    let jobs = opts.jobs.unwrap_or_else(default_jobs);
    let env = make_env(&opts);
    let run_dir = env.run_dir.clone();
    println!(
        "smoke: {} scenario(s), --jobs {jobs}, binaries from {}, run directory {}",
        selected.len(),
        env.bin_dir.display(),
        run_dir.display()
    );
    watch_interrupts(env.clone());
    if let Err(e) = make_tree(&env) {
        eprintln!("smoke: setting up {}: {e}", run_dir.display());
        return EXIT_FAILED;
    }
    if let Err(e) = netns_add(&env.netns) {
        eprintln!("smoke: {e}");
        return EXIT_FAILED;
    }

    let mut tally = Tally::default();
    if !run_preflight(&env) {
        return EXIT_FAILED;
    }

    run_scenarios(selected, jobs, &env, &mut tally);
    run_cleanup_proof(&env, &mut tally);

    println!(
        "{} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    println!("wall time {:.1}s (--jobs {jobs})", secs(started.elapsed()));
    if tally.failed > 0 || opts.keep {
        println!("run directory kept: {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    if tally.failed > 0 {
        EXIT_FAILED
    } else if tally.selected_passed == 0 && tally.selected_failed == 0 {
        EXIT_ALL_SKIPPED
    } else {
        EXIT_OK
    }
}

/// The run's environment: its directory, namespace, binaries and cache.
fn make_env(opts: &Opts) -> Arc<Env> {
    let bin_dir = std::fs::canonicalize(&opts.bin_dir).unwrap_or(opts.bin_dir.clone());
    let pid = std::process::id();
    let run_dir = PathBuf::from(format!("/tmp/banger-smoke-{pid}"));
    let cache_dir = opts
        .cache
        .clone()
        .map(|c| {
            let _ = std::fs::create_dir_all(&c);
            std::fs::canonicalize(&c)
                .unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(&c)).unwrap_or(c))
        })
        .unwrap_or_else(|| run_dir.join("cache"));
    Arc::new(Env {
        run_dir: run_dir.clone(),
        netns: format!("bgsmoke-{pid}"),
        bin_dir,
        cache_dir,
        fixture: run_dir.join("fixture/myrepo"),
        break_scenario: std::env::var("BANGER_SMOKE_BREAK")
            .ok()
            .filter(|s| !s.is_empty()),
    })
}

/// Preflight, with its own log shown in full when it fails; false then
/// (the stack is stopped and the namespace removed).
fn run_preflight(env: &Arc<Env>) -> bool {
    // Preflight: its own log, shown in full when it fails.
    let mut pre = Ctx::new("preflight", env.clone());
    let t = Instant::now();
    match preflight(&mut pre) {
        Ok(()) => println!("preflight ok ({:.1}s)", secs(t.elapsed())),
        Err(e) => {
            pre.append_daemon_logs();
            let log = pre.log_path.clone();
            drop(pre);
            println!(
                "FAIL preflight ({:.1}s): {}",
                secs(t.elapsed()),
                first_line(&e)
            );
            print_log(&log);
            let mut c = Ctx::new("cleanup", env.clone());
            let _ = c.banger(&["daemon", "stop"]);
            c.host_network = true;
            let _ = c.banger(&["daemon", "stop"]);
            drop(c);
            netns_del(&env.netns);
            println!("run directory kept: {}", env.run_dir.display());
            return false;
        }
    }
    drop(pre);
    true
}

/// The scenarios: the repodir chain (one job, serial) and the pure ones on
/// `jobs` workers, then the global ones alone, in order.
fn run_scenarios(selected: Vec<Scenario>, jobs: usize, env: &Arc<Env>, tally: &mut Tally) {
    // The pool: the repodir chain (one job, serial), then pure ones.
    let mut queue: VecDeque<Vec<&'static Scenario>> = VecDeque::new();
    let leaked: &'static [Scenario] = Box::leak(selected.into_boxed_slice());
    let chain: Vec<&'static Scenario> = leaked
        .iter()
        .filter(|s| s.class == Class::Repodir)
        .collect();
    if !chain.is_empty() {
        queue.push_back(chain);
    }
    for s in leaked.iter().filter(|s| s.class == Class::Pure) {
        queue.push_back(vec![s]);
    }
    let workers = jobs.min(queue.len()).max(1);
    let queue = Arc::new(Mutex::new(queue));
    let (tx, rx) = mpsc::channel::<Report>();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (queue, tx, env) = (queue.clone(), tx.clone(), env.clone());
        handles.push(std::thread::spawn(move || loop {
            let job = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            let Some(job) = job else { return };
            for s in job {
                let r = run_one(s, &env);
                if tx.send(r).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    for r in rx {
        report(&r, tally, true);
    }
    for h in handles {
        let _ = h.join();
    }
    // Global scenarios: alone, in order, after the pool drained.
    for s in leaked.iter().filter(|s| s.class == Class::Global) {
        let r = run_one(s, env);
        report(&r, tally, true);
    }
}

/// The cleanup proof, reported like a scenario; then the namespace goes.
fn run_cleanup_proof(env: &Arc<Env>, tally: &mut Tally) {
    let t = Instant::now();
    let mut c = Ctx::new("cleanup", env.clone());
    let proof = cleanup_proof(&mut c);
    if proof.is_err() {
        c.append_daemon_logs();
    }
    let log = c.log_path.clone();
    drop(c);
    let r = Report {
        name: "cleanup",
        outcome: match proof {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(e),
        },
        elapsed: t.elapsed(),
        log,
    };
    report(&r, tally, false);
    netns_del(&env.netns);
}

fn print_log(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "----- log of {} -----", path.display());
    let _ = o.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "----- end of {} -----", path.display());
    let _ = o.flush();
}

fn report(r: &Report, t: &mut Tally, selected: bool) {
    match &r.outcome {
        Outcome::Pass => {
            t.passed += 1;
            if selected {
                t.selected_passed += 1;
            }
            println!("PASS {} ({:.1}s)", r.name, secs(r.elapsed));
        }
        Outcome::Skip(why) => {
            t.skipped += 1;
            println!("SKIP {}: {}", r.name, first_line(why));
        }
        Outcome::Fail(why) => {
            t.failed += 1;
            if selected {
                t.selected_failed += 1;
            }
            println!(
                "FAIL {} ({:.1}s): {}",
                r.name,
                secs(r.elapsed),
                first_line(why)
            );
            print_log(&r.log);
        }
    }
    let _ = std::io::stdout().flush();
}

/// Runs one scenario, then deletes what it created, whatever happened.
fn run_one(s: &'static Scenario, env: &Arc<Env>) -> Report {
    let t = Instant::now();
    let mut c = Ctx::new(s.name, env.clone());
    c.note(&format!(
        "scenario {} ({}): {}",
        s.name,
        s.class.as_str(),
        s.desc
    ));
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (s.run)(&mut c))) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            Outcome::Fail(format!("panicked: {msg}"))
        }
    };
    match &outcome {
        Outcome::Pass => c.note("PASS"),
        Outcome::Skip(w) => c.note(&format!("SKIP: {w}")),
        Outcome::Fail(w) => c.note(&format!("FAIL: {w}")),
    }
    c.finish();
    if matches!(outcome, Outcome::Fail(_)) {
        c.append_daemon_logs();
    }
    let log = c.log_path.clone();
    drop(c);
    Report {
        name: s.name,
        outcome,
        elapsed: t.elapsed(),
        log,
    }
}

fn make_tree(env: &Env) -> std::io::Result<()> {
    let r = &env.run_dir;
    private_dir(r)?;
    for d in [
        "home",
        "config/banger",
        "state",
        "run",
        "logs",
        "work",
        "fixture",
    ] {
        private_dir(&r.join(d))?;
    }
    std::fs::create_dir_all(&env.cache_dir)?;
    std::fs::write(env.config_file(), CONFIG)
}

fn netns_add(ns: &str) -> Result<(), String> {
    for args in [
        vec!["netns", "add", ns],
        vec!["-n", ns, "link", "set", "lo", "up"],
    ] {
        let o = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if !o.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    Ok(())
}

fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Ctrl-C or SIGTERM: everything of the run is killed — whatever runs in
/// its namespace, and any process whose arguments or environment name its
/// directory (the preflight's daemon runs outside the namespace) — and the
/// namespace deleted; the run directory is kept for its logs. Called
/// before any other thread exists, so every thread inherits the blocked
/// signals and only this one takes them (children start with an empty
/// mask: std resets it).
fn watch_interrupts(env: Arc<Env>) {
    // SAFETY: plain sigset manipulation on a local, then this thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits for one of the signals blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("smoke: interrupted; stopping everything of this run");
        let me = std::process::id();
        let root = env.run_dir.display().to_string();
        for pid in netns_pids(&env.netns)
            .into_iter()
            .chain(procs_naming(&root))
        {
            if pid != me {
                ctx::kill(pid, libc::SIGKILL);
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &env.netns])
            .status();
        eprintln!("smoke: run directory kept for its logs: {root}");
        std::process::exit(128 + sig);
    });
}

/// Processes whose command line or environment contains `needle`.
fn procs_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
            let hay = [read("cmdline"), read("environ")].concat();
            String::from_utf8_lossy(&hay).contains(needle)
        })
        .collect()
}

/// Kills whatever still runs in the namespace, then deletes it.
fn netns_del(ns: &str) {
    for pid in netns_pids(ns) {
        ctx::kill(pid, libc::SIGKILL);
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// Waits until no bangerd/bangerd-root of this run is alive.
fn wait_stack_gone(c: &mut Ctx, timeout: Duration) -> Result<(), String> {
    c.wait_for("bangerd and bangerd-root to exit", timeout, |c| {
        Ok(c.env.pids_of("bangerd").is_empty() && c.env.pids_of("bangerd-root").is_empty())
    })
}

fn git(c: &mut Ctx, dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("HOME", c.env.home())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Smoke")
        .env("GIT_AUTHOR_EMAIL", "smoke@example.invalid")
        .env("GIT_COMMITTER_NAME", "Smoke")
        .env("GIT_COMMITTER_EMAIL", "smoke@example.invalid");
    let o = c.run_cmd(cmd, None, Duration::from_secs(120))?;
    if !o.ok() {
        return Err(format!("git {}: {}", args.join(" "), o.err_line()));
    }
    Ok(o.out())
}

/// `git` in `dir` for scenarios (same identity and isolation).
pub fn git_in(c: &mut Ctx, dir: &Path, args: &[&str]) -> Result<String, String> {
    git(c, dir, args)
}

/// A repository with two tracked files (one in a subdirectory), a
/// `.gitignore`d `.env` and an untracked file (as tests/workspaces.rs).
pub fn make_repo(c: &mut Ctx, r: &Path) -> Result<(), String> {
    let w =
        |p: PathBuf, s: &str| std::fs::write(&p, s).map_err(|e| format!("{}: {e}", p.display()));
    std::fs::create_dir_all(r.join("src")).map_err(|e| e.to_string())?;
    git(c, r, &["init", "-q", "-b", "main"])?;
    w(r.join("smoke-file.txt"), TRACKED)?;
    w(r.join("src/lib.txt"), "line one\nline two\n")?;
    w(r.join(".gitignore"), ".env\n")?;
    git(c, r, &["add", "."])?;
    git(c, r, &["commit", "-q", "-m", "initial"])?;
    w(r.join("untracked.txt"), "not committed\n")?;
    w(r.join(".env"), "SECRET=1\n")?;
    Ok(())
}

fn preflight(c: &mut Ctx) -> Result<(), String> {
    c.note(&format!("config.toml:\n{CONFIG}"));
    // The DNS port must be free where the daemon will run.
    match ctx::udp_port_free(&c.env.netns, DNS_PORT)? {
        Ok(()) => c.note(&format!("udp port {DNS_PORT} is free in {}", c.env.netns)),
        Err(e) => {
            return Err(format!(
                "the DNS port {DNS_PORT} (network.dns_port) is taken in the namespace: {e}"
            ))
        }
    }
    for tool in ["git", "ip"] {
        if ctx::find_tool(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    // Kernel and image in the host's namespace (apt and mmdebstrap reach
    // the Debian archive; nothing creates interfaces then).
    c.host_network = true;
    c.banger_ok_within(
        &["kernel", "pull", "debian-cloud"],
        Duration::from_secs(1800),
    )?;
    for image in ["debian-bookworm", "debian-bookworm-sandbox"] {
        c.banger_ok_within(&["image", "build", image], Duration::from_secs(3600))?;
    }
    c.banger_ok(&["daemon", "stop"])?;
    wait_stack_gone(c, Duration::from_secs(60))?;
    c.host_network = false;
    c.banger_ok(&["daemon", "start"])?;
    let status = c.banger_ok(&["daemon", "status"])?;
    if !status.contains("connected (pid") {
        return Err(format!(
            "bangerd-root is not connected: {}",
            status
                .lines()
                .find(|l| l.starts_with("helper"))
                .unwrap_or("no helper line")
        ));
    }
    // doctor must pass, and say the DNS server is where we checked.
    let o = c.banger(&["doctor"])?;
    if !o.ok() {
        return Err(format!(
            "banger doctor exited {:?}:\n{}{}",
            o.code,
            o.out(),
            o.err()
        ));
    }
    let j = c.banger_ok(&["doctor", "--json"])?;
    let rows = c.json(&j)?;
    let dns = rows
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "dns"))
        .cloned();
    match dns {
        Some(r)
            if r["detail"]
                .as_str()
                .unwrap_or("")
                .contains(&format!(":{DNS_PORT}")) => {}
        other => {
            return Err(format!(
                "doctor's dns row does not name port {DNS_PORT}: {other:?}"
            ))
        }
    }
    // The fixture repository of the repodir chain.
    let fixture = c.env.fixture.clone();
    make_repo(c, &fixture)?;
    Ok(())
}

/// Deletes what is left, stops the stack and proves nothing of it remains.
fn cleanup_proof(c: &mut Ctx) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    leftover_objects(c, &mut problems);
    leftover_links(c, &mut problems)?;
    leftover_rules(c, &mut problems)?;
    leftover_processes(c, &mut problems);
    leftover_files(c, &mut problems);
    c.note(&format!("cleanup problems: {problems:?}"));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// VMs and snapshots still listed (then deleted), and the stack stopped.
fn leftover_objects(c: &mut Ctx, problems: &mut Vec<String>) {
    let left = c.vm_names().unwrap_or_default();
    if !left.is_empty() {
        problems.push(format!("VMs left behind: {}", left.join(" ")));
        for vm in &left {
            let _ = c.banger(&["vm", "delete", vm]);
        }
    }
    let snaps = c
        .banger_ok(&["snapshot", "list", "--json"])
        .unwrap_or_default();
    if let Ok(v) = c.json(&snaps) {
        let names: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !names.is_empty() {
            problems.push(format!("snapshots left behind: {}", names.join(" ")));
            for s in names.iter().rev() {
                let _ = c.banger(&["snapshot", "delete", s]);
            }
        }
    }
    if let Err(e) = c.banger_ok(&["daemon", "stop"]) {
        problems.push(e);
    }
    if let Err(e) = wait_stack_gone(c, Duration::from_secs(60)) {
        problems.push(e);
    }
}

/// Links in the namespace: lo, and the bridge (it outlives the daemon by
/// design: the next start finds it); never a tap.
fn leftover_links(c: &mut Ctx, problems: &mut Vec<String>) -> Result<(), String> {
    let ns = c.env.netns.clone();
    let o = c.run("ip", &["-n", &ns, "-j", "link", "show"])?;
    let links: Vec<String> = c
        .json(&o.out())
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default();
    let extra: Vec<&String> = links
        .iter()
        .filter(|l| l.as_str() != "lo" && l.as_str() != BRIDGE)
        .collect();
    if !extra.is_empty() {
        problems.push(format!(
            "links left in the namespace: {}",
            extra
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if !links.iter().any(|l| l == "lo") {
        problems.push("could not list the namespace's links".into());
    }
    Ok(())
}

/// No per-VM (tagged) NAT or forward rule, no per-tap guard.
fn leftover_rules(c: &mut Ctx, problems: &mut Vec<String>) -> Result<(), String> {
    let ipt = ctx::iptables();
    let mut listing = String::new();
    for table in ["filter", "nat"] {
        let o = c.netns_exec(&[ipt, "-w", "10", "-t", table, "-S"])?;
        if !o.ok() {
            problems.push(format!("{ipt} -t {table} -S: {}", o.err_line()));
        }
        listing.push_str(&o.out());
    }
    let tagged: Vec<&str> = listing.lines().filter(|l| l.contains("banger:")).collect();
    if !tagged.is_empty() {
        problems.push(format!("VM rules left: {}", tagged.join(" | ")));
    }
    if ctx::find_tool("ebtables").is_some() {
        let o = c.netns_exec(&["ebtables", "-L"])?;
        let guards: Vec<&str> = o
            .stdout
            .split(|b| *b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter(|l| l.starts_with("Bridge chain: bgt"))
            .collect();
        if !guards.is_empty() {
            problems.push(format!("tap guards left: {}", guards.join(" | ")));
        }
    }
    Ok(())
}

/// Processes in the namespace, VMM processes anywhere (then killed).
fn leftover_processes(c: &mut Ctx, problems: &mut Vec<String>) {
    let ns = c.env.netns.clone();
    let pids = netns_pids(&ns);
    if !pids.is_empty() {
        let what: Vec<String> = pids
            .iter()
            .map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                format!("{p} ({})", comm.trim())
            })
            .collect();
        problems.push(format!(
            "processes left in the namespace: {}",
            what.join(", ")
        ));
    }
    let vmms = c.env.vmm_pids(None);
    if !vmms.is_empty() {
        problems.push(format!("VMM processes left: {vmms:?}"));
        for p in vmms {
            ctx::kill(p, libc::SIGKILL);
        }
    }
}

/// No VM directory in the state or runtime tree.
fn leftover_files(c: &mut Ctx, problems: &mut Vec<String>) {
    for dir in [
        c.env.state_dir().join("vms"),
        c.env.runtime_dir().join("vms"),
    ] {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !names.is_empty() {
            problems.push(format!("left in {}: {}", dir.display(), names.join(" ")));
        }
    }
}

/// Stops the daemon (and its helper) and starts it again in the namespace:
/// for global scenarios that change the config or restart the stack.
pub fn restart_stack(c: &mut Ctx) -> Result<(), String> {
    c.banger_ok(&["daemon", "stop"])?;
    wait_stack_gone(c, Duration::from_secs(60))?;
    c.banger_ok(&["daemon", "start"])?;
    Ok(())
}

/// As [`restart_stack`] without the start.
pub fn stop_stack(c: &mut Ctx) -> Result<(), String> {
    c.banger_ok(&["daemon", "stop"])?;
    wait_stack_gone(c, Duration::from_secs(60))
}

/// Makes `Stop` printable for outcomes.
pub fn outcome(r: Result<(), Stop>) -> Outcome {
    match r {
        Ok(()) => Outcome::Pass,
        Err(Stop::Fail(e)) => Outcome::Fail(e),
        Err(Stop::Skip(w)) => Outcome::Skip(w),
    }
}
