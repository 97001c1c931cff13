//! `HelperSupervisor`: restarts the helper's actors one-for-one with backoff.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::net_actor::{NetActor, NetMsg};
use crate::host::net::NetOps;
use crate::supervise::{Backoff, Slot};

/// Messages to the helper supervisor.
pub enum HelperSupervisorMsg {
    /// Internal: restart the network actor.
    RespawnNet,
}

/// Supervises the network actor: its seam, the owner, the slot for its ref.
pub struct HelperSupervisor {
    pub net_ops: Arc<dyn NetOps>,
    pub owner_uid: u32,
    pub net_slot: Arc<Slot<NetMsg>>,
}

impl HelperSupervisor {
    async fn spawn_net(
        &self,
        myself: &ActorRef<HelperSupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let (r, _) = Actor::spawn_linked(
            None,
            NetActor {
                ops: self.net_ops.clone(),
                owner_uid: self.owner_uid,
            },
            (),
            myself.get_cell(),
        )
        .await?;
        self.net_slot.set(Some(r));
        Ok(())
    }
}

impl Actor for HelperSupervisor {
    type Msg = HelperSupervisorMsg;
    type State = Backoff;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<HelperSupervisorMsg>,
        _: (),
    ) -> Result<Backoff, ActorProcessingErr> {
        self.spawn_net(&myself).await?;
        Ok(Backoff::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<HelperSupervisorMsg>,
        msg: HelperSupervisorMsg,
        backoff: &mut Backoff,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HelperSupervisorMsg::RespawnNet => {
                if let Err(e) = self.spawn_net(&myself).await {
                    let d = backoff.next_delay();
                    tracing::error!("restarting the network actor failed: {e}; retry in {d:?}");
                    myself.send_after(d, || HelperSupervisorMsg::RespawnNet);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<HelperSupervisorMsg>,
        evt: SupervisionEvent,
        backoff: &mut Backoff,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(_, err) => {
                self.net_slot.set(None);
                let d = backoff.next_delay();
                tracing::error!("network actor failed ({err}); restarting in {d:?}");
                myself.send_after(d, || HelperSupervisorMsg::RespawnNet);
            }
            SupervisionEvent::ActorTerminated(..) => {
                self.net_slot.set(None);
                let d = backoff.next_delay();
                myself.send_after(d, || HelperSupervisorMsg::RespawnNet);
            }
            _ => {}
        }
        Ok(())
    }
}
