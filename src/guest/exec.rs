//! Running a command in a guest through its agent session: stdin from the
//! caller (a stream of inputs, or bulk data over a one-shot TCP connection
//! to the guest's address), stdout and stderr streamed to events with
//! backpressure, signals and terminal resizes forwarded, the exit status or
//! the reason it could not run.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::session::{AgentError, AgentSession};
use banger_agent::proto::{self, Request};
pub use banger_agent::proto::{ExecError, ExecErrorKind, ExecRequest, ExitStatus, Stdin, Tty};

use crate::domain::{Event, Input};

/// How long the agent may take to start the command (or report the port
/// for TCP stdin).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(ExitStatus),
    /// It could not be started (127: not found, 126: cannot run).
    Failed(ExecError),
}

impl Outcome {
    /// The exit code `docker run` would give.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exited(s) => s.shell_code(),
            Outcome::Failed(e) => e.kind.exit_code(),
        }
    }
}

/// Where stdin comes from.
pub enum Feed<R> {
    None,
    /// Inputs from the caller (bytes, EOF, signals, resizes).
    Inputs(mpsc::Receiver<Input>),
    /// Bulk data over TCP to the guest's address.
    Tcp(IpAddr, R),
    /// Inputs from the caller, their bytes over TCP to the guest's address
    /// (bulk stdin never rides the agent channel's flow control: a 100 MB
    /// stream there was seen to stall for good), signals on the stream.
    InputsTcp(IpAddr, mpsc::Receiver<Input>),
}

fn signal_frame(s: crate::domain::Signal) -> [u8; 4] {
    s.number().to_be_bytes()
}

/// Runs `req` (its `stdin` is set from `feed`), sending output to `events`.
pub async fn run<R>(
    session: &AgentSession,
    mut req: ExecRequest,
    feed: Feed<R>,
    events: &mpsc::Sender<Event>,
) -> Result<Outcome, AgentError>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    // A command whose stdin port went away with its agent (the session
    // changed before the host connected) never ran: it is asked for once
    // more, on the new session.
    let mut again = true;
    let (mut rd, wr, stdin) = loop {
        let token = match &feed {
            Feed::Tcp(..) | Feed::InputsTcp(..) => {
                let bytes: [u8; 32] = rand::random();
                let t: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                req.stdin = Stdin::Tcp { token: t.clone() };
                Some(t)
            }
            Feed::Inputs(_) => {
                req.stdin = Stdin::Stream;
                None
            }
            Feed::None => {
                req.stdin = Stdin::Null;
                None
            }
        };
        let stream = session.open(START_TIMEOUT).await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        proto::write_json(&mut wr, proto::REQUEST, &Request::Exec(req.clone())).await?;
        let port = match first_frame(&mut rd).await? {
            // A command that could not start is an answer, not a failure.
            First::Failed(e) => return Ok(Outcome::Failed(e)),
            First::Port(p) => Some(p),
            First::Started => None,
        };
        let ip = match &feed {
            Feed::Tcp(ip, _) | Feed::InputsTcp(ip, _) => *ip,
            _ => break (rd, wr, None),
        };
        match connect_stdin(session, ip, port, token).await {
            Ok(s) => break (rd, wr, Some(s)),
            Err(StdinFailure::Gone(why)) if again => {
                tracing::warn!("{why}; asking again");
                again = false;
            }
            Err(StdinFailure::Gone(why)) => return Err(AgentError::Protocol(why)),
            Err(StdinFailure::Other(e)) => return Err(e),
        }
    };
    let feeder = spawn_feeder(feed, wr, session, stdin);
    let result = stream_output(&mut rd, session, events);
    // The guest must keep answering while the command runs (the agent
    // answers beside it, however busy the command is): a silent one is
    // given up rather than waited on forever.
    let result = tokio::select! {
        r = result => r,
        silent = silent_for(session, session.unresponsive_after()) => {
            Err(AgentError::Unresponsive(silent))
        }
    };
    feeder.abort();
    result
}

/// The agent's first answer to an exec.
enum First {
    Port(u16),
    Started,
    Failed(ExecError),
}

/// Until STARTED (or PORT, or ERROR), bounded in time.
async fn first_frame<Rd: AsyncRead + Unpin>(rd: &mut Rd) -> Result<First, AgentError> {
    tokio::time::timeout(START_TIMEOUT, async {
        match proto::read_msg(rd, proto::MAX_MSG).await? {
            Some((proto::PORT, d)) if d.len() == 2 => {
                Ok(First::Port(u16::from_be_bytes([d[0], d[1]])))
            }
            Some((proto::STARTED, _)) => Ok(First::Started),
            Some((proto::ERROR, d)) => serde_json::from_slice(&d)
                .map(First::Failed)
                .map_err(|e| AgentError::Protocol(format!("exec error: {e}"))),
            Some((k, _)) => Err(AgentError::Protocol(format!("unexpected message kind {k}"))),
            None => Err(AgentError::Protocol(
                "the stream ended before the command started".into(),
            )),
        }
    })
    .await
    .map_err(|_| AgentError::Timeout(START_TIMEOUT))?
}

/// Feeds the command: stdin over TCP (bytes, EOF) or on the stream, the
/// caller's signals and resizes; keeps the write half open until aborted
/// (closing it would end the command).
fn spawn_feeder<R, W>(
    feed: Feed<R>,
    mut wr: W,
    session: &AgentSession,
    stdin: Option<tokio::net::TcpStream>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let no_stdin = || std::io::Error::other("the command's stdin connection is missing");
    match feed {
        Feed::Tcp(_, mut data) => {
            let Some(mut s) = stdin else {
                return tokio::spawn(async move { Err(no_stdin()) });
            };
            // The command then starts: its STARTED frame follows.
            tokio::spawn(async move {
                tokio::io::copy(&mut data, &mut s).await?;
                s.shutdown().await
            })
        }
        Feed::InputsTcp(_, mut rx) => {
            let Some(s) = stdin else {
                return tokio::spawn(async move { Err(no_stdin()) });
            };
            let session = session.clone();
            tokio::spawn(async move {
                let mut data = Some(s);
                while let Some(i) = rx.recv().await {
                    match i {
                        Input::Stdin(d) => {
                            if let Some(s) = data.as_mut() {
                                // A command that stopped reading: the rest
                                // of its input goes nowhere.
                                if s.write_all(&d).await.is_err() {
                                    data = None;
                                } else {
                                    session.heard();
                                }
                            }
                        }
                        Input::StdinEof => {
                            if let Some(mut s) = data.take() {
                                let _ = s.shutdown().await;
                            }
                        }
                        Input::Signal(sig) => {
                            proto::write_msg(&mut wr, proto::SIGNAL, &signal_frame(sig)).await?;
                            wr.flush().await?;
                        }
                        // No terminal on this path; not the command's.
                        Input::Resize { .. } | Input::PatchSaved { .. } => {}
                    }
                }
                // The caller is gone without an EOF: the command gets one.
                if let Some(mut s) = data.take() {
                    let _ = s.shutdown().await;
                }
                // Keep the write half open: closing it would end the command.
                std::future::pending::<std::io::Result<()>>().await
            })
        }
        Feed::Inputs(mut rx) => {
            let session = session.clone();
            tokio::spawn(async move {
                while let Some(i) = rx.recv().await {
                    let r = match i {
                        Input::Stdin(d) => proto::write_msg(&mut wr, proto::STDIN, &d).await,
                        Input::StdinEof => proto::write_msg(&mut wr, proto::STDIN_EOF, &[]).await,
                        Input::Signal(s) => {
                            proto::write_msg(&mut wr, proto::SIGNAL, &signal_frame(s)).await
                        }
                        Input::Resize { rows, cols } => {
                            let mut d = rows.to_be_bytes().to_vec();
                            d.extend(cols.to_be_bytes());
                            proto::write_msg(&mut wr, proto::RESIZE, &d).await
                        }
                        // Not the command's.
                        Input::PatchSaved { .. } => continue,
                    };
                    r?;
                    wr.flush().await?;
                    // Taken by the guest (the stream's window moved on).
                    session.heard();
                }
                // The caller is gone without an EOF: the command gets one.
                proto::write_msg(&mut wr, proto::STDIN_EOF, &[]).await?;
                wr.flush().await?;
                // Keep the write half open: closing it would end the command.
                std::future::pending::<std::io::Result<()>>().await
            })
        }
        Feed::None => tokio::spawn(async move {
            let _keep_open = wr;
            std::future::pending::<std::io::Result<()>>().await
        }),
    }
}

/// The command's output, streamed as events, until its exit status.
async fn stream_output<Rd: AsyncRead + Unpin>(
    rd: &mut Rd,
    session: &AgentSession,
    events: &mpsc::Sender<Event>,
) -> Result<Outcome, AgentError> {
    loop {
        let msg = proto::read_msg(rd, proto::MAX_MSG).await?;
        if msg.is_some() {
            session.heard();
        }
        match msg {
            Some((proto::STARTED, _)) | Some((proto::PORT, _)) => {}
            Some((proto::STDOUT, d)) => {
                let _ = events.send(Event::Stdout(d)).await;
            }
            Some((proto::STDERR, d)) => {
                let _ = events.send(Event::Stderr(d)).await;
            }
            Some((proto::EXIT, d)) => {
                let st: ExitStatus = serde_json::from_slice(&d)
                    .map_err(|e| AgentError::Protocol(format!("exit status: {e}")))?;
                return Ok(Outcome::Exited(st));
            }
            Some((proto::ERROR, d)) => {
                let e: ExecError = serde_json::from_slice(&d)
                    .map_err(|e| AgentError::Protocol(format!("exec error: {e}")))?;
                return Ok(Outcome::Failed(e));
            }
            Some((k, _)) => {
                return Err(AgentError::Protocol(format!("unexpected message kind {k}")))
            }
            None => {
                return Err(AgentError::Protocol(
                    "the guest closed the exec stream before the exit status".into(),
                ))
            }
        }
    }
}

/// The command's stdin connection: the port the agent offered, the token
/// first.
/// Why the command's stdin did not connect.
enum StdinFailure {
    /// The agent's session changed: the port went with the agent's exec,
    /// and the command never ran.
    Gone(String),
    Other(AgentError),
}

async fn connect_stdin(
    session: &AgentSession,
    ip: IpAddr,
    port: Option<u16>,
    token: Option<String>,
) -> Result<tokio::net::TcpStream, StdinFailure> {
    let (Some(port), Some(token)) = (port, token) else {
        return Err(StdinFailure::Other(AgentError::Protocol(
            "the agent offered no stdin port".into(),
        )));
    };
    // The port lives as long as the agent's exec that offered it: when the
    // session is re-established meanwhile (the agent restarted, its
    // channel closed), the port is gone and nothing ran.
    let link = session.link();
    // The agent accepts for 30 s and acknowledges the token; a connection
    // that gets no acknowledgement (it reached somewhere else, e.g. through
    // a stale neighbour entry right after a restore) is tried again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if session.link() != link {
            return Err(StdinFailure::Gone(format!(
                "the guest's agent session changed ({:?}, was {link:?}) before the command started, and its stdin port {port} with it; the command did not run: retry",
                session.link()
            )));
        }
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
            s.set_nodelay(true)?;
            // The first half goes out; the guest's agent answers with the
            // second, which only it has (it came over the VM's channel):
            // whoever else answers at this address gets nothing to send.
            let (ask, answer) = token.split_at(token.len() / 2);
            s.write_all(ask.as_bytes()).await?;
            let mut ack = vec![0u8; 1 + answer.len()];
            s.read_exact(&mut ack).await?;
            if ack[0] != banger_agent::exec::TCP_ACK || &ack[1..] != answer.as_bytes() {
                return Err(std::io::Error::other(
                    "a wrong acknowledgement (not this VM's agent)",
                ));
            }
            Ok::<_, std::io::Error>(s)
        };
        match tokio::time::timeout(Duration::from_secs(4), attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no acknowledgement within 4s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(StdinFailure::Other(AgentError::Protocol(format!(
        "the guest's stdin port {port} at {ip} did not take the connection: {last} (the agent's session: {:?} when the port was offered, {:?} now)",
        link,
        session.link()
    ))))
}

/// How often a running command's guest is asked whether it answers.
const ALIVE_EVERY: Duration = Duration::from_secs(2);

/// Resolves once the guest has not been heard from for `bound`: no answer
/// on its session (the VM's guest watch pings it every 2 s when nothing
/// else was heard), no exec frame, no stdin taken. It opens no stream of
/// its own: pings that time out beside a saturated transfer (streams
/// opened and dropped under it) were seen to wedge the session.
pub async fn silent_for(session: &AgentSession, bound: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        // Counted from this command's start at the earliest.
        let silent = session.silent().min(started.elapsed());
        if silent >= bound {
            return silent;
        }
        tokio::time::sleep(ALIVE_EVERY / 2).await;
    }
}

/// Runs `req` without stdin and returns (outcome, stdout, stderr), each kept
/// to its last `keep` bytes.
pub async fn output(
    session: &AgentSession,
    req: ExecRequest,
    keep: usize,
) -> Result<(Outcome, Vec<u8>, Vec<u8>), AgentError> {
    let (tx, mut rx) = mpsc::channel(64);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Tail::new(keep), Tail::new(keep));
        while let Some(e) = rx.recv().await {
            match e {
                Event::Stdout(d) => out.push(&d),
                Event::Stderr(d) => err.push(&d),
                _ => {}
            }
        }
        (out.0, err.0)
    });
    let r = run(session, req, Feed::<tokio::io::Empty>::None, &tx).await;
    drop(tx);
    let (out, err) = collect.await.unwrap_or_default();
    Ok((r?, out, err))
}

/// The last `cap` bytes of a stream.
pub struct Tail(pub Vec<u8>, usize);

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail(Vec::new(), cap)
    }
    pub fn push(&mut self, d: &[u8]) {
        self.0.extend_from_slice(d);
        if self.0.len() > self.1 {
            let cut = self.0.len() - self.1;
            self.0.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::session::AgentChannel;
    use std::time::Instant;

    /// A channel whose first `dying` agents each offer a stdin port and go
    /// away (restarted) before the host connects; then a real agent.
    async fn restarting_agents(sock: &std::path::Path, dying: usize) {
        let l = tokio::net::UnixListener::bind(sock).unwrap();
        // A port nothing listens on (bound, then closed).
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        tokio::spawn(async move {
            for _ in 0..dying {
                let (c, _) = l.accept().await.unwrap();
                let (rd, wr) = tokio::io::split(c);
                let (offered, mut gone) = mpsc::channel::<()>(1);
                let serve = banger_agent::serve::serve_channel_with(rd, wr, move |mut stream| {
                    let offered = offered.clone();
                    tokio::spawn(async move {
                        let _ = proto::read_msg(&mut stream, proto::MAX_MSG).await;
                        let _ =
                            proto::write_msg(&mut stream, proto::PORT, &dead.to_be_bytes()).await;
                        let _ = stream.flush().await;
                        // The agent dies a moment after offering its port
                        // (the frame is on its way to the host by then).
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = offered.send(()).await;
                    });
                });
                tokio::select! {
                    _ = serve => {}
                    _ = gone.recv() => {}
                }
            }
            let (c, _) = l.accept().await.unwrap();
            let (rd, wr) = tokio::io::split(c);
            let state = std::sync::Arc::new(banger_agent::serve::AgentState {
                setup_errors: vec![],
                init: "test".into(),
                ready: banger_agent::ready::Hook::None,
                host_keys: Default::default(),
            });
            banger_agent::serve::serve_channel(rd, wr, state).await;
        });
    }

    async fn exec_with_tcp_stdin(s: &AgentSession) -> Result<Outcome, AgentError> {
        let (input, rx) = mpsc::channel(1);
        input.send(Input::StdinEof).await.unwrap();
        let (events, _seen) = mpsc::channel(16);
        let feed = Feed::<tokio::io::Empty>::InputsTcp("127.0.0.1".parse().unwrap(), rx);
        let req = ExecRequest::new(vec!["true".into()], "/");
        run(s, req, feed, &events).await
    }

    /// The agent restarts after offering its stdin port: the port went
    /// with it and the command never ran, so it is asked for again on the
    /// new session, at once (not after 25 s of refused connections).
    #[tokio::test]
    async fn an_agent_that_restarts_before_stdin_connects_is_asked_again() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        restarting_agents(&sock, 1).await;
        let s = AgentSession::start(AgentChannel::Serial(sock));
        s.wait_up(Duration::from_secs(5)).await.unwrap();
        let t = Instant::now();
        match exec_with_tcp_stdin(&s).await {
            Ok(Outcome::Exited(st)) => assert_eq!(st.shell_code(), 0),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    }

    /// Asked once more only: an agent that keeps restarting is reported,
    /// saying the command did not run.
    #[tokio::test]
    async fn an_agent_that_keeps_restarting_is_reported_once_asked_again() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        restarting_agents(&sock, 2).await;
        let s = AgentSession::start(AgentChannel::Serial(sock));
        s.wait_up(Duration::from_secs(5)).await.unwrap();
        let e = exec_with_tcp_stdin(&s).await.unwrap_err().to_string();
        assert!(e.contains("the command did not run"), "{e}");
    }

    #[test]
    fn a_tail_keeps_the_end() {
        let mut t = super::Tail::new(4);
        t.push(b"abc");
        t.push(b"defg");
        assert_eq!(t.0, b"defg");
    }
}
