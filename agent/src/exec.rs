//! The exec fast path: run a command in the guest with its stdin streamed in
//! and its stdout, stderr and exit status streamed out, over vsock port
//! [`EXEC_PORT`] (no SSH, no encryption: vsock is local to the host).
//!
//! Client → agent: one JSON [`ExecRequest`] line, then frames.
//! Agent → client: frames. A frame is `kind: u8`, `len: u32` big-endian,
//! `len` bytes.

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

/// Largest frame either side sends.
pub const MAX_FRAME: usize = 1 << 20;

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
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
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::piped())
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
