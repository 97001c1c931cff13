//! `HelperLink`: the daemon's one connection to `bangerd-root`. Calls are
//! multiplexed on it; when it drops, the link reconnects, and in user mode as
//! root it starts the helper again first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Backoff;
use crate::protocol::cli::HelperState;
use crate::protocol::conn::{ClientError, MuxClient};
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::protocol::RpcError;

/// Starts `bangerd-root` when the link finds it absent. Passed in by the
/// daemon (only in user mode as root); `None` means "never start it".
pub trait HelperLauncher: Send + Sync + 'static {
    /// Starts the helper and returns once its socket is ready, or why not.
    fn launch(&self) -> Result<(), String>;
}

/// Messages to the [`HelperLink`].
pub enum HelperLinkMsg {
    /// Performs one privileged operation.
    Call {
        op_id: String,
        request: Box<PrivRequest>,
        reply: RpcReplyPort<Result<PrivReply, RpcError>>,
    },
    /// Connected (with pid and version) or why not. Tries to connect first.
    Status(RpcReplyPort<HelperState>),
    /// Asks the helper to exit (user mode `banger daemon stop`).
    ShutdownHelper(RpcReplyPort<Result<(), RpcError>>),
    /// Internal: connection `generation` closed.
    Closed { generation: u64, reason: String },
    /// Internal: timer to reconnect after a drop.
    Reconnect,
}

/// The link actor.
pub struct HelperLink {
    pub socket: PathBuf,
    pub launcher: Option<Arc<dyn HelperLauncher>>,
    /// What to tell the user when the helper is absent and we cannot start it.
    pub absent_hint: String,
}

type Conn = Arc<MuxClient<PrivRequest, PrivReply>>;

/// Link state.
pub struct HelperLinkState {
    conn: Option<Conn>,
    generation: u64,
    reason: String,
    backoff: Backoff,
    /// Set once the helper was asked to exit: never reconnect or relaunch.
    retired: bool,
}

impl HelperLink {
    async fn connect(
        &self,
        myself: &ActorRef<HelperLinkMsg>,
        state: &mut HelperLinkState,
    ) -> Result<Conn, String> {
        if let Some(c) = &state.conn {
            if c.is_open().await {
                return Ok(c.clone());
            }
        }
        state.conn = None;
        if state.retired {
            return Err("bangerd-root was stopped with the daemon".into());
        }
        let mut attempt = self.try_connect(myself, state).await;
        if let Err(ClientError::NotRunning { .. }) = &attempt {
            if let Some(l) = &self.launcher {
                let l = l.clone();
                let launched = tokio::task::spawn_blocking(move || l.launch())
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                match launched {
                    Ok(()) => attempt = self.try_connect(myself, state).await,
                    Err(e) => {
                        state.reason = format!("could not start bangerd-root: {e}");
                        return Err(state.reason.clone());
                    }
                }
            }
        }
        match attempt {
            Ok(c) => {
                state.reason.clear();
                state.conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                state.reason = match e {
                    ClientError::NotRunning { .. } => {
                        format!("bangerd-root is not running. {}", self.absent_hint)
                    }
                    other => format!(
                        "cannot reach bangerd-root at {}: {other}",
                        self.socket.display()
                    ),
                };
                Err(state.reason.clone())
            }
        }
    }

    async fn try_connect(
        &self,
        myself: &ActorRef<HelperLinkMsg>,
        state: &mut HelperLinkState,
    ) -> Result<Conn, ClientError> {
        state.generation += 1;
        let generation = state.generation;
        let me = myself.clone();
        let fut = MuxClient::connect(&self.socket, move |reason| {
            let _ = me.cast(HelperLinkMsg::Closed { generation, reason });
        });
        let c = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| ClientError::Timeout(Duration::from_secs(5)))??;
        tracing::info!(pid = c.server.pid, version = %c.server.version, "connected to bangerd-root");
        Ok(c)
    }
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
        let mut state = HelperLinkState {
            conn: None,
            generation: 0,
            reason: "not connected yet".into(),
            backoff: Backoff::new(),
            retired: false,
        };
        if let Err(e) = self.connect(&myself, &mut state).await {
            tracing::warn!("{e}");
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<HelperLinkMsg>,
        msg: HelperLinkMsg,
        state: &mut HelperLinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HelperLinkMsg::Call {
                op_id,
                request,
                reply,
            } => match self.connect(&myself, state).await {
                Ok(conn) => {
                    tokio::spawn(async move {
                        let _ = reply.send(conn.call(op_id, *request).await);
                    });
                }
                Err(reason) => {
                    let _ = reply.send(Err(RpcError::failed(reason).with_op(&op_id)));
                }
            },
            HelperLinkMsg::Status(reply) => {
                let st = match self.connect(&myself, state).await {
                    Ok(c) => HelperState::Connected {
                        pid: c.server.pid,
                        version: c.server.version.clone(),
                        socket: self.socket.display().to_string(),
                    },
                    Err(reason) => HelperState::NotConnected { reason },
                };
                let _ = reply.send(st);
            }
            HelperLinkMsg::ShutdownHelper(reply) => {
                state.retired = true;
                let res = match &state.conn {
                    Some(c) if c.is_open().await => {
                        // Losing the connection is the expected answer here.
                        let _ = c
                            .call(crate::protocol::new_op_id(), PrivRequest::Shutdown)
                            .await;
                        Ok(())
                    }
                    _ => Ok(()),
                };
                let _ = reply.send(res);
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
            HelperLinkMsg::Reconnect => {
                if state.conn.is_none() {
                    if let Err(e) = self.connect(&myself, state).await {
                        tracing::warn!("{e}");
                        let d = state.backoff.next_delay();
                        myself.send_after(d, || HelperLinkMsg::Reconnect);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Calls the helper through the link in `slot`, with a clear error when the
/// link is down.
pub async fn call_helper(
    slot: &super::Slot<HelperLinkMsg>,
    op_id: &str,
    request: PrivRequest,
) -> Result<PrivReply, RpcError> {
    let link = slot
        .get()
        .ok_or_else(|| RpcError::failed("the helper link is restarting; retry").with_op(op_id))?;
    let op = op_id.to_string();
    match ractor::call!(link, |reply| HelperLinkMsg::Call {
        op_id: op,
        request: Box::new(request),
        reply
    }) {
        Ok(r) => r,
        Err(e) => Err(RpcError::failed(format!("helper link: {e}")).with_op(op_id)),
    }
}
