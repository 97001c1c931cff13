//! The agent's exec fast path (vsock port 1025): stdin streamed in,
//! stdout/stderr/exit streamed out, no SSH. Used for workspace transfers.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use banger_agent::exec::{header, ERROR, EXIT, MAX_FRAME, STDERR, STDIN, STDIN_EOF, STDOUT};
pub use banger_agent::exec::{ExecRequest, EXEC_PORT};

use super::agent::{connect, AgentError};
use crate::protocol::cli::Event;

/// Runs `req` in the guest. `stdin` (if any) is streamed in chunk by chunk
/// (never held whole); output goes to `events`. Returns the exit status.
pub async fn run<R>(
    uds: &Path,
    req: &ExecRequest,
    stdin: Option<R>,
    events: &mpsc::Sender<Event>,
) -> Result<i32, AgentError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let conn = connect(uds, EXEC_PORT).await?;
    if !conn.buffer().is_empty() {
        return Err(AgentError::Protocol(
            "unexpected data before the exec request".into(),
        ));
    }
    let (mut rd, mut wr) = conn.into_inner().into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| AgentError::Protocol(e.to_string()))?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    let feeder = tokio::spawn(async move {
        if let Some(mut input) = stdin {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                wr.write_all(&header(STDIN, n)).await?;
                wr.write_all(&buf[..n]).await?;
            }
        }
        wr.write_all(&header(STDIN_EOF, 0)).await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut hdr = [0u8; 5];
    let mut data = Vec::new();
    let code = loop {
        if rd.read_exact(&mut hdr).await.is_err() {
            feeder.abort();
            return Err(AgentError::Protocol(
                "the guest closed the exec stream before the exit status".into(),
            ));
        }
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        if len > MAX_FRAME {
            return Err(AgentError::Protocol(format!("exec frame of {len} bytes")));
        }
        data.resize(len, 0);
        rd.read_exact(&mut data).await?;
        match hdr[0] {
            STDOUT => {
                let _ = events.send(Event::Stdout(data.clone())).await;
            }
            STDERR => {
                let _ = events.send(Event::Stderr(data.clone())).await;
            }
            EXIT if len == 4 => break i32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            ERROR => {
                return Err(AgentError::Protocol(
                    String::from_utf8_lossy(&data).into_owned(),
                ))
            }
            k => return Err(AgentError::Protocol(format!("unknown exec frame kind {k}"))),
        }
    };
    // The command may exit before reading all its input; that is its business.
    let _ = feeder.await;
    Ok(code)
}

/// Runs `req` without stdin and returns (exit, stdout, stderr).
pub async fn output(uds: &Path, req: &ExecRequest) -> Result<(i32, Vec<u8>, Vec<u8>), AgentError> {
    let (tx, mut rx) = mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(e) = rx.recv().await {
            match e {
                Event::Stdout(d) => out.extend(d),
                Event::Stderr(d) => err.extend(d),
                _ => {}
            }
        }
        (out, err)
    });
    let code = run(uds, req, None::<tokio::io::Empty>, &tx).await;
    drop(tx);
    let (out, err) = collect.await.unwrap_or_default();
    Ok((code?, out, err))
}
