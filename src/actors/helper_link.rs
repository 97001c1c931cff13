//! `HelperLink`: the daemon's one connection to `bangerd-root`. Calls are
//! multiplexed on it; when it drops, the link reconnects, and in user mode as
//! root it starts the helper again first. Connecting (and starting the
//! helper) runs on a spawned task; calls that arrive meanwhile wait in the
//! actor's state, so its mailbox never blocks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::protocol::cli::HelperState;
use crate::protocol::conn::{ClientError, MuxClient};
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::protocol::RpcError;
use crate::supervise::Backoff;

/// Starts `bangerd-root` when the link finds it absent. Passed in by the
/// daemon (only in user mode as root); `None` means "never start it".
pub trait HelperLauncher: Send + Sync + 'static {
    /// Starts the helper and returns once its socket is ready, or why not.
    /// Blocking: called on the blocking pool.
    fn launch(&self) -> Result<(), String>;
}

type Reply = RpcReplyPort<Result<PrivReply, RpcError>>;

/// Messages to the [`HelperLink`].
pub enum HelperLinkMsg {
    /// Performs one privileged operation (connecting first if needed).
    Call {
        request_id: String,
        request: Box<PrivRequest>,
        reply: Reply,
    },
    /// Connected (with pid and version) or why not; tries to connect first.
    Status(RpcReplyPort<HelperState>),
    /// Asks the helper to exit (user mode `banger daemon stop`); the link
    /// then never reconnects.
    ShutdownHelper(RpcReplyPort<()>),
    /// Internal: a connection attempt of `generation` ended.
    Connected {
        generation: u64,
        result: Result<Conn, String>,
    },
    /// Internal: connection `generation` closed.
    Closed { generation: u64, reason: String },
    /// Internal: try to connect now (start-up, or a timer after a drop).
    Reconnect,
}

/// How to reach the helper; fixed for the link's life.
pub struct HelperLink {
    pub socket: PathBuf,
    pub launcher: Option<Arc<dyn HelperLauncher>>,
    /// What to tell the user when the helper is absent and we cannot start it.
    pub absent_hint: String,
}

/// A live connection.
pub type Conn = Arc<MuxClient<PrivRequest, PrivReply>>;

/// The connection (if any), the attempt in flight, and the calls waiting
/// for it.
pub struct HelperLinkState {
    conn: Option<Conn>,
    /// A connection attempt is in flight.
    connecting: bool,
    generation: u64,
    reason: String,
    backoff: Backoff,
    /// Set once the helper was asked to exit: never reconnect or relaunch.
    retired: bool,
    /// Calls waiting for a connection.
    pending: Vec<(String, Box<PrivRequest>, Reply)>,
    /// Status requests waiting for a connection attempt to end.
    status_waiters: Vec<RpcReplyPort<HelperState>>,
}

impl HelperLink {
    fn status(&self, state: &HelperLinkState) -> HelperState {
        match &state.conn {
            Some(c) => HelperState::Connected {
                pid: c.server.pid,
                version: c.server.version.clone(),
                socket: self.socket.display().to_string(),
            },
            None => HelperState::NotConnected {
                reason: state.reason.clone(),
            },
        }
    }

    /// Starts a connection attempt unless one runs (or we are retired).
    fn connect(&self, myself: &ActorRef<HelperLinkMsg>, state: &mut HelperLinkState) {
        if state.connecting || state.conn.is_some() {
            return;
        }
        if state.retired {
            state.reason = "bangerd-root was stopped with the daemon".into();
            self.fail_waiters(state);
            return;
        }
        state.connecting = true;
        state.generation += 1;
        let generation = state.generation;
        let (socket, launcher, hint) = (
            self.socket.clone(),
            self.launcher.clone(),
            self.absent_hint.clone(),
        );
        let me = myself.clone();
        tokio::spawn(async move {
            let result = connect_or_launch(&socket, launcher, &hint, &me, generation).await;
            let _ = me.cast(HelperLinkMsg::Connected { generation, result });
        });
    }

    fn fail_waiters(&self, state: &mut HelperLinkState) {
        for (request_id, _, reply) in state.pending.drain(..) {
            let _ = reply.send(Err(
                RpcError::failed(state.reason.clone()).with_request(&request_id)
            ));
        }
        let st = self.status(state);
        for w in state.status_waiters.drain(..) {
            let _ = w.send(st.clone());
        }
    }
}

fn dispatch(conn: &Conn, request_id: String, request: PrivRequest, reply: Reply) {
    let conn = conn.clone();
    tokio::spawn(async move {
        let _ = reply.send(conn.call(request_id, request).await);
    });
}

async fn try_connect(
    socket: &std::path::Path,
    me: &ActorRef<HelperLinkMsg>,
    generation: u64,
) -> Result<Conn, ClientError> {
    let me = me.clone();
    let fut = MuxClient::connect(socket, move |reason| {
        let _ = me.cast(HelperLinkMsg::Closed { generation, reason });
    });
    let c = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(5)))??;
    tracing::info!(pid = c.server.pid, version = %c.server.version, "connected to bangerd-root");
    Ok(c)
}

/// Connects; when nothing listens and a launcher is given, starts the
/// helper and connects again. The error is what the user should read.
async fn connect_or_launch(
    socket: &std::path::Path,
    launcher: Option<Arc<dyn HelperLauncher>>,
    hint: &str,
    me: &ActorRef<HelperLinkMsg>,
    generation: u64,
) -> Result<Conn, String> {
    let mut attempt = try_connect(socket, me, generation).await;
    if let (Err(ClientError::NotRunning { .. }), Some(l)) = (&attempt, launcher) {
        let launched = tokio::task::spawn_blocking(move || l.launch())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match launched {
            Ok(()) => attempt = try_connect(socket, me, generation).await,
            Err(e) => return Err(format!("could not start bangerd-root: {e}")),
        }
    }
    attempt.map_err(|e| match e {
        ClientError::NotRunning { .. } => format!("bangerd-root is not running. {hint}"),
        other => format!("cannot reach bangerd-root at {}: {other}", socket.display()),
    })
}

impl Actor for HelperLink {
    type Msg = HelperLinkMsg;
    type State = HelperLinkState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<HelperLinkMsg>,
        _: (),
    ) -> Result<HelperLinkState, ActorProcessingErr> {
        let _ = myself.cast(HelperLinkMsg::Reconnect);
        Ok(HelperLinkState {
            conn: None,
            connecting: false,
            generation: 0,
            reason: "not connected yet".into(),
            backoff: Backoff::default(),
            retired: false,
            pending: Vec::new(),
            status_waiters: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HelperLinkMsg>,
        msg: HelperLinkMsg,
        state: &mut HelperLinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HelperLinkMsg::Call {
                request_id,
                request,
                reply,
            } => match &state.conn {
                // Not one that died a moment ago (its Closed may still be
                // on the way): the call waits for the next connection.
                Some(conn) if conn.is_open() => dispatch(conn, request_id, *request, reply),
                _ => {
                    if state.conn.take().is_some() {
                        state.reason = "connection lost".into();
                    }
                    state.pending.push((request_id, request, reply));
                    self.connect(&myself, state);
                }
            },
            HelperLinkMsg::Status(reply) => {
                if state.conn.is_some() || state.retired {
                    let _ = reply.send(self.status(state));
                } else {
                    state.status_waiters.push(reply);
                    self.connect(&myself, state);
                }
            }
            HelperLinkMsg::ShutdownHelper(reply) => {
                state.retired = true;
                match state.conn.clone() {
                    Some(c) => {
                        tokio::spawn(async move {
                            // Losing the connection is the expected answer.
                            let _ = c
                                .call(crate::protocol::new_request_id(), PrivRequest::Shutdown)
                                .await;
                            let _ = reply.send(());
                        });
                    }
                    None => {
                        let _ = reply.send(());
                    }
                }
            }
            HelperLinkMsg::Connected { generation, result } => {
                if generation != state.generation {
                    return Ok(());
                }
                state.connecting = false;
                match result {
                    Ok(conn) => {
                        state.reason.clear();
                        for (request_id, request, reply) in state.pending.drain(..) {
                            dispatch(&conn, request_id, *request, reply);
                        }
                        state.conn = Some(conn);
                        let st = self.status(state);
                        for w in state.status_waiters.drain(..) {
                            let _ = w.send(st.clone());
                        }
                    }
                    Err(reason) => {
                        tracing::warn!("{reason}");
                        state.reason = reason;
                        self.fail_waiters(state);
                    }
                }
            }
            HelperLinkMsg::Closed { generation, reason } => {
                if generation == state.generation {
                    tracing::warn!("connection to bangerd-root lost: {reason}");
                    state.conn = None;
                    state.reason = format!("connection lost: {reason}");
                    if self.launcher.is_some() && !state.retired {
                        let d = state.backoff.next_delay();
                        myself.send_after(d, || HelperLinkMsg::Reconnect);
                    }
                }
            }
            HelperLinkMsg::Reconnect => self.connect(&myself, state),
        }
        Ok(())
    }
}
