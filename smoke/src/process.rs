//! Processes for the smoke run: every command through a deadline with
//! its output kept (head and tail) for the scenario's log, and what the
//! runner needs to look at the host's processes and tools.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of each output stream kept in a log record (head and tail).
pub const LOG_KEEP: usize = 4096;

pub fn proc_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Alive and not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: plain syscall; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A tool on PATH (or where scripts/test.sh installs the test tools).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
        "/root/.cargo/bin",
        "/var/cache/banger-ci/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The iptables banger uses (src/host/nat.rs `iptables()`): the legacy one
/// where the kernel has no nf_tables, else the default.
pub fn iptables() -> &'static str {
    let legacy = find_tool("iptables-legacy").is_some();
    let nft_kernel =
        Path::new("/proc/net/nf_tables").exists() || Path::new("/sys/module/nf_tables").exists();
    if legacy && !nft_kernel {
        "iptables-legacy"
    } else if find_tool("iptables").is_some() {
        "iptables"
    } else {
        "iptables-legacy"
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Out {
    pub what: String,
    /// None: killed by a signal (or by the deadline).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Out {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// The last non-empty line of stderr (banger's error line).
    pub fn err_line(&self) -> String {
        self.err()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    }
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.code) {
            (true, _) => format!("killed at its deadline after {:.1}s", secs(self.elapsed)),
            (false, Some(c)) => format!("exit {c} ({:.1}s)", secs(self.elapsed)),
            (false, None) => format!("killed by a signal ({:.1}s)", secs(self.elapsed)),
        }
    }
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn clip(b: &[u8]) -> String {
    if b.len() <= 2 * LOG_KEEP {
        return String::from_utf8_lossy(b).into_owned();
    }
    format!(
        "{}\n[... {} bytes left out ...]\n{}",
        String::from_utf8_lossy(&b[..LOG_KEEP]),
        b.len() - 2 * LOG_KEEP,
        String::from_utf8_lossy(&b[b.len() - LOG_KEEP..])
    )
}

pub fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect::<String>()
}

/// Shell-like rendering of an argv for the log.
pub fn show_argv(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts
        .iter()
        .map(|p| {
            if !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                p.clone()
            } else {
                format!("'{}'", p.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` (in its own process group) with `stdin`, collecting its
/// output; past `timeout` the group is killed and what it printed so far is
/// returned with `timed_out`.
pub fn run_with_deadline(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Out {
    let what = show_argv(&cmd);
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Out {
                what,
                code: Some(127),
                stdout: Vec::new(),
                stderr: format!("cannot start: {e}").into_bytes(),
                timed_out: false,
                elapsed: start.elapsed(),
            }
        }
    };
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })),
        _ => None,
    };
    let (out_buf, out_t) = drain(child.stdout.take());
    let (err_buf, err_t) = drain(child.stderr.take());
    let deadline = start + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // SAFETY: the child leads its own process group.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Readers end when the pipes close; a grandchild that kept them open
    // does not hold us up for long.
    let until = Instant::now() + Duration::from_secs(5);
    while (!out_t.is_finished() || !err_t.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(w) = writer {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    let take =
        |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()));
    use std::os::unix::process::ExitStatusExt;
    Out {
        what,
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code().or_else(|| s.signal().map(|n| 128 + n)))
        },
        stdout: take(&out_buf),
        stderr: take(&err_buf),
        timed_out,
        elapsed: start.elapsed(),
    }
}

type Buf = Arc<Mutex<Vec<u8>>>;

pub fn drain(r: Option<impl Read + Send + 'static>) -> (Buf, std::thread::JoinHandle<()>) {
    let buf: Buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let t = std::thread::spawn(move || {
        let Some(mut r) = r else { return };
        let mut chunk = [0u8; 65536];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => b
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, t)
}
