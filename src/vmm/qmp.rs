//! A minimal QMP client (QEMU's JSON control protocol over a Unix socket).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::VmmError;

/// The longest QMP message read (a console ring read of 64 KiB is ~88 KB
/// of base64).
const MAX_LINE: u64 = 1 << 20;

/// A negotiated QMP session.
pub struct Qmp {
    r: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects and leaves capabilities negotiation.
    pub async fn connect(path: &Path) -> Result<Qmp, VmmError> {
        let s = UnixStream::connect(path).await?;
        let mut q = Qmp {
            r: BufReader::new(s),
        };
        let greeting = q.read_msg().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Api(format!(
                "unexpected QMP greeting: {greeting}"
            )));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value, VmmError> {
        use tokio::io::AsyncReadExt;
        let mut line = String::new();
        // Bounded: the VMM runs as the owner in a sandbox and must not be
        // able to make the daemon hold an endless line.
        if (&mut self.r).take(MAX_LINE).read_line(&mut line).await? == 0 {
            return Err(VmmError::Api("QMP connection closed".into()));
        }
        if !line.ends_with('\n') {
            return Err(VmmError::Api(format!(
                "a QMP message longer than {} KiB",
                MAX_LINE >> 10
            )));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Api(format!("bad QMP message: {e}")))
    }

    /// Runs a command and returns its `return` value (events are skipped).
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, VmmError> {
        let line = command_line(cmd, args)?;
        self.r.get_mut().write_all(&line).await?;
        self.answer(cmd).await
    }

    /// `getfd`: hands `fd` to QEMU under `name`, passed with the command
    /// (SCM_RIGHTS). Migration then uses `fd:<name>`.
    pub async fn send_fd(
        &mut self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), VmmError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let line = command_line("getfd", Some(json!({ "fdname": name })))?;
        let stream = self.r.get_ref();
        let raw = [fd.as_raw_fd()];
        let mut sent = 0;
        while sent < line.len() {
            stream.writable().await?;
            let r = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(&line[sent..])];
                // The descriptor goes with the first byte only.
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if sent == 0 { &cmsg } else { &[] };
                sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.answer("getfd").await.map(drop)
    }

    async fn answer(&mut self, cmd: &str) -> Result<Value, VmmError> {
        loop {
            let v = self.read_msg().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(VmmError::Api(format!("QMP {cmd}: {e}")));
            }
        }
    }
}

fn command_line(cmd: &str, args: Option<Value>) -> Result<Vec<u8>, VmmError> {
    let mut msg = json!({ "execute": cmd });
    if let Some(a) = args {
        msg["arguments"] = a;
    }
    let mut line = serde_json::to_vec(&msg).map_err(|e| VmmError::Api(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Waits for the migration QEMU runs (out or in) to end, polling
/// `query-migrate`; an error names QEMU's reason.
pub async fn wait_migration(q: &mut Qmp, timeout: Duration) -> Result<Value, VmmError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = q.execute("query-migrate", None).await?;
        match m.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(m),
            Some("failed") | Some("cancelled") => {
                return Err(VmmError::Api(format!(
                    "the VMM's migration failed: {}",
                    m.get("error-desc")
                        .and_then(|e| e.as_str())
                        .unwrap_or("no reason given")
                )))
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmmError::Timeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Connects once the socket accepts, within `timeout`.
pub async fn connect_within(path: &Path, timeout: Duration) -> Result<Qmp, VmmError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match Qmp::connect(path).await {
            Ok(q) => return Ok(q),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(VmmError::Api(format!(
                    "QMP at {} never answered: {e}",
                    path.display()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// `query-status`: `running`, `paused`, `shutdown`, ...
pub async fn status(path: &Path) -> Result<String, VmmError> {
    let mut q = Qmp::connect(path).await?;
    let r = q.execute("query-status", None).await?;
    Ok(r.get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown")
        .to_string())
}
