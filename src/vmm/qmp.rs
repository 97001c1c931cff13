//! A minimal QMP client (QEMU's JSON control protocol over a Unix socket).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::VmmError;

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
        let mut line = String::new();
        if self.r.read_line(&mut line).await? == 0 {
            return Err(VmmError::Api("QMP connection closed".into()));
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Api(format!("bad QMP message: {e}")))
    }

    /// Runs a command and returns its `return` value (events are skipped).
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).map_err(|e| VmmError::Api(e.to_string()))?;
        line.push(b'\n');
        self.r.get_mut().write_all(&line).await?;
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
