//! The daemon's actor tree (ractor on tokio). One file per actor, its message
//! enum beside it.
//!
//! ```text
//! DaemonSupervisor
//! ├── VmRegistry ── VmActor(vm id)   one per VM record; its operations queue
//! │                 ├── VmmMonitor    watches the VMM pid
//! │                 ├── GuestWatch    pings the agent; restarts a dead session
//! │                 └── AgentSession  the agent channel (reconnects itself)
//! ├── ImageManager ── JobActor(name)  one build per image name at a time
//! ├── KernelManager ── JobActor(name) one pull per kernel name at a time
//! ├── TapPool                        warm taps on the bridge
//! ├── DnsServer                      <name>.vm on the bridge address
//! └── HelperLink                     the link to bangerd-root
//! ```
//!
//! Actors hold state and order; the work itself is `ops`. The actors
//! implement the `ops` traits ([`ActorHelper`], [`ActorTaps`],
//! [`ActorJobs`] here, the per-VM children in `vm_actor`) by reading the
//! current refs from [`Slots`], which the supervisor fills as children
//! (re)start.
//!
//! Supervision is one-for-one: a failed child is restarted after a backoff and
//! its siblings do not notice. No `handle` awaits a process, a socket, a
//! timer or another actor's reply: slow work runs in spawned tasks that report
//! back with a message.

pub mod dns_server;
pub mod guest_watch;
pub mod helper_link;
pub mod job_manager;
mod root;
pub mod supervisor;
pub mod tap_pool;
pub mod vm_actor;
pub mod vm_registry;
pub mod vmm_monitor;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::domain::Event;
use crate::ops::{BoxFuture, Made, OpError, SharedJobs, Taps, Work};
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::protocol::{ErrorCode, RpcError};
use crate::supervise::Slot;

/// The current refs of the supervised children; empty while one restarts.
#[derive(Default)]
pub struct Slots {
    pub helper: Slot<helper_link::HelperLinkMsg>,
    pub registry: Slot<vm_registry::RegistryMsg>,
    /// The ImageManager (a [`job_manager::JobManager`]).
    pub images: Slot<job_manager::ManagerMsg>,
    /// The KernelManager (a [`job_manager::JobManager`]).
    pub kernels: Slot<job_manager::ManagerMsg>,
    pub taps: Slot<tap_pool::TapPoolMsg>,
    pub dns: Slot<dns_server::DnsMsg>,
}

fn restarting(what: &str) -> OpError {
    OpError::busy(format!("the {what} is restarting; retry in a moment"))
}

/// [`Privileged`] through the HelperLink actor.
pub struct ActorHelper(pub Arc<Slots>);

impl ActorHelper {
    /// One request, sent once more when the helper died mid-call and the
    /// request is safe to repeat (the link restarts the helper).
    pub async fn call(&self, request: PrivRequest) -> Result<PrivReply, RpcError> {
        let again = request.retryable().then(|| request.clone());
        match self.call_once(request).await {
            Err(e) if e.code == ErrorCode::Busy && again.is_some() => {
                tracing::warn!("{}; retrying once", e.message);
                self.call_once(again.expect("checked")).await
            }
            r => r,
        }
    }
}

impl ActorHelper {
    async fn call_once(&self, request: PrivRequest) -> Result<PrivReply, RpcError> {
        {
            let request_id = crate::protocol::new_request_id();
            let (method, deadline) = (request.method(), request.deadline());
            let link = self
                .0
                .helper
                .get()
                .ok_or_else(|| RpcError::from(restarting("helper link")))?;
            let (tx, rx) = oneshot::channel();
            link.cast(helper_link::HelperLinkMsg::Call {
                request_id: request_id.clone(),
                request: Box::new(request),
                reply: tx.into(),
            })
            .map_err(|_| RpcError::from(restarting("helper link")))?;
            match tokio::time::timeout(deadline, rx).await {
                Ok(r) => r.unwrap_or_else(|_| {
                    Err(RpcError::failed("the helper link stopped during the call"))
                }),
                Err(_) => Err(RpcError::failed(format!(
                    "bangerd-root did not answer {method} within {deadline:?}; see its log (bangerd-root.log in banger's state directory) or restart it (banger daemon stop)"
                ))),
            }
            .map_err(|e| e.with_request(&request_id))
        }
    }
}

/// [`Taps`] through the TapPool actor.
pub struct ActorTaps(pub Arc<Slots>);

impl Taps for ActorTaps {
    fn lease(&self) -> BoxFuture<'_, Result<String, OpError>> {
        Box::pin(async move {
            let pool = self.0.taps.get().ok_or_else(|| restarting("tap pool"))?;
            let (tx, rx) = oneshot::channel();
            pool.cast(tap_pool::TapPoolMsg::Lease(tx.into()))
                .map_err(|_| restarting("tap pool"))?;
            rx.await
                .unwrap_or_else(|_| Err(OpError::failed("the tap pool stopped during the lease")))
        })
    }

    fn release(&self, tap: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match self.0.taps.get() {
                Some(pool) => {
                    let asked = ractor::call_t!(
                        pool,
                        |r| tap_pool::TapPoolMsg::Release(tap.clone(), Some(r)),
                        30_000
                    );
                    if let Err(e) = asked {
                        tracing::warn!(%tap, "the tap pool did not confirm deleting this tap ({e}); its orphan pass will");
                    }
                }
                None => {
                    tracing::warn!(%tap, "the tap pool is restarting; its orphan pass will delete this tap")
                }
            }
        })
    }
}

/// Which job manager an [`ActorJobs`] uses.
#[derive(Debug, Clone, Copy)]
pub enum JobKind {
    Images,
    Kernels,
}

/// [`SharedJobs`] through a JobManager actor.
pub struct ActorJobs(pub Arc<Slots>, pub JobKind);

impl SharedJobs for ActorJobs {
    fn run(
        &self,
        key: &str,
        events: mpsc::Sender<Event>,
        work: Work,
    ) -> BoxFuture<'static, Result<Made, OpError>> {
        let (slot, what) = match self.1 {
            JobKind::Images => (self.0.images.get(), "image manager"),
            JobKind::Kernels => (self.0.kernels.get(), "kernel manager"),
        };
        let key = key.to_string();
        Box::pin(async move {
            let manager = slot.ok_or_else(|| restarting(what))?;
            job_manager::run_job(&manager, &key, events, work).await
        })
    }
}
