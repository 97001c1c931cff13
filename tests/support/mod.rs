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

/// [`Netns::command`] by the namespace's name.
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

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

    /// `program` inside the namespace: its network only (`nsenter --net`,
    /// which execs the program). Not `ip netns exec`, which also mounts a
    /// fresh /sys and so hides the cgroup hierarchies the helper confines
    /// VMMs with.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.name, program)
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

    /// Runs a command inside the namespace; its stdout and stderr.
    pub fn exec(&self, args: &[&str]) -> (String, String) {
        let out = self.command(args[0]).args(&args[1..]).output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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

/// The cache shared by every test (downloads, built images), kept across
/// runs: `$BANGER_TEST_CACHE`, default `/var/cache/banger-ci/test-cache`.
pub fn shared_cache() -> PathBuf {
    let p = std::env::var_os("BANGER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/banger-ci/test-cache"));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Serialises the heavy tests (image builds, VM boots): the machines have
/// two cores.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh XDG tree (with the shared cache) plus, unless built with
/// [`TestEnv::host_network`], a network namespace; `banger` runs inside.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub netns: Netns,
    /// Run the stack in the test's namespace (false: the host's, for image
    /// builds that download packages).
    pub isolated: bool,
    /// A cache of its own (under the tree) rather than the shared one.
    pub own_cache: bool,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv::under(&std::env::temp_dir())
    }

    /// A tree made in `parent` (e.g. under a home directory the VMM's
    /// mount namespace covers).
    pub fn under(parent: &Path) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir_in(parent)
            .unwrap();
        TestEnv {
            dir,
            netns: Netns::new(),
            isolated: true,
            own_cache: false,
        }
    }

    /// A tree with a cache of its own (for tests that inspect or prune
    /// it), seeded with the shared cache's downloaded packages so a kernel
    /// pull needs no network.
    pub fn with_own_cache() -> TestEnv {
        let mut e = TestEnv::new();
        e.own_cache = true;
        let to = e.cache_dir().join("banger/downloads");
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(shared_cache().join("banger/downloads"))
            .into_iter()
            .flatten()
            .flatten()
        {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        e
    }

    /// `$XDG_CACHE_HOME` of this tree.
    pub fn cache_dir(&self) -> PathBuf {
        if self.own_cache {
            self.root().join("cache")
        } else {
            shared_cache()
        }
    }

    /// A tree whose stack runs in the host's network namespace: only for
    /// building images (mmdebstrap reaches the Debian archive); nothing here
    /// creates interfaces.
    pub fn host_network() -> TestEnv {
        let mut e = TestEnv::new();
        e.isolated = false;
        e
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
            (
                "XDG_CACHE_HOME".into(),
                self.cache_dir().display().to_string(),
            ),
            ("XDG_RUNTIME_DIR".into(), format!("{r}/run")),
            ("BANGER_SYSTEM".into(), "0".into()),
            ("NO_COLOR".into(), "1".into()),
            // `banger debug ...` fault injection (tests/services.rs).
            ("BANGER_TEST_HOOKS".into(), "1".into()),
        ]
    }

    /// `banger <args>` inside the namespace.
    pub fn banger_cmd(&self, args: &[&str]) -> Command {
        let mut c = if self.isolated {
            self.netns.command(bin("banger"))
        } else {
            Command::new(bin("banger"))
        };
        c.args(args).envs(self.envs()).stdin(Stdio::null());
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

    /// Pid of the named banger process serving this tree, if any.
    pub fn pid_of(&self, comm: &str) -> Option<u32> {
        let root = self.root().display().to_string();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if c.trim() != comm || !banger::host::process::pid_alive(pid) {
                return None;
            }
            // Ours if its environment or arguments name our tree.
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let hay = String::from_utf8_lossy(&[environ, cmdline].concat()).into_owned();
            hay.contains(&root).then_some(pid)
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

/// Kernel and image files for boot tests, built (or found in the shared
/// cache) once per test process.
pub struct Artifacts {
    pub vmlinux: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub work_seed: PathBuf,
}

/// Pulls the kernel and builds the default image through banger, in the
/// host's network namespace (apt and mmdebstrap reach the Debian archive).
/// The state lives in the shared cache so later runs find it up to date.
pub fn artifacts() -> &'static Artifacts {
    static A: std::sync::OnceLock<Artifacts> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        let root = shared_cache().join("artifact-env");
        std::fs::create_dir_all(&root).unwrap();
        // One process at a time prepares the shared tree.
        let lock = std::fs::File::create(shared_cache().join("artifact-env.lock")).unwrap();
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let r = root.display().to_string();
        let run = |args: &[&str]| {
            let out = Command::new(bin("banger"))
                .args(args)
                .env("HOME", format!("{r}/home"))
                .env("XDG_CONFIG_HOME", format!("{r}/config"))
                .env("XDG_STATE_HOME", format!("{r}/state"))
                .env("XDG_CACHE_HOME", shared_cache())
                .env("XDG_RUNTIME_DIR", format!("{r}/run"))
                .env("BANGER_SYSTEM", "0")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "banger {args:?}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["kernel", "pull", "debian-cloud"]);
        run(&["image", "build", "debian-bookworm"]);
        run(&["daemon", "stop"]);
        let k = root.join("state/banger/kernels/debian-cloud");
        let i = root.join("state/banger/images/debian-bookworm");
        Artifacts {
            vmlinux: k.join("vmlinux"),
            initrd: k.join("initrd.img"),
            rootfs: i.join("rootfs.ext4"),
            work_seed: i.join("work-seed.ext4"),
        }
    })
}

/// A tool the tests drive, found on PATH or in cargo's bin dir.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    dirs.push(PathBuf::from("/root/.cargo/bin"));
    dirs.push(shared_cache().join("../bin"));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (scripts/test.sh installs it)"))
}

/// Sends SIGINT to a running banger CLI (`ip netns exec` execs banger, so
/// the child's pid is the CLI's) and checks it exits 130 like a shell's
/// interrupted command.
pub fn interrupt_expecting_130(child: std::process::Child) -> Output {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl TestEnv {
    /// `banger <args>` with `stdin`, its output collected, failing the test
    /// (not hanging it) past `timeout`.
    pub fn banger_within(&self, args: &[&str], stdin: Stdio, timeout: Duration) -> Output {
        let child = self
            .banger_cmd(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        output_within(child, &args.join(" "), timeout)
    }
}

/// Waits for `child` with a deadline, collecting its output; on the
/// deadline it is killed and the test fails with what it printed so far
/// (a hang is a failure, not an overtime CI run).
pub fn output_within(mut child: std::process::Child, what: &str, timeout: Duration) -> Output {
    use std::io::Read;
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "{what} did not finish within {timeout:?}; stderr so far:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A git repository at `dir` holding `files` (name, content), committed.
pub fn git_repo(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "x",
        ],
    ] {
        run_ok(Command::new("git").arg("-C").arg(dir).args(args));
    }
}
