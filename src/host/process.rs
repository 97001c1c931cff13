//! Processes: starting a detached service with a readiness pipe, waiting for
//! a pid to exit (pidfd, no polling loop), checking liveness.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fd number a spawned service finds its readiness pipe on.
pub const READY_FD: RawFd = 3;

/// Outcome of starting a detached service.
#[derive(Debug)]
pub enum Started {
    /// It reported ready; its pid.
    Ready(u32),
    /// Another instance already runs (it found the lock held).
    AlreadyRunning,
}

/// Starts `program args... --ready-fd 3` in its own session (so it outlives
/// us and our terminal), stdout/stderr appended to `log`, and waits up to
/// `timeout` for it to write `ready` (or `error: ...`, or `already-running`)
/// on the pipe.
pub fn spawn_service(
    program: &Path,
    args: &[String],
    log: &Path,
    timeout: Duration,
) -> Result<Started, String> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg("--ready-fd")
        .arg(READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf);
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(wr_raw, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    drop(wr);
    let pid = child.id();
    let msg = read_with_timeout(rd, timeout);
    // Reap the child if it already exited (it is our child until we exit).
    let exited = child.try_wait().ok().flatten();
    match msg {
        Ok(m) if m.trim() == "ready" => Ok(Started::Ready(pid)),
        Ok(m) if m.trim() == "already-running" => Ok(Started::AlreadyRunning),
        Ok(m) if m.trim_start().starts_with("error:") => {
            Err(m.trim().trim_start_matches("error:").trim().to_string())
        }
        Ok(m) => Err(match exited {
            Some(st) => format!(
                "{} exited ({st}) before it was ready{}; see {}",
                program.display(),
                if m.is_empty() {
                    String::new()
                } else {
                    format!(": {}", m.trim())
                },
                log.display()
            ),
            None => format!(
                "{} closed its readiness pipe without saying ready; see {}",
                program.display(),
                log.display()
            ),
        }),
        Err(e) => Err(format!("{e}; see {}", log.display())),
    }
}

fn read_with_timeout(fd: OwnedFd, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut f = File::from(fd);
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no readiness report within {timeout:?}"));
        }
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 512];
        match f.read(&mut chunk) {
            Ok(0) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                if buf.ends_with(b"\n") {
                    return Ok(String::from_utf8_lossy(&buf).into_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading readiness pipe: {e}")),
        }
    }
}

/// Writes a readiness report (`ready`, `already-running`, `error: ...`) to the
/// pipe inherited as `fd` and closes it.
pub fn report_ready(fd: Option<RawFd>, message: &str) {
    let Some(fd) = fd else { return };
    // SAFETY: the fd was handed to us by our parent for exactly this purpose
    // and is used once, here.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let _ = writeln!(f, "{message}");
}

/// Runs a service (bangerd, bangerd-root) the one way: `start` it (`None`:
/// another instance already runs), tell whoever started it on the
/// readiness pipe (`ready`, `already-running` or `error: ...`), then
/// `serve` until it is asked to stop.
pub async fn run_service<R, E, Serve>(
    ready_fd: Option<RawFd>,
    start: impl std::future::Future<Output = Result<Option<R>, E>>,
    serve: impl FnOnce(R) -> Serve,
) -> Result<(), E>
where
    E: std::fmt::Display,
    Serve: std::future::Future<Output = ()>,
{
    match start.await {
        Ok(Some(running)) => {
            report_ready(ready_fd, "ready");
            serve(running).await;
            Ok(())
        }
        Ok(None) => {
            report_ready(ready_fd, "already-running");
            Ok(())
        }
        Err(e) => {
            report_ready(ready_fd, &format!("error: {e}"));
            Err(e)
        }
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the first field after the ")" closing comm.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            match state {
                // A killed multi-threaded process: its first thread is a
                // zombie while the others still exit, holding its files
                // (a VMM's tap queue). Alive until the last one is gone.
                Some('Z') => std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| d.count() > 1)
                    .unwrap_or(false),
                Some('X') | None => false,
                Some(_) => true,
            }
        }
        Err(_) => false,
    }
}

/// Opens a pidfd for `pid`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Blocks until `pid` exits or `timeout` passes; true if it exited. Uses a
/// pidfd, which becomes readable when the process terminates. A zombie
/// counts as exited.
pub fn wait_exit_blocking(pid: u32, timeout: Duration) -> bool {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(_) => return !pid_alive(pid),
    };
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_alive(pid) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return !pid_alive(pid);
        }
    }
}

/// Waits, without a thread, until `pid` exits (its pidfd becomes readable).
/// Returns at once if it is already gone or a zombie.
pub async fn wait_exit_forever(pid: u32) {
    let Ok(fd) = pidfd_open(pid) else { return };
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which closes it on
    // drop; nothing else holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(afd) = registered else {
        return;
    };
    if !pid_alive(pid) {
        return;
    }
    // Readable once the process has terminated (zombie or reaped).
    let _ = afd.readable().await;
}

/// Async form of [`wait_exit_blocking`].
pub async fn wait_exit(pid: u32, timeout: Duration) -> bool {
    tokio::task::spawn_blocking(move || wait_exit_blocking(pid, timeout))
        .await
        .unwrap_or(false)
}

/// An exclusive, non-blocking lock on a file; held while the value lives.
pub struct LockFile {
    _lock: nix::fcntl::Flock<File>,
}

impl LockFile {
    /// Takes the lock, or `Ok(None)` if another process holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<LockFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a symlink: the directory may belong to another user.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        LockFile::try_lock(f)
    }

    /// Takes the exclusive lock on an open file, or `Ok(None)` if held.
    pub fn try_lock(f: File) -> std::io::Result<Option<LockFile>> {
        LockFile::lock_with(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
    }

    /// Takes a shared lock on an open file, or `Ok(None)` if it is held
    /// exclusively.
    pub fn try_lock_shared(f: File) -> std::io::Result<Option<LockFile>> {
        LockFile::lock_with(f, nix::fcntl::FlockArg::LockSharedNonblock)
    }

    fn lock_with(f: File, how: nix::fcntl::FlockArg) -> std::io::Result<Option<LockFile>> {
        match nix::fcntl::Flock::lock(f, how) {
            Ok(l) => Ok(Some(LockFile { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(std::io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every tool the code runs has a deadline: no `.output()` (which
    /// waits forever) outside tests and the test-support module.
    #[test]
    fn no_tool_runs_without_a_deadline() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src.clone()];
        let mut offenders = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&src).unwrap().display().to_string();
                if !rel.ends_with(".rs") || rel == "ops/testing.rs" {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let lines: Vec<&str> = text.lines().collect();
                // Test modules (`#[cfg(test)] mod …`) are skipped by their
                // braces.
                let (mut depth, mut in_test) = (0i64, false);
                for (n, l) in lines.iter().enumerate() {
                    if !in_test
                        && l.trim() == "#[cfg(test)]"
                        && lines
                            .get(n + 1)
                            .is_some_and(|x| x.trim_start().starts_with("mod "))
                    {
                        in_test = true;
                        depth = 0;
                        continue;
                    }
                    if in_test {
                        depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                        if depth <= 0 && l.contains('}') {
                            in_test = false;
                        }
                        continue;
                    }
                    if l.contains(".output()") && !l.trim_start().starts_with("//") {
                        offenders.push(format!("src/{rel}:{}", n + 1));
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "use run_bounded: {offenders:?}");
    }

    use super::*;

    #[test]
    fn liveness_and_exit_wait() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(pid_alive(pid));
        assert!(!wait_exit_blocking(pid, Duration::from_millis(50)));
        child.kill().unwrap();
        // Unreaped, the child is a zombie: counted as exited.
        assert!(wait_exit_blocking(pid, Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let a = LockFile::try_acquire(&p).unwrap();
        assert!(a.is_some());
        // flock locks are per open file description: a second open conflicts.
        assert!(LockFile::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(LockFile::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn lock_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep").unwrap();
        let p = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = LockFile::try_acquire(&p)
            .err()
            .expect("a symlinked lock is refused");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}

/// What [`run_bounded`] saw.
#[derive(Debug)]
pub struct Ran {
    pub status: std::process::ExitStatus,
    /// At most the cap given; `truncated` says whether more was written.
    pub stdout: Vec<u8>,
    /// The last bytes of stderr, at most the cap given.
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

/// Why [`run_bounded`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("did not finish within {0:?} and was killed")]
    Timeout(Duration),
}

/// Sets `PR_SET_PDEATHSIG(SIGKILL)` on the child: if this process dies (a
/// SIGKILLed helper), the tool dies with it instead of running on as root.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `cmd` (stdin closed) to completion within `timeout`, keeping at most
/// `cap` bytes of stdout (the first) and of stderr (the last); kills it at the
/// deadline. The child dies with us ([`die_with_parent`]). Readers run on
/// their own threads, so a grandchild holding a pipe cannot wedge the call.
pub fn run_bounded(cmd: &mut Command, timeout: Duration, cap: usize) -> Result<Ran, RunError> {
    run_bounded_with(cmd, None, timeout, cap)
}

/// [`run_bounded`] with `input` written to its stdin (on a thread: a
/// child that does not read cannot wedge the call; the deadline holds).
pub fn run_bounded_with(
    cmd: &mut Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
    cap: usize,
) -> Result<Ran, RunError> {
    die_with_parent(cmd);
    let mut child = cmd
        .stdin(match input {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        });
    }
    let pump = |mut r: Box<dyn Read + Send>, keep_tail: bool| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let (mut kept, mut truncated) = (Vec::new(), false);
            let mut buf = [0u8; 16 << 10];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > cap {
                    truncated = true;
                    if keep_tail {
                        kept.drain(..kept.len() - cap);
                    } else {
                        kept.truncate(cap);
                    }
                }
            }
            let _ = tx.send((kept, truncated));
        });
        rx
    };
    let out = pump(Box::new(child.stdout.take().expect("piped")), false);
    let err = pump(Box::new(child.stderr.take().expect("piped")), true);
    if !wait_exit_blocking(child.id(), timeout) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RunError::Timeout(timeout));
    }
    let status = child.wait()?;
    // The pipes close when the child exits unless it left a grandchild
    // holding them: the readers get a bounded moment, then we go on.
    let until = Instant::now() + Duration::from_secs(2);
    let take = |rx: std::sync::mpsc::Receiver<(Vec<u8>, bool)>| {
        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    };
    let ((stdout, truncated), (stderr, _)) = (take(out), take(err));
    Ok(Ran {
        status,
        stdout,
        stderr,
        truncated,
    })
}
