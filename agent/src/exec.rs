//! Running a command for the host (one exec stream): argv exactly as given,
//! cwd, environment, stdin from the stream or a TCP connection, stdout and
//! stderr streamed back with backpressure, signals forwarded to the
//! command's process group, optionally on a pseudo-terminal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::proto::{self, ExecError, ExecErrorKind, ExecRequest, ExitStatus, Stdin};

/// How long output is still forwarded after the command exited (a
/// background process may keep its pipes open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// The most output is forwarded for after the exit, however it flows.
const DRAIN_CAP: Duration = Duration::from_secs(30);
/// The byte the agent answers a TCP stdin connection's token with.
pub const TCP_ACK: u8 = 0x06;

/// How long the agent waits for the TCP stdin connection.
pub const TCP_ACCEPT: Duration = Duration::from_secs(30);

/// The environment every command starts from (the agent's own is not
/// passed on); the request's variables are added on top.
fn base_env(tty: bool) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        ("SHELL".into(), "/bin/sh".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    if tty {
        v.push(("TERM".into(), "xterm-256color".into()));
    }
    v
}

fn classify(e: &io::Error) -> ExecErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => ExecErrorKind::NotFound,
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) | Some(libc::EPERM) => {
            ExecErrorKind::NotExecutable
        }
        _ => ExecErrorKind::Other,
    }
}

type Writer<S> = Arc<Mutex<tokio::io::WriteHalf<S>>>;

async fn send<S: AsyncWrite>(w: &Writer<S>, kind: u8, data: &[u8]) -> io::Result<()> {
    let mut w = w.lock().await;
    proto::write_msg(&mut *w, kind, data).await?;
    w.flush().await
}

async fn fail<S: AsyncWrite>(
    w: &Writer<S>,
    kind: ExecErrorKind,
    message: String,
) -> io::Result<()> {
    let e = ExecError { kind, message };
    let data = serde_json::to_vec(&e).map_err(io::Error::other)?;
    send(w, proto::ERROR, &data).await?;
    w.lock().await.shutdown().await
}

/// Copies `from` into frames of `kind` until it ends.
/// Forwards `from` as `kind` frames until it ends or `stop` is set. A stop
/// is taken only between frames (the read is cancelled, never a write), so
/// the stream never carries half a frame; `sent` counts the frames.
async fn pump<R: AsyncRead + Unpin, S: AsyncWrite>(
    mut from: R,
    w: Writer<S>,
    kind: u8,
    mut stop: tokio::sync::watch::Receiver<bool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if send(&w, kind, &buf[..n]).await.is_err() {
            return;
        }
        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Listens on an ephemeral TCP port, reports it, and returns the first
/// connection that presents the first half of `token` (each attempt
/// bounded in time); that connection is answered [`TCP_ACK`] and the second
/// half, so the host knows it reached this agent (the token came over the
/// VM's own channel) and not whoever else answers at the address.
async fn tcp_stdin<S: AsyncWrite>(w: &Writer<S>, token: &str) -> io::Result<tokio::net::TcpStream> {
    if token.len() < 64
        || !token.len().is_multiple_of(2)
        || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(io::Error::other(
            "a stdin token needs an even number of hex digits, at least 64",
        ));
    }
    let (ask, answer) = token.split_at(token.len() / 2);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
    let port = listener.local_addr()?.port();
    send(w, proto::PORT, &port.to_be_bytes()).await?;
    let accept = async {
        loop {
            let (mut s, _) = listener.accept().await?;
            let mut got = vec![0u8; ask.len()];
            let presented =
                tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await;
            if matches!(presented, Ok(Ok(_))) && constant_time_eq(&got, ask.as_bytes()) {
                // Told so: a host whose connection reached somewhere else
                // (a stale neighbour entry just after a restore, another
                // guest at the address) tries again.
                let mut reply = vec![TCP_ACK];
                reply.extend_from_slice(answer.as_bytes());
                let _ = s.write_all(&reply).await;
                return Ok::<_, io::Error>(s);
            }
        }
    };
    tokio::time::timeout(TCP_ACCEPT, accept)
        .await
        .map_err(|_| io::Error::other("no connection with the token came"))?
}

/// Compares without an early exit (the token is a secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A pseudo-terminal: the master (ours) and the slave (the command's).
fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to two ints and a valid winsize.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn set_winsize(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty master.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// The pty master as an async file.
struct PtyMaster(tokio::io::unix::AsyncFd<OwnedFd>);

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        // SAFETY: fcntl on a valid fd.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(PtyMaster(crate::vsock::async_fd(fd)?))
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut g = self.0.readable().await?;
            match g.try_io(|fd| crate::vsock::raw_read(fd.as_raw_fd(), buf)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut g = self.0.writable().await?;
            match g.try_io(|fd| crate::vsock::raw_write(fd.as_raw_fd(), data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Serves one exec stream to completion.
pub async fn serve<S>(stream: S, req: ExecRequest)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let w: Writer<S> = Arc::new(Mutex::new(wr));
    if let Err(e) = run(&mut rd, &w, req).await {
        let _ = fail(&w, ExecErrorKind::Other, e.to_string()).await;
    }
}

async fn run<S>(rd: &mut tokio::io::ReadHalf<S>, w: &Writer<S>, req: ExecRequest) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Some((prog, args)) = req.argv.split_first() else {
        return fail(w, ExecErrorKind::BadRequest, "empty command".into()).await;
    };
    if let Some(d) = &req.cwd {
        if !std::path::Path::new(d).is_dir() {
            return fail(
                w,
                ExecErrorKind::NotExecutable,
                format!("the working directory {d} does not exist in the guest"),
            )
            .await;
        }
    }
    let tcp = match &req.stdin {
        Stdin::Tcp { token } => match tcp_stdin(w, token).await {
            Ok(s) => Some(s),
            Err(e) => {
                return fail(w, ExecErrorKind::Other, format!("stdin over TCP: {e}")).await;
            }
        },
        _ => None,
    };
    let pty = match req.tty {
        Some(t) => Some(openpty(t.rows.max(1), t.cols.max(1))?),
        None => None,
    };
    let mut cmd = command(&req, prog, args, pty.as_ref().map(|(_, s)| s), tcp)?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let kind = classify(&e);
            let what = match kind {
                ExecErrorKind::NotFound => format!("{prog}: command not found"),
                _ => format!("{prog}: cannot run it: {e}"),
            };
            return fail(w, kind, what).await;
        }
    };
    let pid = child.id().unwrap_or(0);
    send(w, proto::STARTED, &pid.to_be_bytes()).await?;
    let (master, slave) = match pty {
        Some((m, s)) => (Some(Arc::new(PtyMaster::new(m)?)), Some(s)),
        None => (None, None),
    };
    // The command holds its own copies; ours would keep the pty open.
    drop(slave);
    let stdin = child.stdin.take();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let outputs = forward_output(&mut child, master.as_ref(), w, &stop, &sent);
    let Some(status) = host_frames(rd, &mut child, master.as_ref(), stdin, pid).await? else {
        // The host went away: the command went too.
        return Ok(());
    };
    drain(outputs, &sent, stop_tx).await;
    let exit = ExitStatus {
        code: status.code(),
        signal: status.signal(),
    };
    let data = serde_json::to_vec(&exit).map_err(io::Error::other)?;
    send(w, proto::EXIT, &data).await?;
    w.lock().await.shutdown().await
}

/// The command as asked: argv (no shell), a clean environment, its cwd;
/// on the pty `slave` in a session of its own, or with pipes (stdin the
/// host's TCP connection, the stream, or nothing) in a process group of
/// its own.
fn command(
    req: &ExecRequest,
    prog: &str,
    args: &[String],
    slave: Option<&OwnedFd>,
    tcp: Option<tokio::net::TcpStream>,
) -> io::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(base_env(req.tty.is_some()))
        .envs(req.env.iter().cloned())
        .kill_on_drop(true);
    cmd.current_dir(req.cwd.as_deref().unwrap_or("/root"));
    match slave {
        Some(slave) => {
            cmd.stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave.try_clone()?));
        }
        None => {
            cmd.stdin(match (&req.stdin, tcp) {
                (_, Some(s)) => {
                    // tokio's socket is non-blocking; the command expects a
                    // blocking stdin (tar reading it would see EAGAIN).
                    let s = s.into_std()?;
                    s.set_nonblocking(false)?;
                    Stdio::from(OwnedFd::from(s))
                }
                (Stdin::Stream, None) => Stdio::piped(),
                _ => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
    }
    if slave.is_some() {
        // A session of its own with the pty as its controlling terminal.
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        // Its own process group (signals reach what it starts). No pre_exec
        // closure: std then spawns with posix_spawn, not fork, which matters
        // under emulation (a fork copies the agent's address space).
        cmd.process_group(0);
    }
    Ok(cmd)
}

/// Forwards the command's output (the pty, or its stdout and stderr) as
/// frames until it ends or `stop`; `sent` counts frames.
fn forward_output<S>(
    child: &mut tokio::process::Child,
    master: Option<&Arc<PtyMaster>>,
    w: &Writer<S>,
    stop: &tokio::sync::watch::Receiver<bool>,
    sent: &Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut outputs = Vec::new();
    if let Some(m) = master {
        let (m, w) = (m.clone(), w.clone());
        let (mut stop, sent) = (stop.clone(), sent.clone());
        outputs.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = tokio::select! {
                    r = m.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                };
                if send(&w, proto::STDOUT, &buf[..n]).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    if let Some(o) = child.stdout.take() {
        outputs.push(tokio::spawn(pump(
            o,
            w.clone(),
            proto::STDOUT,
            stop.clone(),
            sent.clone(),
        )));
    }
    if let Some(e) = child.stderr.take() {
        outputs.push(tokio::spawn(pump(
            e,
            w.clone(),
            proto::STDERR,
            stop.clone(),
            sent.clone(),
        )));
    }
    outputs
}

/// Frames from the host (stdin, EOF, signals, resizes) until the command
/// exits; None when the host went away (the command is then killed).
async fn host_frames<S>(
    rd: &mut tokio::io::ReadHalf<S>,
    child: &mut tokio::process::Child,
    master: Option<&Arc<PtyMaster>>,
    mut stdin: Option<tokio::process::ChildStdin>,
    pid: u32,
) -> io::Result<Option<std::process::ExitStatus>>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // Frames from the host until the command exits.
    Ok(Some(loop {
        tokio::select! {
            st = child.wait() => break st?,
            msg = proto::read_msg(rd, proto::MAX_MSG) => match msg {
                Ok(Some((proto::STDIN, data))) => {
                    if let Some(m) = master {
                        let _ = m.write_all(&data).await;
                    } else if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Some((proto::STDIN_EOF, _))) => {
                    stdin = None;
                    if let Some(m) = master {
                        // Ctrl-D: the terminal's end of input.
                        let _ = m.write_all(&[4]).await;
                    }
                }
                Ok(Some((proto::SIGNAL, d))) if d.len() == 4 => {
                    let sig = i32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                    if (1..=64).contains(&sig) && pid > 1 {
                        // SAFETY: a signal to the command's process group.
                        unsafe { libc::kill(-(pid as i32), sig) };
                    }
                }
                Ok(Some((proto::RESIZE, d))) if d.len() == 4 => {
                    if let Some(m) = master {
                        set_winsize(m.0.get_ref().as_raw_fd(), u16::from_be_bytes([d[0], d[1]]), u16::from_be_bytes([d[2], d[3]]));
                    }
                }
                Ok(Some(_)) => {}
                // The host went away: the command goes too.
                Ok(None) | Err(_) => {
                    // SAFETY: as above.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                    let _ = child.wait().await;
                    return Ok(None);
                }
            }
        }
    }))
}

/// Lets the output forwarding finish after the exit, bounded; then stops it.
async fn drain(
    outputs: Vec<tokio::task::JoinHandle<()>>,
    sent: &std::sync::atomic::AtomicU64,
    stop_tx: tokio::sync::watch::Sender<bool>,
) {
    // Output written before the exit still arrives; a background process
    // that keeps the pipes open does not hold the answer back.
    // Forwarding goes on while output flows (under emulation the last
    // pipeful can take a while), until it has been idle DRAIN_AFTER_EXIT or
    // DRAIN_CAP passed; then the pumps stop at a frame boundary (aborting
    // one mid-write put half a frame before EXIT: "early eof" on the host).
    let cap = tokio::time::Instant::now() + DRAIN_CAP;
    let (mut seen, mut idle_since) = (
        sent.load(std::sync::atomic::Ordering::Relaxed),
        tokio::time::Instant::now(),
    );
    while !outputs.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        if now != seen {
            (seen, idle_since) = (now, tokio::time::Instant::now());
        }
        if idle_since.elapsed() >= DRAIN_AFTER_EXIT || tokio::time::Instant::now() >= cap {
            break;
        }
    }
    let _ = stop_tx.send(true);
    for t in outputs {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcd", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abce"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    /// Drives an exec over an in-memory stream and collects what comes back.
    async fn exec(
        req: ExecRequest,
        stdin: &[u8],
    ) -> (Vec<u8>, Vec<u8>, Option<ExitStatus>, Option<ExecError>) {
        let (host, agent) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(agent, req));
        let (mut rd, mut wr) = tokio::io::split(host);
        proto::write_msg(&mut wr, proto::STDIN, stdin)
            .await
            .unwrap();
        proto::write_msg(&mut wr, proto::STDIN_EOF, &[])
            .await
            .unwrap();
        let (mut out, mut err, mut exit, mut error) = (Vec::new(), Vec::new(), None, None);
        while let Some((k, d)) = proto::read_msg(&mut rd, proto::MAX_MSG).await.unwrap() {
            match k {
                proto::STDOUT => out.extend(d),
                proto::STDERR => err.extend(d),
                proto::EXIT => exit = Some(serde_json::from_slice(&d).unwrap()),
                proto::ERROR => error = Some(serde_json::from_slice(&d).unwrap()),
                _ => {}
            }
        }
        (out, err, exit, error)
    }

    fn req(argv: &[&str]) -> ExecRequest {
        let mut r = ExecRequest::new(argv.iter().map(|s| s.to_string()).collect(), "/");
        r.stdin = Stdin::Stream;
        r
    }

    #[tokio::test]
    async fn argv_stdin_exit_codes_and_signals() {
        let (out, _, exit, _) = exec(req(&["printf", "%s|", "a b", "c'd", "$HOME"]), b"").await;
        assert_eq!(out, b"a b|c'd|$HOME|");
        assert_eq!(exit.unwrap().shell_code(), 0);
        let (out, _, _, _) = exec(req(&["cat"]), b"piped\n").await;
        assert_eq!(out, b"piped\n");
        let (_, err, exit, _) = exec(req(&["sh", "-c", "echo oops >&2; exit 42"]), b"").await;
        assert_eq!(err, b"oops\n");
        assert_eq!(exit.unwrap().shell_code(), 42);
        let (_, _, exit, _) = exec(req(&["sh", "-c", "kill -TERM $$"]), b"").await;
        assert_eq!(exit.unwrap().shell_code(), 128 + 15);
        let (_, _, _, error) = exec(req(&["/nonexistent/cmd"]), b"").await;
        assert_eq!(error.unwrap().kind, ExecErrorKind::NotFound);
        let (_, _, _, error) = exec(req(&["/etc"]), b"").await;
        assert_eq!(error.unwrap().kind, ExecErrorKind::NotExecutable);
    }

    /// TCP stdin reaches the command as a blocking descriptor, so a reader
    /// that gets ahead of the sender waits instead of failing with EAGAIN.
    #[tokio::test]
    async fn tcp_stdin_is_blocking_for_the_command() {
        let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let mut r = req(&[
            "sh",
            "-c",
            "grep -q 'flags.*[4-7][0-7][0-7][0-7]$' /proc/self/fdinfo/0 && echo nonblocking; wc -c",
        ]);
        r.stdin = Stdin::Tcp {
            token: token.into(),
        };
        let (host, agent) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(agent, r));
        let (mut rd, _wr) = tokio::io::split(host);
        let port = match proto::read_msg(&mut rd, proto::MAX_MSG).await.unwrap() {
            Some((proto::PORT, d)) => u16::from_be_bytes([d[0], d[1]]),
            other => panic!("expected a port, got {other:?}"),
        };
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&token.as_bytes()[..32]).await.unwrap();
        // The agent proves it knows the rest of the token.
        let mut ack = [0u8; 33];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack[0], TCP_ACK);
        assert_eq!(&ack[1..], &token.as_bytes()[32..]);
        // Only once the command runs does data come, in pieces.
        assert!(matches!(
            proto::read_msg(&mut rd, proto::MAX_MSG).await.unwrap(),
            Some((proto::STARTED, _))
        ));
        for _ in 0..4 {
            s.write_all(&[7u8; 1000]).await.unwrap();
            s.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        s.shutdown().await.unwrap();
        let (mut out, mut exit) = (Vec::new(), None);
        while let Some((k, d)) = proto::read_msg(&mut rd, proto::MAX_MSG).await.unwrap() {
            match k {
                proto::STDOUT => out.extend(d),
                proto::EXIT => exit = Some(serde_json::from_slice::<ExitStatus>(&d).unwrap()),
                _ => {}
            }
        }
        assert_eq!(String::from_utf8_lossy(&out).trim(), "4000");
        assert_eq!(exit.unwrap().shell_code(), 0);
    }

    #[tokio::test]
    async fn a_background_process_does_not_hold_the_exit_back() {
        let t = std::time::Instant::now();
        let (_, _, exit, _) = exec(req(&["sh", "-c", "sleep 30 & echo started"]), b"").await;
        assert_eq!(exit.unwrap().shell_code(), 0);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
