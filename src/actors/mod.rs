//! The daemon's actor tree (ractor on tokio). One file per actor, its message
//! enum beside it.
//!
//! ```text
//! DaemonSupervisor
//! ├── VmRegistry ── VmActor(vm id)   one per VM record; its operations queue
//! ├── ImageManager ── JobActor(name)  one build per image name at a time
//! ├── KernelManager ── JobActor(name) one pull per kernel name at a time
//! ├── TapPool                        warm taps on the bridge
//! └── HelperLink                     the link to bangerd-root
//!
//! A VmActor supervises its VmmMonitor (watches the VMM pid) and, for QEMU,
//! its VsockBridge (the vhost-device-vsock process).
//! ```
//!
//! Supervision is one-for-one: a failed child is restarted after a backoff and
//! its siblings do not notice. Actors never block in `handle`: slow work runs
//! in spawned tasks that report back with a message.

pub mod helper_link;
pub mod job_manager;
pub mod supervisor;
pub mod tap_pool;
pub mod vm_actor;
pub mod vm_registry;
pub mod vmm_monitor;
pub mod vsock_bridge;

use std::time::{Duration, Instant};

/// Exponential restart backoff for one child, forgiven after a quiet period.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    last_failure: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub const BASE: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(30);
    /// A child that ran this long without failing starts over at BASE.
    pub const FORGIVE_AFTER: Duration = Duration::from_secs(60);

    pub fn new() -> Backoff {
        Backoff {
            failures: 0,
            last_failure: None,
        }
    }

    /// Records a failure and returns how long to wait before restarting.
    pub fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) > Self::FORGIVE_AFTER)
        {
            self.failures = 0;
        }
        self.last_failure = Some(now);
        let d = Self::BASE.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        d.min(Self::MAX)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The message of a failed actor, for logs.
pub fn describe_failure(err: &ractor::ActorProcessingErr) -> String {
    err.to_string()
}

use std::sync::{Arc, RwLock};

use ractor::ActorRef;

/// The current `ActorRef` of a supervised child; the supervisor replaces it
/// on restart, everyone else reads it. Empty while the child is restarting.
pub struct Slot<M: ractor::Message>(RwLock<Option<ActorRef<M>>>);

impl<M: ractor::Message> Default for Slot<M> {
    fn default() -> Self {
        Slot(RwLock::new(None))
    }
}

impl<M: ractor::Message> Slot<M> {
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, r: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = r;
    }
}

/// What every actor may use: the store, paths, configuration and the link to
/// the helper. Built once at daemon start and shared read-only.
pub struct Services {
    pub store: Arc<crate::store::Store>,
    pub layout: crate::paths::Layout,
    pub config: crate::config::Config,
    pub helper: Slot<helper_link::HelperLinkMsg>,
    pub registry: Slot<vm_registry::RegistryMsg>,
    /// The ImageManager (a [`job_manager::JobManager`]).
    pub images: Slot<job_manager::ManagerMsg>,
    /// The KernelManager (a [`job_manager::JobManager`]).
    pub kernels: Slot<job_manager::ManagerMsg>,
    pub taps: Slot<tap_pool::TapPoolMsg>,
}

impl Services {
    pub fn new(
        store: Arc<crate::store::Store>,
        layout: crate::paths::Layout,
        config: crate::config::Config,
    ) -> Arc<Services> {
        Arc::new(Services {
            store,
            layout,
            config,
            helper: Slot::default(),
            registry: Slot::default(),
            images: Slot::default(),
            kernels: Slot::default(),
            taps: Slot::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(400));
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Backoff::MAX);
    }
}
