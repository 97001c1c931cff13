//! `HelperSupervisor`: restarts the helper's actors one-for-one with backoff.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::net_actor::{NetActor, NetMsg};
use crate::host::net::NetOps;
use crate::supervise::{ended, Restarts, Slot};

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
    type State = Restarts<()>;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<HelperSupervisorMsg>,
        _: (),
    ) -> Result<Restarts<()>, ActorProcessingErr> {
        self.spawn_net(&myself).await?;
        Ok(Restarts::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<HelperSupervisorMsg>,
        msg: HelperSupervisorMsg,
        restarts: &mut Restarts<()>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HelperSupervisorMsg::RespawnNet => {
                if let Err(e) = self.spawn_net(&myself).await {
                    let d = restarts.schedule((), &myself, || HelperSupervisorMsg::RespawnNet);
                    tracing::error!("restarting the network actor failed: {e}; retry in {d:?}");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<HelperSupervisorMsg>,
        evt: SupervisionEvent,
        restarts: &mut Restarts<()>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, how)) = ended(evt) {
            self.net_slot.set(None);
            let d = restarts.schedule((), &myself, || HelperSupervisorMsg::RespawnNet);
            tracing::error!("network actor {how}; restarting in {d:?}");
        }
        Ok(())
    }
}
