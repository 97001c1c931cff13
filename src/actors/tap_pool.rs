//! `TapPool`: hands out taps attached to the bridge, keeping a few warm so a
//! VM start does not wait for one; returned taps are deleted.

use std::collections::VecDeque;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::helper_link::call_helper;
use super::Services;
use crate::protocol::helper::PrivRequest;
use crate::protocol::{new_op_id, RpcError};

/// Taps kept ready.
pub const WARM: usize = 2;

/// Messages to the [`TapPool`].
pub enum TapPoolMsg {
    /// A tap on the bridge, owned by the owner uid: warm when one is ready.
    Lease(RpcReplyPort<Result<String, RpcError>>),
    /// Deletes a tap that is no longer used.
    Release(String),
    /// The warm taps (so orphan cleanup leaves them alone).
    Warm(RpcReplyPort<Vec<String>>),
    /// Deletes the warm taps and stops warming (daemon shutdown).
    Drain(RpcReplyPort<()>),
    /// Internal: a warm tap is ready (or `None`: creating one failed).
    Added(Option<String>),
    /// Internal: top the pool up.
    Refill,
}

/// The pool.
pub struct TapPool {
    pub services: Arc<Services>,
}

/// Pool state.
pub struct TapPoolState {
    warm: VecDeque<String>,
    creating: usize,
    draining: bool,
}

/// A fresh banger tap name.
pub fn new_tap_name() -> String {
    use rand::RngExt;
    format!("bgt{:08x}", rand::rng().random::<u32>())
}

/// Ensures the bridge and creates one tap on it.
pub async fn create_tap(svc: &Services) -> Result<String, RpcError> {
    let net = &svc.config.network;
    let op = new_op_id();
    call_helper(
        &svc.helper,
        &op,
        PrivRequest::EnsureBridge {
            name: net.bridge.clone(),
            address: net.bridge_ip,
            prefix_len: net.prefix_len,
        },
    )
    .await?;
    let name = new_tap_name();
    call_helper(
        &svc.helper,
        &op,
        PrivRequest::CreateTap {
            name: name.clone(),
            bridge: net.bridge.clone(),
        },
    )
    .await?;
    Ok(name)
}

impl Actor for TapPool {
    type Msg = TapPoolMsg;
    type State = TapPoolState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _: ActorRef<TapPoolMsg>,
        _: (),
    ) -> Result<TapPoolState, ActorProcessingErr> {
        Ok(TapPoolState {
            warm: VecDeque::new(),
            creating: 0,
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TapPoolMsg>,
        msg: TapPoolMsg,
        state: &mut TapPoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TapPoolMsg::Lease(reply) => {
                match state.warm.pop_front() {
                    Some(t) => {
                        // A caller that gave up waiting: the tap stays warm.
                        if let Err(ractor::MessagingErr::SendErr(Ok(t))) = reply.send(Ok(t)) {
                            state.warm.push_front(t);
                        }
                    }
                    None => {
                        // Nothing warm: create one for this caller off the mailbox.
                        let svc = self.services.clone();
                        let me = myself.clone();
                        tokio::spawn(async move {
                            let r = create_tap(&svc).await;
                            // A caller that gave up waiting: not leaked.
                            if let Err(ractor::MessagingErr::SendErr(Ok(t))) = reply.send(r) {
                                let _ = me.cast(TapPoolMsg::Release(t));
                            }
                        });
                    }
                }
                let _ = myself.cast(TapPoolMsg::Refill);
            }
            TapPoolMsg::Refill => {
                while !state.draining && state.warm.len() + state.creating < WARM {
                    state.creating += 1;
                    let svc = self.services.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let r = create_tap(&svc).await;
                        if let Err(e) = &r {
                            tracing::warn!("warming a tap: {}", e.message);
                        }
                        let _ = me.cast(TapPoolMsg::Added(r.ok()));
                    });
                }
            }
            TapPoolMsg::Added(t) => {
                state.creating = state.creating.saturating_sub(1);
                match t {
                    Some(t) if state.draining => {
                        let _ = call_helper(
                            &self.services.helper,
                            &new_op_id(),
                            PrivRequest::DeleteTap { name: t },
                        )
                        .await;
                    }
                    Some(t) => state.warm.push_back(t),
                    None => {}
                }
            }
            TapPoolMsg::Drain(reply) => {
                state.draining = true;
                for t in state.warm.drain(..) {
                    let _ = call_helper(
                        &self.services.helper,
                        &new_op_id(),
                        PrivRequest::DeleteTap { name: t },
                    )
                    .await;
                }
                let _ = reply.send(());
            }
            TapPoolMsg::Release(name) => {
                let svc = self.services.clone();
                tokio::spawn(async move {
                    if let Err(e) = call_helper(
                        &svc.helper,
                        &new_op_id(),
                        PrivRequest::DeleteTap { name: name.clone() },
                    )
                    .await
                    {
                        tracing::warn!(tap = %name, "releasing a tap: {}", e.message);
                    }
                });
            }
            TapPoolMsg::Warm(reply) => {
                let _ = reply.send(state.warm.iter().cloned().collect());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<TapPoolMsg>,
        state: &mut TapPoolState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.warm.drain(..) {
            let _ = call_helper(
                &self.services.helper,
                &new_op_id(),
                PrivRequest::DeleteTap { name: t },
            )
            .await;
        }
        Ok(())
    }
}
