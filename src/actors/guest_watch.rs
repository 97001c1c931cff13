//! `GuestWatch`: one per VM, a supervised child of its VmActor. Every few
//! seconds, while the VM runs, it pings the agent (bounded) and records the
//! answer in `ops::guests::Board` (three silent pings in a row: the VM is
//! shown `degraded`); when the agent session's own task has died it asks
//! the VmActor for a fresh session. The probe runs on a task: the handler
//! never waits on the guest.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::vm_actor::VmMsg;
use crate::ops::Ctx;

/// How often the agent is pinged.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long one ping may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

pub struct GuestWatch {
    pub id: String,
    pub vm: ActorRef<VmMsg>,
    pub ctx: Arc<Ctx>,
}

/// What one probe found.
pub enum Probe {
    NotRunning,
    /// The session's task is gone (it panicked or was killed).
    DeadSession,
    Answered(Duration),
    /// Heard from within the last interval (a command's frames or stdin):
    /// no ping is sent, so a busy transfer gets no extra streams beside it.
    Heard,
    Silent(String),
}

pub enum WatchMsg {
    Tick,
    Done(Probe),
    /// Test hook: the handler panics.
    Panic,
}

pub struct WatchState {
    ticker: Option<tokio::task::JoinHandle<()>>,
    probing: bool,
}

async fn probe(vm: ActorRef<VmMsg>) -> Probe {
    let Ok((running, session)) = ractor::call_t!(vm, VmMsg::Probe, 5_000) else {
        return Probe::NotRunning;
    };
    match session {
        _ if !running => Probe::NotRunning,
        None => Probe::DeadSession,
        Some(s) if s.is_dead() => Probe::DeadSession,
        Some(s) if s.silent() < EVERY => Probe::Heard,
        Some(s) => match s.ping(PING_TIMEOUT).await {
            Ok(rtt) => Probe::Answered(rtt),
            Err(e) => Probe::Silent(e.to_string()),
        },
    }
}

impl Actor for GuestWatch {
    type Msg = WatchMsg;
    type State = WatchState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<WatchMsg>,
        _: (),
    ) -> Result<WatchState, ActorProcessingErr> {
        Ok(WatchState {
            ticker: Some(myself.send_interval(EVERY, || WatchMsg::Tick)),
            probing: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WatchMsg>,
        msg: WatchMsg,
        state: &mut WatchState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WatchMsg::Tick if state.probing => {}
            WatchMsg::Tick => {
                state.probing = true;
                let vm = self.vm.clone();
                tokio::spawn(async move {
                    let p = probe(vm).await;
                    let _ = myself.cast(WatchMsg::Done(p));
                });
            }
            WatchMsg::Done(p) => {
                state.probing = false;
                let board = &self.ctx.guests;
                match p {
                    Probe::NotRunning => board.idle(&self.id),
                    Probe::DeadSession => {
                        let _ = self
                            .vm
                            .cast(VmMsg::ReviveAgent("the agent session's task ended".into()));
                    }
                    Probe::Answered(rtt) => board.answered(&self.id, rtt.as_micros() as u64),
                    Probe::Heard => board.heard(&self.id),
                    Probe::Silent(e) => {
                        let n = board.silent(&self.id, e.clone());
                        if n == crate::ops::guests::DEGRADED_AFTER {
                            tracing::warn!(vm = %self.id, "the agent stopped answering: {e}; shown as degraded");
                        }
                    }
                }
            }
            WatchMsg::Panic => panic!("test hook: the GuestWatch of {} panics", self.id),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<WatchMsg>,
        state: &mut WatchState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }
}
