//! The host's end of a VM's agent channel: one [`AgentSession`] per running
//! VM, connected to QEMU's virtio-serial chardev socket or to Firecracker's
//! hybrid vsock socket, carrying yamux streams (`banger_agent::channel`,
//! `banger_agent::mux`). The session reconnects on its own (a guest agent
//! restart, a daemon restart, a restored snapshot); callers open a stream
//! per request and wait (bounded) while it is down.
//!
//! Everything the guest sends is bounded: each message in size
//! (`banger_agent::proto::MAX_MSG` at most, less where a reply is small),
//! each call in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

pub use banger_agent::api::{Ack, GuestStats, Healthz, HostKey, Port};
use banger_agent::channel::{self, Frame, FrameReader, SessionEnd};
use banger_agent::mux::{self, OpenRequest, Stream};
use banger_agent::proto::{self, Pong, Request};

/// Agent failures.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent channel is down: {0}")]
    Down(String),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer from the agent: {0}")]
    Protocol(String),
    #[error("the agent refused: {0}")]
    Refused(String),
    /// The guest stopped answering while a command ran in it.
    #[error("the guest stopped answering: its agent was silent for {0:?} (a busy command never causes this: the agent answers beside it)")]
    Unresponsive(Duration),
}

/// How long a guest may be silent while a command runs in it before the
/// command is given up (`Timeouts::unresponsive` sets it per daemon).
pub const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(60);

/// Where a VM's agent is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChannel {
    /// QEMU: the Unix socket of the virtio-serial port's chardev.
    Serial(PathBuf),
    /// Firecracker: the hybrid vsock Unix socket (`CONNECT <port>`).
    Vsock(PathBuf),
}

/// The state of the link, for `vm show` and waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not (yet) up; why the last attempt failed.
    Connecting { attempts: u32, last_error: String },
    /// A session runs; how many sessions this link has had.
    Up { sessions: u32 },
}

struct Inner {
    opens: mpsc::Sender<OpenRequest>,
    link: watch::Receiver<Link>,
    task: tokio::task::AbortHandle,
    channel: AgentChannel,
    /// Milliseconds of silence after which a running command is given up.
    unresponsive_ms: std::sync::atomic::AtomicU64,
    /// When the session started, and when the guest was last heard from
    /// (ms after `born`): an answer, an exec frame, stdin it took.
    born: std::time::Instant,
    heard_ms: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A VM's agent session (cheap to clone; the last clone closes it).
#[derive(Clone)]
pub struct AgentSession(Arc<Inner>);

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentSession({:?}, {:?})", self.0.channel, self.link())
    }
}

/// Largest answer to a small request (health, ping, ack).
const SMALL: usize = 64 << 10;

async fn connect(channel: &AgentChannel) -> Result<UnixStream, String> {
    match channel {
        AgentChannel::Serial(p) => UnixStream::connect(p)
            .await
            .map_err(|e| format!("{}: {e}", p.display())),
        AgentChannel::Vsock(p) => {
            let s = UnixStream::connect(p)
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?;
            let mut r = BufReader::new(s);
            r.get_mut()
                .write_all(format!("CONNECT {}\n", channel::VSOCK_PORT).as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            let mut limited = (&mut r).take(64);
            let read = limited.read_line(&mut line);
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok(_)) if line.starts_with("OK ") => {}
                Ok(_) => {
                    return Err(format!(
                        "the guest refused vsock port {}",
                        channel::VSOCK_PORT
                    ))
                }
                Err(_) => return Err("no answer to CONNECT".into()),
            }
            if !r.buffer().is_empty() {
                return Err("unexpected data after CONNECT".into());
            }
            Ok(r.into_inner())
        }
    }
}

/// HELLO until the matching ACK (the guest may still be booting: QEMU
/// holds what we write until the guest opens the port).
async fn handshake<R, W>(rd: &mut FrameReader<R>, wr: &mut W, id: u64) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    loop {
        channel::write_frame(wr, &Frame::Hello(id))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            match tokio::time::timeout_at(deadline, rd.next()).await {
                Err(_) => break,
                Ok(Ok(Frame::Ack(got))) if got == id => return Ok(()),
                // An old session's data, an ACK of another, a RESET: skip.
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("the channel closed: {e}")),
            }
        }
    }
}

async fn drive(
    channel: AgentChannel,
    mut opens: mpsc::Receiver<OpenRequest>,
    link: watch::Sender<Link>,
) {
    use rand::RngExt;
    let (mut attempts, mut sessions) = (0u32, 0u32);
    let mut delay = Duration::from_millis(10);
    loop {
        attempts += 1;
        let why = match connect(&channel).await {
            Err(e) => e,
            Ok(conn) => {
                let (rd, mut wr) = tokio::io::split(conn);
                let mut rd = FrameReader::new(rd);
                let id: u64 = rand::rng().random();
                match handshake(&mut rd, &mut wr, id).await {
                    Err(e) => e,
                    Ok(()) => {
                        sessions += 1;
                        delay = Duration::from_millis(10);
                        let _ = link.send(Link::Up { sessions });
                        let (ours, theirs) = tokio::io::duplex(256 << 10);
                        tokio::select! {
                            why = mux::run_client(ours, &mut opens) => why,
                            end = channel::pump(&mut rd, &mut wr, theirs, id) => match end {
                                SessionEnd::Restart(_) => "the agent restarted".into(),
                                SessionEnd::Closed(e) => format!("the channel closed: {e}"),
                                SessionEnd::Local => "the session ended".into(),
                            },
                        }
                    }
                }
            }
        };
        if opens.is_closed() {
            return;
        }
        let _ = link.send(Link::Connecting {
            attempts,
            last_error: why,
        });
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

impl AgentSession {
    /// Starts connecting (and keeps reconnecting) to `channel`.
    pub fn start(channel: AgentChannel) -> AgentSession {
        let (opens, rx) = mpsc::channel(64);
        let (tx, link) = watch::channel(Link::Connecting {
            attempts: 0,
            last_error: "not connected yet".into(),
        });
        let task = tokio::spawn(drive(channel.clone(), rx, tx)).abort_handle();
        AgentSession(Arc::new(Inner {
            opens,
            link,
            task,
            channel,
            unresponsive_ms: (UNRESPONSIVE_AFTER.as_millis() as u64).into(),
            born: std::time::Instant::now(),
            heard_ms: 0.into(),
        }))
    }

    pub fn channel(&self) -> &AgentChannel {
        &self.0.channel
    }

    /// Whether the task driving the session has ended (it panicked or was
    /// killed): nothing will reconnect it; its owner starts a new one.
    pub fn is_dead(&self) -> bool {
        self.0.opens.is_closed()
    }

    /// Test hook: kills the task driving the session, as a crash would.
    pub fn kill_task(&self) {
        self.0.task.abort();
    }

    /// How long the guest may be silent while a command runs.
    pub fn unresponsive_after(&self) -> Duration {
        Duration::from_millis(
            self.0
                .unresponsive_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn set_unresponsive_after(&self, d: Duration) -> &Self {
        self.0
            .unresponsive_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The guest did something that needs it alive (answered, sent an
    /// exec frame, took stdin).
    pub fn heard(&self) {
        let now = self.0.born.elapsed().as_millis() as u64;
        self.0
            .heard_ms
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the guest was last heard from (since the session
    /// started, when never).
    pub fn silent(&self) -> Duration {
        let heard = self.0.heard_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.0
            .born
            .elapsed()
            .saturating_sub(Duration::from_millis(heard))
    }

    pub fn link(&self) -> Link {
        self.0.link.borrow().clone()
    }

    /// Waits until a session is up.
    pub async fn wait_up(&self, timeout: Duration) -> Result<(), AgentError> {
        let mut rx = self.0.link.clone();
        let up = async move {
            rx.wait_for(|l| matches!(l, Link::Up { .. }))
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(timeout, up).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AgentError::Down("the session was closed".into())),
            Err(_) => Err(match self.link() {
                Link::Connecting { last_error, .. } => AgentError::Down(last_error),
                Link::Up { .. } => AgentError::Timeout(timeout),
            }),
        }
    }

    /// A new stream (waiting up to `timeout` for the session).
    pub async fn open(&self, timeout: Duration) -> Result<Stream, AgentError> {
        let (tx, rx) = oneshot::channel();
        let go = async {
            self.0
                .opens
                .send(tx)
                .await
                .map_err(|_| AgentError::Down("the session was closed".into()))?;
            match rx.await {
                Ok(r) => r.map_err(AgentError::Io),
                Err(_) => Err(AgentError::Down(match self.link() {
                    Link::Connecting { last_error, .. } => last_error,
                    Link::Up { .. } => "the session ended".into(),
                })),
            }
        };
        tokio::time::timeout(timeout, go)
            .await
            .map_err(|_| match self.link() {
                Link::Connecting { last_error, .. } => AgentError::Down(last_error),
                Link::Up { .. } => AgentError::Timeout(timeout),
            })?
    }

    /// One request and its JSON answer (at most `max` bytes), within `timeout`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        req: &Request,
        timeout: Duration,
        max: usize,
    ) -> Result<T, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.open(timeout).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let exchange = async {
            proto::write_json(&mut s, proto::REQUEST, req).await?;
            match proto::read_msg(&mut s, max).await? {
                Some((proto::RESPONSE, d)) => {
                    self.heard();
                    let r: Result<T, String> = serde_json::from_slice(&d)
                        .map_err(|e| AgentError::Protocol(e.to_string()))?;
                    r.map_err(AgentError::Refused)
                }
                Some((k, _)) => Err(AgentError::Protocol(format!("unexpected message kind {k}"))),
                None => Err(AgentError::Protocol(
                    "the stream ended without an answer".into(),
                )),
            }
        };
        tokio::time::timeout(left, exchange)
            .await
            .map_err(|_| AgentError::Timeout(timeout))?
    }

    /// The round trip of a request that does nothing.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, AgentError> {
        let t = Instant::now();
        let _: Pong = self.call(&Request::Ping, timeout, SMALL).await?;
        Ok(t.elapsed())
    }

    pub async fn health(&self, timeout: Duration) -> Result<Healthz, AgentError> {
        self.call(&Request::Health, timeout, SMALL).await
    }

    pub async fn host_keys(&self, timeout: Duration) -> Result<Vec<HostKey>, AgentError> {
        self.call(&Request::HostKeys, timeout, SMALL).await
    }

    pub async fn ports(&self, timeout: Duration) -> Result<Vec<Port>, AgentError> {
        self.call(&Request::Ports, timeout, proto::MAX_MSG).await
    }

    pub async fn poweroff(&self, timeout: Duration) -> Result<Ack, AgentError> {
        self.call(&Request::Poweroff, timeout, SMALL).await
    }

    pub async fn stats(&self, timeout: Duration) -> Result<GuestStats, AgentError> {
        self.call(&Request::Stats, timeout, SMALL).await
    }

    /// Waits (the guest bounds it by `wait`) until the guest is ready for
    /// commands and, with `settled`, until its boot is over.
    pub async fn ready(
        &self,
        settled: bool,
        ssh: bool,
        wait: Duration,
    ) -> Result<banger_agent::api::Readiness, AgentError> {
        let req = Request::Ready {
            settled,
            wait_ms: wait.as_millis() as u64,
            ssh,
        };
        // The answer comes when the guest is ready or its wait is over.
        self.call(&req, wait + Duration::from_secs(10), SMALL).await
    }

    /// A restored clone takes its own identity.
    /// Gives the guest new name servers (its NAT switched on or off).
    pub async fn set_dns(
        &self,
        servers: Vec<std::net::Ipv4Addr>,
        timeout: Duration,
    ) -> Result<Ack, AgentError> {
        self.call(&Request::Dns { servers }, timeout, SMALL).await
    }

    pub async fn reidentify(
        &self,
        id: banger_agent::proto::Identity,
        timeout: Duration,
    ) -> Result<Ack, AgentError> {
        self.call(&Request::Reidentify(id), timeout, SMALL).await
    }
}

/// The channel of a VM driven by `kind`, under its runtime paths.
pub fn channel_of(kind: crate::domain::VmmKind, paths: &crate::paths::VmPaths) -> AgentChannel {
    match kind {
        crate::domain::VmmKind::Qemu => AgentChannel::Serial(paths.agent_socket()),
        crate::domain::VmmKind::Firecracker => AgentChannel::Vsock(paths.vsock_socket()),
    }
}

/// Whether `p` looks like a socket path of this channel (for tests).
pub fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Serves the agent protocol on a Unix socket, as QEMU's chardev would
    /// carry it (one connection at a time).
    async fn fake_agent(path: PathBuf) -> tokio::task::JoinHandle<()> {
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let (c, _) = l.accept().await.unwrap();
                let (rd, wr) = tokio::io::split(c);
                let state = Arc::new(banger_agent::serve::AgentState {
                    setup_errors: vec![],
                    init: "test".into(),
                    ready: banger_agent::ready::Hook::None,
                    host_keys: Default::default(),
                });
                banger_agent::serve::serve_channel(rd, wr, state).await;
            }
        })
    }

    #[tokio::test]
    async fn a_session_comes_up_and_answers_and_survives_a_reconnect() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let s = AgentSession::start(AgentChannel::Serial(sock.clone()));
        // Nothing listens yet: the session waits.
        assert!(s.health(Duration::from_millis(200)).await.is_err());
        let agent = fake_agent(sock.clone()).await;
        s.wait_up(Duration::from_secs(5)).await.unwrap();
        let h = s.health(Duration::from_secs(5)).await.unwrap();
        assert_eq!(h.protocol, proto::VERSION);
        assert!(s.ping(Duration::from_secs(5)).await.unwrap() < Duration::from_secs(1));
        // The agent goes away and comes back: the session reconnects.
        agent.abort();
        let _ = agent.await;
        std::fs::remove_file(&sock).unwrap();
        let _agent = fake_agent(sock.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match s.ping(Duration::from_secs(1)).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
            }
        }
        assert!(matches!(s.link(), Link::Up { sessions } if sessions >= 2));
    }

    #[tokio::test]
    async fn a_guest_that_never_acknowledges_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        // Accepts and swallows everything, answers nothing.
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut c, &mut sink).await;
        });
        let s = AgentSession::start(AgentChannel::Serial(sock));
        let t = Instant::now();
        assert!(s.health(Duration::from_millis(800)).await.is_err());
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
