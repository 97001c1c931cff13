//! The exec fast path: run a command in the guest with its stdin streamed in
//! and its stdout, stderr and exit status streamed out, over vsock port
//! [`EXEC_PORT`] (no SSH, no encryption: vsock is local to the host).
//!
//! Client → agent: one JSON [`ExecRequest`] line, then frames.
//! Agent → client: frames. A frame is `kind: u8`, `len: u32` big-endian,
//! `len` bytes.
//!
//! Bulk input can come over TCP instead (`stdin_tcp`): vsock moves data in
//! 4 KiB packets, which under emulation is several times slower than
//! virtio-net. The agent then listens on an ephemeral TCP port, says which
//! in a [`PORT`] frame, and takes as the command's stdin the first
//! connection that presents the request's token (random, sent only over
//! vsock); other connections are closed.

use serde::{Deserialize, Serialize};

/// The vsock port of the exec service.
pub const EXEC_PORT: u32 = 1025;

/// Frame kinds.
pub const STDIN: u8 = 0;
pub const STDIN_EOF: u8 = 1;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Exit status: 4 bytes, i32 big-endian (128+signal when killed).
pub const EXIT: u8 = 3;
/// The command could not start: UTF-8 message.
pub const ERROR: u8 = 4;
/// The TCP port (u16 big-endian) to send stdin to (`stdin_tcp` requests).
pub const PORT: u8 = 5;

/// How long the agent waits for the stdin connection.
pub const TCP_ACCEPT_SECS: u64 = 30;

/// Largest frame either side sends.
pub const MAX_FRAME: usize = 1 << 20;

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Take stdin from a TCP connection that starts with this token
    /// (hex); vsock then carries only output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_tcp: Option<String>,
}

impl ExecRequest {
    /// A request for `argv` in `cwd`, nothing else.
    pub fn new(argv: Vec<String>, cwd: &str) -> ExecRequest {
        ExecRequest {
            argv,
            cwd: Some(cwd.into()),
            env: vec![],
            stdin_tcp: None,
        }
    }
}

/// Encodes a frame header.
pub fn header(kind: u8, len: usize) -> [u8; 5] {
    let l = (len as u32).to_be_bytes();
    [kind, l[0], l[1], l[2], l[3]]
}

#[cfg(target_os = "linux")]
pub mod server {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    use super::*;

    fn send(w: &Mutex<std::fs::File>, kind: u8, data: &[u8]) -> std::io::Result<()> {
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&header(kind, data.len()))?;
        w.write_all(data)?;
        w.flush()
    }

    fn pump(mut from: impl Read, to: Arc<Mutex<std::fs::File>>, kind: u8) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if send(&to, kind, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Listens on an ephemeral TCP port, reports it, and returns the first
    /// connection that presents `token` (positioned just after it).
    pub(crate) fn tcp_stdin(
        writer: &Mutex<std::fs::File>,
        token: &str,
    ) -> std::io::Result<std::net::TcpStream> {
        use std::time::{Duration, Instant};
        if token.len() < 32 {
            return Err(std::io::Error::other("token too short"));
        }
        let listener = std::net::TcpListener::bind(("0.0.0.0", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        send(writer, PORT, &port.to_be_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(TCP_ACCEPT_SECS);
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut got = vec![0u8; token.len()];
                    if s.read_exact(&mut got).is_ok() && got == token.as_bytes() {
                        s.set_read_timeout(None)?;
                        return Ok(s);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(std::io::Error::other("no connection with the token came"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves one exec connection to completion.
    pub fn handle(conn: std::fs::File) -> std::io::Result<()> {
        let writer = Arc::new(Mutex::new(conn.try_clone()?));
        let mut reader = BufReader::with_capacity(256 << 10, conn);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let req: ExecRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return send(&writer, ERROR, format!("bad exec request: {e}").as_bytes()),
        };
        let Some((prog, args)) = req.argv.split_first() else {
            return send(&writer, ERROR, b"empty command");
        };
        let tcp_stdin = match &req.stdin_tcp {
            None => None,
            Some(token) => match tcp_stdin(&writer, token) {
                Ok(s) => Some(s),
                Err(e) => return send(&writer, ERROR, format!("stdin over TCP: {e}").as_bytes()),
            },
        };
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(match tcp_stdin {
                Some(s) => Stdio::from(std::os::fd::OwnedFd::from(s)),
                None => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .envs(req.env.iter().cloned());
        if let Some(d) = &req.cwd {
            cmd.current_dir(d);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return send(&writer, ERROR, format!("cannot run {prog}: {e}").as_bytes()),
        };
        let mut stdin = child.stdin.take();
        let input = std::thread::spawn(move || {
            let mut hdr = [0u8; 5];
            let mut buf = vec![0u8; 256 << 10];
            loop {
                if reader.read_exact(&mut hdr).is_err() {
                    break;
                }
                let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
                if hdr[0] == STDIN_EOF || len > MAX_FRAME {
                    break;
                }
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                if reader.read_exact(&mut buf[..len]).is_err() {
                    break;
                }
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&buf[..len]).is_err() {
                        stdin = None;
                    }
                }
            }
            drop(stdin);
        });
        let out = child.stdout.take().map(|o| {
            let w = writer.clone();
            std::thread::spawn(move || pump(o, w, STDOUT))
        });
        let err = child.stderr.take().map(|e| {
            let w = writer.clone();
            std::thread::spawn(move || pump(e, w, STDERR))
        });
        let status = child.wait()?;
        for t in [out, err].into_iter().flatten() {
            let _ = t.join();
        }
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        send(&writer, EXIT, &code.to_be_bytes())?;
        drop(input);
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn tcp_stdin_takes_only_the_connection_with_the_token() {
        // The PORT frame goes to a file we read back.
        let path = std::env::temp_dir().join(format!("agent-port-{}", std::process::id()));
        let f = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut reader = f.try_clone().unwrap();
        let writer = Mutex::new(f);
        let token = "0123456789abcdef0123456789abcdef".to_string();
        let t2 = token.clone();
        let accepted = std::thread::spawn(move || {
            let mut s = server::tcp_stdin(&writer, &t2).unwrap();
            let mut rest = String::new();
            s.read_to_string(&mut rest).unwrap();
            rest
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut frame = Vec::new();
        while frame.len() < 7 {
            assert!(std::time::Instant::now() < deadline, "no PORT frame");
            frame.clear();
            reader.rewind().unwrap();
            reader.read_to_end(&mut frame).unwrap();
        }
        assert_eq!(frame[..5], header(PORT, 2));
        let port = u16::from_be_bytes([frame[5], frame[6]]);
        // A wrong token: closed, and not used as stdin.
        let mut bad = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        bad.write_all(b"ffffffffffffffffffffffffffffffff intruder")
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(bad.read(&mut buf).unwrap_or(0), 0, "closed on us");
        let mut good = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        good.write_all(format!("{token}payload").as_bytes())
            .unwrap();
        drop(good);
        assert_eq!(accepted.join().unwrap(), "payload");
        let _ = std::fs::remove_file(&path);
    }
}
