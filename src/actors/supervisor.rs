//! `DaemonSupervisor`: the root of the daemon's actor tree. Restarts each
//! child one-for-one with backoff (ractor's default would stop the supervisor
//! when any child exits) and publishes the current refs in [`Slots`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::helper_link::{HelperLauncher, HelperLink};
use super::vm_registry::VmRegistry;
use super::Slots;
use crate::ops::Ctx;
use crate::supervise::{ended, Restarts};

/// Which child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Registry,
    HelperLink,
    ImageManager,
    KernelManager,
    TapPool,
    Dns,
}

/// Messages to the supervisor.
pub enum SupervisorMsg {
    /// Internal: restart a child after its backoff.
    Respawn(Child),
}

/// How to build the helper link.
#[derive(Clone)]
pub struct HelperLinkSpec {
    pub socket: PathBuf,
    pub launcher: Option<Arc<dyn HelperLauncher>>,
    pub absent_hint: String,
}

/// The root of the tree: the context its children share, the slots it
/// publishes their refs in, and how to build the helper link.
pub struct DaemonSupervisor {
    pub ctx: Arc<Ctx>,
    pub slots: Arc<Slots>,
    pub helper: HelperLinkSpec,
}

/// The children by actor id, and each child kind's restart backoff.
pub struct SupervisorState {
    children: HashMap<ActorId, Child>,
    restarts: Restarts<Child>,
}

impl DaemonSupervisor {
    async fn spawn_child(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let id = match child {
            Child::Registry => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    VmRegistry {
                        ctx: self.ctx.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                let id = r.get_id();
                self.slots.registry.set(Some(r));
                id
            }
            Child::TapPool => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    super::tap_pool::TapPool {
                        helper: self.ctx.helper.clone(),
                        net: self.ctx.config.network.clone(),
                        ledger: self.ctx.tap_ledger.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                let id = r.get_id();
                self.slots.taps.set(Some(r));
                id
            }
            Child::ImageManager | Child::KernelManager => {
                let kind = if child == Child::ImageManager {
                    "image"
                } else {
                    "kernel"
                };
                let (r, _) = Actor::spawn_linked(
                    None,
                    super::job_manager::JobManager { kind },
                    (),
                    myself.get_cell(),
                )
                .await?;
                let id = r.get_id();
                if child == Child::ImageManager {
                    self.slots.images.set(Some(r));
                } else {
                    self.slots.kernels.set(Some(r));
                }
                id
            }
            Child::Dns => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    super::dns_server::DnsServer {
                        ctx: self.ctx.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                let id = r.get_id();
                self.slots.dns.set(Some(r));
                id
            }
            Child::HelperLink => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    HelperLink {
                        socket: self.helper.socket.clone(),
                        launcher: self.helper.launcher.clone(),
                        absent_hint: self.helper.absent_hint.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                let id = r.get_id();
                self.slots.helper.set(Some(r));
                id
            }
        };
        state.children.insert(id, child);
        Ok(())
    }
}

impl Actor for DaemonSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: HashMap::new(),
            restarts: Restarts::default(),
        };
        self.spawn_child(&myself, &mut state, Child::HelperLink)
            .await?;
        self.spawn_child(&myself, &mut state, Child::KernelManager)
            .await?;
        self.spawn_child(&myself, &mut state, Child::ImageManager)
            .await?;
        self.spawn_child(&myself, &mut state, Child::TapPool)
            .await?;
        self.spawn_child(&myself, &mut state, Child::Registry)
            .await?;
        self.spawn_child(&myself, &mut state, Child::Dns).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Respawn(child) => {
                if let Err(e) = self.spawn_child(&myself, state, child).await {
                    let again = move || SupervisorMsg::Respawn(child);
                    let d = state.restarts.schedule(child, &myself, again);
                    tracing::error!(?child, "restart failed: {e}; next attempt in {d:?}");
                } else {
                    tracing::info!(?child, "restarted");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, how)) = ended(evt) else {
            return Ok(());
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        match child {
            Child::Registry => self.slots.registry.set(None),
            Child::HelperLink => self.slots.helper.set(None),
            Child::ImageManager => self.slots.images.set(None),
            Child::KernelManager => self.slots.kernels.set(None),
            Child::TapPool => self.slots.taps.set(None),
            Child::Dns => self.slots.dns.set(None),
        }
        let d = state
            .restarts
            .schedule(child, &myself, move || SupervisorMsg::Respawn(child));
        tracing::error!(?child, "child {how}; restarting in {d:?}");
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        _state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        self.slots.registry.set(None);
        self.slots.helper.set(None);
        self.slots.images.set(None);
        self.slots.kernels.set(None);
        self.slots.taps.set(None);
        self.slots.dns.set(None);
        Ok(())
    }
}
