//! Fixtures: a private XDG tree and network namespace per test, with the real
//! `banger`, `bangerd` and `bangerd-root` binaries running inside it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    match name {
        "banger" => PathBuf::from(env!("CARGO_BIN_EXE_banger")),
        "bangerd" => PathBuf::from(env!("CARGO_BIN_EXE_bangerd")),
        "bangerd-root" => PathBuf::from(env!("CARGO_BIN_EXE_bangerd-root")),
        other => panic!("unknown binary {other}"),
    }
}

/// target/<profile>/examples/<name>
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A network namespace the test created; deleted (after killing whatever
/// still runs in it) on drop.
pub struct Netns {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "bgtest-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// `ip -n <ns> ...` and its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn links_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ip(&["-d", "-j", "link", "show"])).unwrap()
    }

    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh XDG tree plus a namespace; `banger` runs inside both.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub netns: Netns,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .unwrap();
        TestEnv {
            dir,
            netns: Netns::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.root().join("run/banger")
    }
    pub fn daemon_socket(&self) -> PathBuf {
        self.runtime_dir().join("bangerd.sock")
    }
    pub fn helper_socket(&self) -> PathBuf {
        self.runtime_dir().join("bangerd-root.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state/banger")
    }

    pub fn envs(&self) -> Vec<(String, String)> {
        let r = self.root().display().to_string();
        vec![
            ("HOME".into(), format!("{r}/home")),
            ("XDG_CONFIG_HOME".into(), format!("{r}/config")),
            ("XDG_STATE_HOME".into(), format!("{r}/state")),
            ("XDG_CACHE_HOME".into(), format!("{r}/cache")),
            ("XDG_RUNTIME_DIR".into(), format!("{r}/run")),
            ("BANGER_SYSTEM".into(), "0".into()),
            ("NO_COLOR".into(), "1".into()),
        ]
    }

    /// `banger <args>` inside the namespace.
    pub fn banger_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns.name])
            .arg(bin("banger"))
            .args(args)
            .envs(self.envs())
            .stdin(Stdio::null());
        c
    }

    pub fn banger(&self, args: &[&str]) -> Output {
        self.banger_cmd(args).output().unwrap()
    }

    /// `banger <args>`, asserting success; returns stdout.
    pub fn banger_ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("bangerd.log")).unwrap_or_default()
    }
    pub fn helper_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("bangerd-root.log")).unwrap_or_default()
    }

    /// Starts the daemon (and, as root, the helper) and returns the status text.
    pub fn start(&self) -> String {
        self.banger_ok(&["daemon", "start"]);
        self.banger_ok(&["daemon", "status"])
    }

    /// Pid of a named process running in our namespace, if any.
    pub fn pid_of(&self, comm: &str) -> Option<u32> {
        self.netns.pids().into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == comm)
                .unwrap_or(false)
        })
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = self.banger(&["daemon", "stop"]);
    }
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
