//! What a scenario works with: the run's environment ([`Env`]), every
//! command through a deadline and into the scenario's log ([`Ctx`]), and
//! helpers that run inside the network namespace.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::process::*;

/// Any banger command that does not say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// A command in a guest (exec, ssh, run of a short command).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// `vm create`, `vm run` (boot included; TCG under load is slow).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The bridge address and DNS port of banger's defaults (the run's config
/// sets neither).
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
pub const DNS_PORT: u16 = 42069;
pub const BRIDGE: &str = "banger0";

/// The run: its directory tree, namespace and binaries. Shared by every
/// scenario (read-only).
#[derive(Debug)]
pub struct Env {
    pub run_dir: PathBuf,
    pub netns: String,
    pub bin_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub fixture: PathBuf,
    /// `BANGER_SMOKE_BREAK`: the scenario whose first check is inverted.
    pub break_scenario: Option<String>,
}

impl Env {
    pub fn home(&self) -> PathBuf {
        self.run_dir.join("home")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.run_dir.join("config/banger")
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("config.toml")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.run_dir.join("state/banger")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.run_dir.join("run/banger")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
    }
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The environment every banger process of the run gets (as
    /// tests/support's `TestEnv::envs`, without the test hooks).
    pub fn envs(&self) -> Vec<(String, String)> {
        let r = self.run_dir.display().to_string();
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        vec![
            ("HOME".into(), format!("{r}/home")),
            ("XDG_CONFIG_HOME".into(), format!("{r}/config")),
            ("XDG_STATE_HOME".into(), format!("{r}/state")),
            (
                "XDG_CACHE_HOME".into(),
                self.cache_dir.display().to_string(),
            ),
            ("XDG_RUNTIME_DIR".into(), format!("{r}/run")),
            ("BANGER_SYSTEM".into(), "0".into()),
            ("NO_COLOR".into(), "1".into()),
            ("PATH".into(), path),
        ]
    }

    /// `banger <args>`: inside the namespace (`nsenter`, which execs
    /// banger, so the child is the CLI) or, for preflight's downloads, in
    /// the host's.
    pub fn banger_cmd(&self, args: &[&str], isolated: bool) -> Command {
        let mut c = if isolated {
            // `nsenter --net`, not `ip netns exec`: that mounts a fresh
            // /sys, hiding the cgroups the helper confines VMMs with.
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", self.netns))
                .arg("--")
                .arg(self.bin("banger"));
            c
        } else {
            Command::new(self.bin("banger"))
        };
        c.args(args).envs(self.envs()).current_dir(&self.run_dir);
        c
    }

    /// Pids of live processes named `comm` whose environment or arguments
    /// name this run's directory (as tests/support's `pid_of`).
    pub fn pids_of(&self, comm: &str) -> Vec<u32> {
        let root = self.run_dir.display().to_string();
        proc_pids()
            .into_iter()
            .filter(|pid| {
                let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if c.trim() != comm || !pid_alive(*pid) {
                    return false;
                }
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&[environ, cmdline].concat()).contains(&root)
            })
            .collect()
    }

    /// QEMU or Firecracker processes whose command line names the run's
    /// directory (and `needle`, when given: a VM id).
    pub fn vmm_pids(&self, needle: Option<&str>) -> Vec<u32> {
        let root = self.run_dir.display().to_string();
        proc_pids()
            .into_iter()
            .filter(|pid| {
                let cmd = String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                )
                .into_owned();
                pid_alive(*pid)
                    && cmd.contains(&root)
                    && (cmd.contains("qemu-system") || cmd.contains("firecracker"))
                    && needle.is_none_or(|n| cmd.contains(n))
            })
            .collect()
    }

    /// The last `n` lines of a file in the state dir (the daemon's and the
    /// helper's logs).
    pub fn log_tail(&self, file: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.state_dir().join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Why a scenario stopped early.
#[derive(Debug)]
pub enum Stop {
    Fail(String),
    Skip(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Fail(s)
    }
}

impl From<&str> for Stop {
    fn from(s: &str) -> Stop {
        Stop::Fail(s.to_string())
    }
}

/// A scenario's body: `?` on any `Result<_, String>` fails it.
pub type Res = Result<(), Stop>;

pub fn skip(reason: impl Into<String>) -> Stop {
    Stop::Skip(reason.into())
}

/// One scenario's view of the run.
pub struct Ctx {
    pub name: &'static str,
    pub env: Arc<Env>,
    /// A scratch directory of its own.
    pub dir: PathBuf,
    pub log_path: PathBuf,
    log: Option<File>,
    /// While polling (`wait_for`): the records of the latest attempt only.
    poll: Option<String>,
    /// What it created, deleted by the runner afterwards whatever happened.
    pub vms: Vec<String>,
    pub snapshots: Vec<String>,
    pub images: Vec<String>,
    children: Vec<Child>,
    checks: u32,
    /// Commands run in the host's network namespace (preflight only).
    pub host_network: bool,
}

impl Ctx {
    pub fn new(name: &'static str, env: Arc<Env>) -> Ctx {
        let dir = env.run_dir.join("work").join(name);
        let _ = std::fs::create_dir_all(&dir);
        let log_path = env.logs_dir().join(format!("{name}.log"));
        let log = File::create(&log_path).ok();
        Ctx {
            name,
            env,
            dir,
            log_path,
            log,
            poll: None,
            vms: Vec::new(),
            snapshots: Vec::new(),
            images: Vec::new(),
            children: Vec::new(),
            checks: 0,
            host_network: false,
        }
    }

    /// The shared fixture repository (repodir scenarios).
    pub fn repo(&self) -> PathBuf {
        self.env.fixture.clone()
    }

    pub fn note(&mut self, text: &str) {
        let line = format!("# {text}\n");
        self.write(&line);
    }

    fn write(&mut self, text: &str) {
        if let Some(p) = self.poll.as_mut() {
            p.push_str(text);
            return;
        }
        if let Some(f) = self.log.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    }

    fn record(&mut self, o: &Out, stdin_len: Option<usize>) {
        let mut t = format!("$ {}\n", o.what);
        if let Some(n) = stdin_len {
            t.push_str(&format!("  (stdin: {n} bytes)\n"));
        }
        t.push_str(&format!("  {}\n", o.status_text()));
        if !o.stdout.is_empty() {
            t.push_str(&format!("  stdout:\n{}", indent(&clip(&o.stdout))));
        }
        if !o.stderr.is_empty() {
            t.push_str(&format!("  stderr:\n{}", indent(&clip(&o.stderr))));
        }
        self.write(&t);
    }

    /// Runs and logs a command with a deadline; Err only when it hit the
    /// deadline (a hang is a failure, with what it printed so far).
    pub fn run_cmd(
        &mut self,
        cmd: Command,
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Out, String> {
        let n = stdin.as_ref().map(Vec::len);
        let o = run_with_deadline(cmd, stdin, timeout);
        self.record(&o, n);
        if o.timed_out {
            return Err(format!(
                "`{}` did not finish within {}s; stderr so far: {}",
                o.what,
                timeout.as_secs(),
                o.err_line()
            ));
        }
        Ok(o)
    }

    fn banger_cmd(&self, args: &[&str]) -> Command {
        self.env.banger_cmd(args, !self.host_network)
    }

    pub fn banger(&mut self, args: &[&str]) -> Result<Out, String> {
        self.banger_within(args, DEFAULT_TIMEOUT)
    }

    pub fn banger_within(&mut self, args: &[&str], timeout: Duration) -> Result<Out, String> {
        let c = self.banger_cmd(args);
        self.run_cmd(c, None, timeout)
    }

    pub fn banger_stdin(&mut self, args: &[&str], stdin: &[u8]) -> Result<Out, String> {
        let c = self.banger_cmd(args);
        self.run_cmd(c, Some(stdin.to_vec()), GUEST_TIMEOUT)
    }

    /// `banger <args>` that must exit 0; its stdout.
    pub fn banger_ok(&mut self, args: &[&str]) -> Result<String, String> {
        self.banger_ok_within(args, DEFAULT_TIMEOUT)
    }

    pub fn banger_ok_within(&mut self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let o = self.banger_within(args, timeout)?;
        if !o.ok() {
            return Err(format!(
                "`banger {}` exited {}: {}",
                args.join(" "),
                o.code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "by a signal".into()),
                o.err_line()
            ));
        }
        Ok(o.out())
    }

    /// Several `banger` commands at once; each gets the deadline.
    pub fn banger_parallel(
        &mut self,
        runs: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<Out>, String> {
        let handles: Vec<_> = runs
            .iter()
            .map(|args| {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                let c = self.banger_cmd(&a);
                std::thread::spawn(move || run_with_deadline(c, None, timeout))
            })
            .collect();
        let mut outs = Vec::new();
        for h in handles {
            let o = h
                .join()
                .map_err(|_| "a parallel run panicked".to_string())?;
            self.record(&o, None);
            outs.push(o);
        }
        if let Some(o) = outs.iter().find(|o| o.timed_out) {
            return Err(format!(
                "`{}` did not finish within {}s: {}",
                o.what,
                timeout.as_secs(),
                o.err_line()
            ));
        }
        Ok(outs)
    }

    /// Any program, in the host's namespace, logged.
    pub fn run(&mut self, program: &str, args: &[&str]) -> Result<Out, String> {
        let mut c = Command::new(program);
        c.args(args).current_dir(&self.dir);
        self.run_cmd(c, None, DEFAULT_TIMEOUT)
    }

    pub fn run_ok(&mut self, program: &str, args: &[&str]) -> Result<String, String> {
        let o = self.run(program, args)?;
        if !o.ok() {
            return Err(format!(
                "`{}` exited {:?}: {}",
                o.what,
                o.code,
                o.err_line()
            ));
        }
        Ok(o.out())
    }

    /// `ip netns exec <ns> <args>`, logged.
    pub fn netns_exec(&mut self, args: &[&str]) -> Result<Out, String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.env.netns])
            .args(args)
            .current_dir(&self.dir);
        self.run_cmd(c, None, DEFAULT_TIMEOUT)
    }

    /// A background process inside the namespace (a registry, a web
    /// server), its output into `log`; killed (its whole group) when the
    /// scenario ends.
    pub fn netns_spawn(&mut self, args: &[&str], log: &Path) -> Result<(), String> {
        let f = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.env.netns])
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .process_group(0);
        self.note(&format!(
            "background: {} (log {})",
            show_argv(&c),
            log.display()
        ));
        let child = c
            .spawn()
            .map_err(|e| format!("starting {}: {e}", args.join(" ")))?;
        self.children.push(child);
        Ok(())
    }

    /// An assertion. With `BANGER_SMOKE_BREAK=<this scenario>` the first
    /// one is inverted (the suite's self-test).
    pub fn check(&mut self, cond: bool, msg: impl AsRef<str>) -> Result<(), String> {
        self.checks += 1;
        let broken = self.checks == 1 && self.env.break_scenario.as_deref() == Some(self.name);
        let cond = if broken { !cond } else { cond };
        let msg = msg.as_ref();
        let first = msg.lines().next().unwrap_or("");
        if cond {
            self.write(&format!("check ok: {first}\n"));
            Ok(())
        } else {
            let why = if broken {
                " (inverted by BANGER_SMOKE_BREAK)"
            } else {
                ""
            };
            self.write(&format!("CHECK FAILED{why}: {msg}\n"));
            Err(format!("{first}{why}"))
        }
    }

    /// Polls `f` (short sleeps) until it says true; past `timeout` fails.
    /// Only the latest attempt's commands are kept in the log.
    pub fn wait_for<F>(&mut self, what: &str, timeout: Duration, mut f: F) -> Result<(), String>
    where
        F: FnMut(&mut Ctx) -> Result<bool, String>,
    {
        let start = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            self.poll = Some(String::new());
            let r = f(self);
            let last = self.poll.take().unwrap_or_default();
            match r {
                Ok(true) => {
                    self.write(&format!(
                        "waited for {what}: {tries} attempts, {:.1}s; the last one:\n{last}",
                        secs(start.elapsed())
                    ));
                    return Ok(());
                }
                Err(e) => {
                    self.write(&format!("waiting for {what} failed:\n{last}"));
                    return Err(e);
                }
                Ok(false) if start.elapsed() >= timeout => {
                    self.write(&format!(
                        "timed out waiting for {what} ({tries} attempts, {}s); the last one:\n{last}",
                        timeout.as_secs()
                    ));
                    return Err(format!(
                        "timed out after {}s waiting for {what}",
                        timeout.as_secs()
                    ));
                }
                Ok(false) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// A unique, valid VM name for this scenario, deleted afterwards.
    pub fn vm_name(&mut self, suffix: &str) -> String {
        let n = unique_name(self.name, suffix);
        if !self.vms.contains(&n) {
            self.vms.push(n.clone());
        }
        n
    }

    /// A unique snapshot name, deleted afterwards.
    pub fn snapshot_name(&mut self, suffix: &str) -> String {
        let n = unique_name(self.name, suffix);
        if !self.snapshots.contains(&n) {
            self.snapshots.push(n.clone());
        }
        n
    }

    pub fn json(&self, text: &str) -> Result<Value, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            )
        })
    }

    /// `vm show <name> --json`.
    pub fn show(&mut self, name: &str) -> Result<Value, String> {
        let t = self.banger_ok(&["vm", "show", name, "--json"])?;
        self.json(&t)
    }

    /// Names in `vm list --json`.
    pub fn vm_names(&mut self) -> Result<Vec<String>, String> {
        let t = self.banger_ok(&["vm", "list", "--json"])?;
        let v = self.json(&t)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `vm create --name <name> <extra>`; its record.
    pub fn create(&mut self, name: &str, extra: &[&str]) -> Result<Value, String> {
        let mut a = vec!["vm", "create", "--name", name];
        a.extend_from_slice(extra);
        self.banger_ok_within(&a, BOOT_TIMEOUT)?;
        self.show(name)
    }

    /// `vm exec <vm> -- <argv>` with the guest deadline.
    pub fn exec(&mut self, vm: &str, argv: &[&str]) -> Result<Out, String> {
        let mut a = vec!["vm", "exec", vm, "--"];
        a.extend_from_slice(argv);
        self.banger_within(&a, GUEST_TIMEOUT)
    }

    /// `vm exec <vm> -- sh -c <script>` that must succeed; its stdout.
    pub fn sh_ok(&mut self, vm: &str, script: &str) -> Result<String, String> {
        let a = ["vm", "exec", vm, "--", "sh", "-c", script];
        self.banger_ok_within(&a, GUEST_TIMEOUT)
    }

    /// The guest's own boot id.
    pub fn boot_id(&mut self, vm: &str) -> Result<String, String> {
        let a = [
            "vm",
            "exec",
            vm,
            "--",
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ];
        Ok(self.banger_ok_within(&a, GUEST_TIMEOUT)?.trim().to_string())
    }

    /// Deletes what the scenario created and stops its background
    /// processes; problems are logged (the cleanup proof reports leaks).
    pub fn finish(&mut self) {
        for c in &mut self.children {
            // SAFETY: each child leads its own process group.
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        let existing = self.vm_names().unwrap_or_default();
        for vm in std::mem::take(&mut self.vms) {
            if existing.contains(&vm) {
                self.note(&format!("cleanup: deleting VM {vm}"));
                let ok = self
                    .banger_within(&["vm", "delete", &vm], BOOT_TIMEOUT)
                    .map(|o| o.ok())
                    .unwrap_or(false);
                if !ok {
                    let _ = self.banger(&["vm", "kill", &vm, "--signal", "KILL"]);
                    let _ = self.banger(&["vm", "delete", &vm]);
                }
            }
        }
        let snaps = self
            .banger_ok(&["snapshot", "list", "--json"])
            .unwrap_or_default();
        let snaps = self.json(&snaps).unwrap_or(Value::Null);
        let have = |n: &str| {
            snaps
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["name"] == n))
        };
        let mine: Vec<String> = std::mem::take(&mut self.snapshots);
        for s in mine.iter().rev().filter(|s| have(s.as_str())) {
            self.note(&format!("cleanup: deleting snapshot {s}"));
            let _ = self.banger(&["snapshot", "delete", s]);
        }
        for i in std::mem::take(&mut self.images) {
            let _ = self.banger(&["image", "delete", &i]);
        }
    }

    /// Appends the daemon's and the helper's last log lines.
    pub fn append_daemon_logs(&mut self) {
        for f in ["bangerd.log", "bangerd-root.log"] {
            let tail = self.env.log_tail(f, 80);
            self.write(&format!(
                "\n--- last 80 lines of {} ---\n{tail}\n",
                self.env.state_dir().join(f).display()
            ));
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: as in finish.
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

/// `<scenario>-<suffix>`, shortened to a valid VM name (1-63 of [a-z0-9-]).
pub fn unique_name(scenario: &str, suffix: &str) -> String {
    let raw = if suffix.is_empty() {
        scenario.to_string()
    } else {
        format!("{scenario}-{suffix}")
    };
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(63);
    s.trim_matches('-').to_string()
}

pub use crate::netns::{dns_query, tcp_listening, udp_port_free};
