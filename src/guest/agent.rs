//! A client for `banger-agent`'s HTTP API over hybrid vsock.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use banger_agent::api::{Ack, Healthz, HostKey, Port, AGENT_PORT};

/// Agent call failures.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the vsock socket {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the guest refused vsock port {port}: {reply:?} (is banger-agent running?)")]
    Refused { port: u32, reply: String },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer from the agent: {0}")]
    Protocol(String),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
}

/// How long connecting and the `CONNECT`/`OK` handshake may take: a guest
/// that is up answers in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a stream to `port` in the guest through the hybrid vsock socket
/// (bounded by [`CONNECT_TIMEOUT`]).
pub async fn connect(uds: &Path, port: u32) -> Result<BufReader<UnixStream>, AgentError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_unbounded(uds, port))
        .await
        .map_err(|_| AgentError::Timeout(CONNECT_TIMEOUT))?
}

async fn connect_unbounded(uds: &Path, port: u32) -> Result<BufReader<UnixStream>, AgentError> {
    let mut s = UnixStream::connect(uds)
        .await
        .map_err(|e| AgentError::Connect(uds.display().to_string(), e))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if !line.starts_with("OK ") {
        return Err(AgentError::Refused {
            port,
            reply: line.trim().to_string(),
        });
    }
    Ok(r)
}

async fn request<T: DeserializeOwned>(
    uds: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<T, AgentError> {
    let fut = async {
        let mut r = connect(uds, AGENT_PORT).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: banger-agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        r.get_mut().write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await?;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let body_at = match resp
            .parse(&buf)
            .map_err(|e| AgentError::Protocol(e.to_string()))?
        {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => {
                return Err(AgentError::Protocol("truncated response".into()))
            }
        };
        let code = resp.code.unwrap_or(0);
        let body = &buf[body_at..];
        if code != 200 {
            return Err(AgentError::Protocol(format!(
                "{path}: HTTP {code}: {}",
                String::from_utf8_lossy(body)
            )));
        }
        serde_json::from_slice(body).map_err(|e| AgentError::Protocol(format!("{path}: {e}")))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| AgentError::Timeout(timeout))?
}

/// `GET path` and the decoded JSON body.
pub async fn get<T: DeserializeOwned>(
    uds: &Path,
    path: &str,
    timeout: Duration,
) -> Result<T, AgentError> {
    request(uds, "GET", path, timeout).await
}

/// `POST path` (no body) and the agent's acknowledgement.
pub async fn post(uds: &Path, path: &str, timeout: Duration) -> Result<Ack, AgentError> {
    request(uds, "POST", path, timeout).await
}

/// `GET /healthz`.
pub async fn healthz(uds: &Path, timeout: Duration) -> Result<Healthz, AgentError> {
    get(uds, "/healthz", timeout).await
}

/// `GET /ports`.
pub async fn ports(uds: &Path, timeout: Duration) -> Result<Vec<Port>, AgentError> {
    get(uds, "/ports", timeout).await
}
