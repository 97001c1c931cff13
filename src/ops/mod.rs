//! What `bangerd` does, as plain async functions over a [`Ctx`]: VM boot,
//! stop, kill, reap and delete, image builds and kernel pulls, workspaces.
//!
//! Nothing here knows about actors. What the actor tree provides comes in
//! through small traits ([`Privileged`] for bangerd-root, [`Taps`] for the
//! tap pool, [`SharedJobs`] for coalesced builds, [`VmChildren`] for the
//! per-VM children of a VmActor, [`Drivers`] for the VMM drivers), so every
//! operation can be driven in a test with fakes (`ops::testing`).

pub mod disks;
pub mod dns;
pub mod egress;
pub mod error;
pub mod guests;
pub mod images;
pub mod kernels;
pub mod lifecycle;
pub mod logs;
pub mod net;
pub mod progress;
pub mod release_catalog;
pub mod snapshots;
pub mod stats;
pub mod views;
pub mod vms;
pub mod warm;
pub mod workspace;

#[cfg(test)]
pub mod testing;

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::domain::VmmKind;
use crate::guest::session::{AgentChannel, AgentSession};
use crate::paths::Layout;

use crate::domain::views::{ImageView, KernelView};
use crate::domain::{Event, Signal};
use crate::host::net::TapInfo;
use crate::image::build::{BuiltRootfs, RootfsSpec};
use crate::store::{Store, VmRecord};
use crate::vmm::Vmm;
use crate::vmm::{LaunchSpec, VmmProcess};

pub use error::OpError;
pub use progress::{Progress, Stages};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// bangerd-root's typed operations, as the daemon reaches them (the daemon
/// turns each into its wire request; tests use a fake). A failure is an
/// [`OpError`] of the helper's kind: bad input, missing, busy or failed.
pub trait Privileged: Send + Sync {
    /// The bridge exists with this address (idempotent).
    fn ensure_bridge(&self, bridge: Bridge) -> BoxFuture<'_, Result<(), OpError>>;
    /// A tap on `bridge`, owned by the owner uid.
    fn create_tap(&self, name: String, bridge: String) -> BoxFuture<'_, Result<(), OpError>>;
    /// Deletes a tap (absent is fine).
    fn delete_tap(&self, name: String) -> BoxFuture<'_, Result<(), OpError>>;
    /// banger's taps on this host.
    fn list_taps(&self) -> BoxFuture<'_, Result<Vec<TapInfo>, OpError>>;
    /// Binds tap `name` to the guest's address and MAC.
    fn guard_tap(
        &self,
        name: String,
        ip: Ipv4Addr,
        mac: String,
    ) -> BoxFuture<'_, Result<(), OpError>>;
    /// NAT for the VM's address (`on`) or its rules removed.
    fn nat(
        &self,
        on: bool,
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
    ) -> BoxFuture<'_, Result<(), OpError>>;
    /// Lets two guests talk (`vm create --link`); `nat(false, ..)` of
    /// either removes it.
    fn link_vms(
        &self,
        bridge: String,
        a: (String, Ipv4Addr),
        b: (String, Ipv4Addr),
    ) -> BoxFuture<'_, Result<(), OpError>>;
    /// Sends a guest's TCP connections to the daemon's egress proxy on
    /// `port` of the bridge address (`--egress deny`); `nat(false, ..)`
    /// removes it.
    fn police(
        &self,
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
        port: u16,
    ) -> BoxFuture<'_, Result<(), OpError>>;
    /// The VM ids that have NAT or link rules.
    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<String>, OpError>>;
    /// Routes `*.vm` to banger's name server (`on`) or reverts it; what
    /// the host resolver does now, in words.
    fn route_dns(
        &self,
        bridge: String,
        address: Ipv4Addr,
        port: u16,
        on: bool,
    ) -> BoxFuture<'_, Result<String, OpError>>;
    /// Builds a rootfs.
    fn build_rootfs(&self, spec: RootfsSpec) -> BoxFuture<'_, Result<BuiltRootfs, OpError>>;
    /// Launches a VMM; its pid.
    fn launch_vmm(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<u32, OpError>>;
    /// Signals a banger VMM.
    fn signal_vmm(&self, pid: u32, signal: Signal) -> BoxFuture<'_, Result<(), OpError>>;
    /// The banger VMM processes running.
    fn list_vmms(&self) -> BoxFuture<'_, Result<Vec<VmmProcess>, OpError>>;
}

/// The bridge VMs' taps join.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub dns_port: u16,
}

/// Where VMs get their taps.
pub trait Taps: Send + Sync {
    /// A tap on the bridge, owned by the owner uid.
    fn lease(&self) -> BoxFuture<'_, Result<String, OpError>>;
    /// Gives a tap back; done once it is deleted (a stopped VM holds no
    /// tap).
    fn release(&self, tap: String) -> BoxFuture<'_, ()>;
}

/// The work of a shared job.
pub type Work = Box<dyn FnOnce(Progress) -> BoxFuture<'static, Result<Made, OpError>> + Send>;

/// What a shared job made.
#[derive(Debug, Clone)]
pub enum Made {
    Image(ImageView),
    Kernel(KernelView),
}

impl Made {
    /// The image a job made (an image job makes nothing else).
    pub fn image(self) -> Result<ImageView, OpError> {
        match self {
            Made::Image(v) => Ok(v),
            other => Err(OpError::failed(format!("an image job made {other:?}"))),
        }
    }
    /// The kernel a job made.
    pub fn kernel(self) -> Result<KernelView, OpError> {
        match self {
            Made::Kernel(v) => Ok(v),
            other => Err(OpError::failed(format!("a kernel job made {other:?}"))),
        }
    }
}

/// Long jobs keyed by name (an image build, a kernel pull): concurrent
/// requests for one key share one run and all get its result.
pub trait SharedJobs: Send + Sync {
    fn run(
        &self,
        key: &str,
        events: mpsc::Sender<Event>,
        work: Work,
    ) -> BoxFuture<'static, Result<Made, OpError>>;
}

/// The VMM drivers.
pub trait Drivers: Send + Sync {
    fn driver(&self, kind: VmmKind) -> Box<dyn Vmm>;
}

/// The real drivers of [`crate::vmm`].
pub struct RealDrivers;

impl Drivers for RealDrivers {
    fn driver(&self, kind: VmmKind) -> Box<dyn Vmm> {
        crate::vmm::driver(kind)
    }
}

/// What a VM's own actor provides to an operation on that VM: the children
/// that serve the VM while it runs.
pub trait VmChildren: Send + Sync {
    /// The operation stored a new record (so reads during a long operation
    /// see `starting`, the pid, the boot id as they happen).
    fn record_changed(&self, rec: &VmRecord);
    /// Watches VMM `pid`; its exit is reported to the VM's actor.
    fn watch_vmm(&self, pid: u32);
    /// Starts a fresh agent session on `channel` (closing any earlier one)
    /// and answers it.
    fn start_agent(&self, channel: AgentChannel) -> BoxFuture<'_, Result<AgentSession, OpError>>;
    /// The VM's agent session, if one was started.
    fn agent(&self) -> BoxFuture<'_, Option<AgentSession>>;
    /// Closes the agent session, if any.
    fn stop_agent(&self) -> BoxFuture<'_, ()>;
}

/// How long the guest-facing steps may take.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From VMM launch until the agent answers (and SSH, when waited for).
    pub boot: Duration,
    /// A booting guest whose agent is silent and whose serial console has
    /// not grown for this long is taken as hung and gets one fresh VMM.
    pub boot_stall: Duration,
    /// How long a guest has to power off after being asked.
    pub poweroff: Duration,
    /// How long after the VMM's power button before the VMM is killed.
    pub powerdown: Duration,
    /// A guest whose agent is silent this long while a command runs in it
    /// is given up (config `unresponsive_after_secs`).
    pub unresponsive: Duration,
}

impl Timeouts {
    /// Generous under TCG (software emulation), tighter with hardware KVM.
    pub fn for_host() -> Timeouts {
        let kvm = crate::host::cpu::hardware_kvm();
        Timeouts {
            boot: Duration::from_secs(if kvm { 90 } else { 300 }),
            boot_stall: Duration::from_secs(if kvm { 20 } else { 45 }),
            poweroff: Duration::from_secs(60),
            powerdown: Duration::from_secs(20),
            unresponsive: crate::guest::session::UNRESPONSIVE_AFTER,
        }
    }
}

/// What every operation may use: the store, paths, configuration, and the
/// seams to the rest of the daemon. Built once at start and shared.
pub struct Ctx {
    pub store: Arc<Store>,
    pub layout: Layout,
    pub config: Config,
    pub helper: Arc<dyn Privileged>,
    pub taps: Arc<dyn Taps>,
    /// Image builds, coalesced per image name.
    pub images: Arc<dyn SharedJobs>,
    /// Kernel pulls, coalesced per kernel name.
    pub kernels: Arc<dyn SharedJobs>,
    pub drivers: Arc<dyn Drivers>,
    pub timeouts: Timeouts,
    /// Agent answers and helper restarts of running VMs (in memory).
    pub guests: Arc<guests::Board>,
    /// Automatic (warm) snapshots being made now, by name: one at a time
    /// for each.
    pub warming: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The taps this daemon made (shared with its tap pool).
    pub tap_ledger: Arc<net::TapLedger>,
    /// Policed VMs' resolved addresses and refusals (in memory).
    pub egress: Arc<egress::Book>,
    /// VMs' secrets and CAs (`--secret`), kept on the host.
    pub vault: Arc<egress::secrets::Vault>,
}

/// Refuses to delete `what` while `users` (of kind `by`) need it.
fn refuse_if_used(
    what: &str,
    by: &str,
    users: impl Iterator<Item = String>,
) -> Result<(), OpError> {
    let users: Vec<String> = users.collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(OpError::invalid(format!(
        "{what} is used by {by} {}; delete those first",
        users.join(", ")
    )))
}
