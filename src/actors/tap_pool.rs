//! `TapPool`: hands out taps attached to the bridge, keeping a few warm so a
//! VM start does not wait for one; returned taps are deleted. Every helper
//! call runs on a spawned task that reports back.

use std::collections::VecDeque;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::NetworkConfig;
use crate::ops::OpError;
use crate::ops::{net, Privileged};

/// Taps kept ready.
pub const WARM: usize = crate::ops::net::WARM_TAPS;

/// Messages to the [`TapPool`].
pub enum TapPoolMsg {
    /// A tap on the bridge, owned by the owner uid: warm when one is ready.
    Lease(RpcReplyPort<Result<String, OpError>>),
    /// Deletes a tap that is no longer used; answers once it is gone.
    Release(String, Option<RpcReplyPort<()>>),
    /// Deletes the warm taps and stops warming (daemon shutdown); answers
    /// once they are gone.
    Drain(RpcReplyPort<()>),
    /// Internal: a warm tap is ready (or `None`: creating one failed).
    Added(Option<String>),
    /// Internal: top the pool up.
    Refill,
}

/// The pool's seams: the helper that makes taps and the network they join.
pub struct TapPool {
    pub helper: Arc<dyn Privileged>,
    pub net: NetworkConfig,
    /// The daemon's record of the taps it made.
    pub ledger: Arc<net::TapLedger>,
}

/// The warm taps, how many are being made, and whether the pool drains.
pub struct TapPoolState {
    warm: VecDeque<String>,
    creating: usize,
    draining: bool,
}

impl TapPool {
    /// Deletes `taps` on a task, then calls `done`.
    fn delete(&self, taps: Vec<String>, done: impl FnOnce() + Send + 'static) {
        let (helper, ledger) = (self.helper.clone(), self.ledger.clone());
        tokio::spawn(async move {
            for t in taps {
                if let Err(e) = net::delete_tap(&*helper, t.clone(), &ledger).await {
                    tracing::warn!(tap = %t, "deleting a tap: {e}");
                }
            }
            done();
        });
    }
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
                        let (helper, net) = (self.helper.clone(), self.net.clone());
                        let ledger = self.ledger.clone();
                        let me = myself.clone();
                        tokio::spawn(async move {
                            let r = net::create_tap(&*helper, &net, &ledger).await;
                            // A caller that gave up waiting: not leaked.
                            if let Err(ractor::MessagingErr::SendErr(Ok(t))) = reply.send(r) {
                                let _ = me.cast(TapPoolMsg::Release(t, None));
                            }
                        });
                    }
                }
                let _ = myself.cast(TapPoolMsg::Refill);
            }
            TapPoolMsg::Refill => {
                while !state.draining && state.warm.len() + state.creating < WARM {
                    state.creating += 1;
                    let (helper, net) = (self.helper.clone(), self.net.clone());
                    let ledger = self.ledger.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let r = net::create_tap(&*helper, &net, &ledger).await;
                        if let Err(e) = &r {
                            tracing::warn!("warming a tap: {e}");
                        }
                        let _ = me.cast(TapPoolMsg::Added(r.ok()));
                    });
                }
            }
            TapPoolMsg::Added(t) => {
                state.creating = state.creating.saturating_sub(1);
                match t {
                    Some(t) if state.draining => self.delete(vec![t], || {}),
                    Some(t) => state.warm.push_back(t),
                    None => {}
                }
            }
            TapPoolMsg::Drain(reply) => {
                state.draining = true;
                let taps = state.warm.drain(..).collect();
                self.delete(taps, move || {
                    let _ = reply.send(());
                });
            }
            TapPoolMsg::Release(name, reply) => self.delete(vec![name], move || {
                if let Some(r) = reply {
                    let _ = r.send(());
                }
            }),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<TapPoolMsg>,
        state: &mut TapPoolState,
    ) -> Result<(), ActorProcessingErr> {
        // Best effort (the daemon drains the pool before it stops; a pool
        // that failed leaves its taps to the next orphan pass).
        let taps = state.warm.drain(..).collect();
        self.delete(taps, || {});
        Ok(())
    }
}
