//! The agent's exec fast path (vsock port 1025): stdin streamed in,
//! stdout/stderr/exit streamed out, no SSH. Used for workspace transfers.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use banger_agent::exec::{header, ERROR, EXIT, MAX_FRAME, PORT, STDERR, STDIN, STDIN_EOF, STDOUT};
pub use banger_agent::exec::{ExecRequest, EXEC_PORT};

use super::agent::{connect, AgentError};
use crate::protocol::cli::Event;

/// Reads one frame from the agent.
async fn read_frame(rd: &mut tokio::net::unix::OwnedReadHalf) -> Result<(u8, Vec<u8>), AgentError> {
    let mut hdr = [0u8; 5];
    if rd.read_exact(&mut hdr).await.is_err() {
        return Err(AgentError::Protocol(
            "the guest closed the exec stream before the exit status".into(),
        ));
    }
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if len > MAX_FRAME {
        return Err(AgentError::Protocol(format!("exec frame of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    rd.read_exact(&mut data).await?;
    Ok((hdr[0], data))
}

/// How long to wait for the agent's [`PORT`] frame; an agent from before
/// TCP stdin sends none, and then stdin goes over vsock.
const PORT_WAIT: Duration = Duration::from_secs(5);

/// Runs `req` in the guest. `stdin` (if any) is streamed in chunk by chunk
/// (never held whole): over TCP to `tcp_to` (the guest's address) when
/// given and the agent supports it, else over vsock. Output goes to
/// `events`. Returns the exit status.
pub async fn run<R>(
    uds: &Path,
    req: &ExecRequest,
    stdin: Option<R>,
    tcp_to: Option<IpAddr>,
    events: &mpsc::Sender<Event>,
) -> Result<i32, AgentError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut req = req.clone();
    let token = (stdin.is_some() && tcp_to.is_some()).then(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    });
    req.stdin_tcp = token.clone();
    let conn = connect(uds, EXEC_PORT).await?;
    if !conn.buffer().is_empty() {
        return Err(AgentError::Protocol(
            "unexpected data before the exec request".into(),
        ));
    }
    let (mut rd, mut wr) = conn.into_inner().into_split();
    let mut line = serde_json::to_vec(&req).map_err(|e| AgentError::Protocol(e.to_string()))?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    // With a token, the agent answers with the port to send stdin to.
    let mut first: Option<(u8, Vec<u8>)> = None;
    let mut tcp: Option<TcpStream> = None;
    if let (Some(token), Some(ip)) = (&token, tcp_to) {
        match tokio::time::timeout(PORT_WAIT, read_frame(&mut rd)).await {
            Ok(Ok((PORT, d))) if d.len() == 2 => {
                let port = u16::from_be_bytes([d[0], d[1]]);
                let mut s = tokio::time::timeout(PORT_WAIT, TcpStream::connect((ip, port)))
                    .await
                    .map_err(|_| AgentError::Timeout(PORT_WAIT))?
                    .map_err(|e| AgentError::Connect(format!("{ip}:{port}"), e))?;
                s.set_nodelay(true)?;
                s.write_all(token.as_bytes()).await?;
                tcp = Some(s);
            }
            Ok(Ok(frame)) => first = Some(frame),
            Ok(Err(e)) => return Err(e),
            Err(_) => tracing::debug!("the agent offers no TCP stdin; using vsock"),
        }
    }
    let feeder = tokio::spawn(async move {
        if let Some(mut input) = stdin {
            match tcp {
                Some(mut s) => {
                    tokio::io::copy(&mut input, &mut s).await?;
                    s.shutdown().await?;
                }
                None => {
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
            }
        }
        wr.write_all(&header(STDIN_EOF, 0)).await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let code = loop {
        let (kind, data) = match first.take() {
            Some(f) => f,
            None => match read_frame(&mut rd).await {
                Ok(f) => f,
                Err(e) => {
                    feeder.abort();
                    return Err(e);
                }
            },
        };
        match kind {
            STDOUT => {
                let _ = events.send(Event::Stdout(data)).await;
            }
            STDERR => {
                let _ = events.send(Event::Stderr(data)).await;
            }
            EXIT if data.len() == 4 => {
                break i32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            ERROR => {
                feeder.abort();
                return Err(AgentError::Protocol(
                    String::from_utf8_lossy(&data).into_owned(),
                ));
            }
            k => {
                feeder.abort();
                return Err(AgentError::Protocol(format!("unknown exec frame kind {k}")));
            }
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
    let code = run(uds, req, None::<tokio::io::Empty>, None, &tx).await;
    drop(tx);
    let (out, err) = collect.await.unwrap_or_default();
    Ok((code?, out, err))
}
