//! Messages between `bangerd` and `bangerd-root`: a small, typed set of
//! privileged operations. Nothing here carries a command line or a shell
//! string; every name and address is validated by the helper before use.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Methods;
use crate::domain::{Signal, VmmKind};

/// A privileged operation. Append new variants at the end and bump COUNT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrivRequest {
    /// Liveness and identity. Answers [`PrivReply::Pong`].
    Ping,
    /// Creates the bridge if missing, gives it `address/prefix_len` and brings
    /// it up, with its filter chains and, unless `dns_port` is 0, the
    /// redirect of guests' DNS (port 53 on `address`) to `dns_port`.
    /// Idempotent. `name` must be a banger bridge name (`banger*`).
    EnsureBridge {
        name: String,
        address: Ipv4Addr,
        prefix_len: u8,
        dns_port: u16,
    },
    /// Creates a tap owned by the registered owner uid and attaches it to
    /// `bridge`. Idempotent. `name` must be a banger tap name (`bgt*`).
    CreateTap { name: String, bridge: String },
    /// Deletes a banger tap. Idempotent (absent is success); refuses any
    /// interface that is not a banger tap.
    DeleteTap { name: String },
    /// Lists banger taps. Answers [`PrivReply::Taps`].
    ListTaps,
    /// Stops the helper. Running VMs are not touched.
    Shutdown,
    /// Builds a root filesystem from a recipe banger knows (`recipe` names it;
    /// packages, files and hooks are fixed in code) with mmdebstrap, and hands
    /// `rootfs.ext4` and `work-seed.ext4` over into `out_dir`, which must be a
    /// directory owned by the owner uid. `kernel_modules` (owner-owned or
    /// world-readable files only) are installed under
    /// `/lib/modules/<kernel_version>`. Answers [`PrivReply::Built`]. If the
    /// connection drops, the build is killed and its work removed.
    BuildRootfs(RootfsSpec),
    /// NAT for one guest /32 out of `bridge` (MASQUERADE plus FORWARD rules,
    /// tagged with the VM id). Idempotent.
    EnableNat {
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
    },
    /// Removes the rules of [`PrivRequest::EnableNat`]. Idempotent.
    DisableNat {
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
    },
    /// Starts a VMM from a root-owned, non-writable binary, as the owner uid,
    /// in its own session (it outlives the helper and the daemon). The helper
    /// builds the command line from these typed fields. Answers
    /// [`PrivReply::Launched`].
    LaunchVmm(LaunchSpec),
    /// Sends an allowlisted signal to a pid proven to be a banger VMM of the
    /// owner (its control socket lies under the owner's banger runtime
    /// directory). Answers [`PrivReply::Done`].
    SignalVmm { pid: u32, signal: Signal },
    /// The owner's banger VMM processes. Answers [`PrivReply::Vmms`].
    ListVmms,
    /// Binds one of the owner's taps to a VM's addresses: only IPv4 and ARP
    /// from `mac` and `ip` leave the guest (see `host::firewall`). Replaces
    /// an earlier binding of the tap.
    GuardTap {
        name: String,
        ip: Ipv4Addr,
        mac: String,
    },
    /// The VM ids that have NAT rules. Answers [`PrivReply::NatVms`].
    ListNat,
    /// Host resolver routing for `<name>.vm`: with `on`, where
    /// systemd-resolved runs, the bridge link gets `address:port` as its DNS
    /// server and `~vm` as its routing domain; without, the link's settings
    /// are reverted. Answers [`PrivReply::Resolver`].
    RouteDns {
        bridge: String,
        address: Ipv4Addr,
        port: u16,
        on: bool,
    },
}

impl Methods for PrivRequest {
    const COUNT: u32 = 15;
}

/// A VMM to start (see [`PrivRequest::LaunchVmm`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LaunchSpec {
    /// 16 hex digits.
    pub vm_id: String,
    pub kind: VmmKind,
    /// QEMU: the machine; ignored for Firecracker (configured over its API).
    pub qemu: Option<QemuMachine>,
    /// The control socket: QMP (QEMU) or API (Firecracker). Must lie in
    /// `<runtime dir>/vms/<vm_id>/`.
    pub control_socket: std::path::PathBuf,
    /// stdout/stderr of the VMM (opened as the owner).
    pub log: std::path::PathBuf,
    /// The VMM binary the owner configured; run only when root owns it and
    /// nobody else can write it. The helper's default locations otherwise.
    pub binary: Option<std::path::PathBuf>,
}

/// QEMU microvm parameters for [`LaunchSpec`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QemuMachine {
    pub kvm: bool,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub kernel: std::path::PathBuf,
    pub initrd: Option<std::path::PathBuf>,
    pub cmdline: String,
    /// In order (`/dev/vda` first), with their formats (`raw`, `qcow2`).
    pub disks: Vec<(std::path::PathBuf, String)>,
    pub tap: Option<String>,
    pub mac: Option<String>,
    /// The agent's virtio-serial port, on this Unix socket (QEMU listens).
    pub agent_socket: Option<std::path::PathBuf>,
    pub serial_log: std::path::PathBuf,
    /// Start paused, waiting for a migration stream (a snapshot restore):
    /// the daemon hands it the state file over QMP.
    #[serde(default)]
    pub incoming: bool,
}

/// A banger VMM process found by [`PrivRequest::ListVmms`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmmProcess {
    pub pid: u32,
    pub vm_id: String,
}

/// What to build in [`PrivRequest::BuildRootfs`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootfsSpec {
    /// `[a-z0-9-]{1,40}`; names the helper's work directory.
    pub build_id: String,
    /// A recipe name from `image::recipe` (e.g. `debian-bookworm`).
    pub recipe: String,
    pub kernel_modules: Option<std::path::PathBuf>,
    pub kernel_version: Option<String>,
    pub out_dir: std::path::PathBuf,
    /// Reuse downloaded packages from the helper's package cache.
    pub package_cache: bool,
}

impl PrivRequest {
    #[cfg(test)]
    pub(crate) fn last_variant_for_tests() -> PrivRequest {
        PrivRequest::RouteDns {
            bridge: String::new(),
            address: Ipv4Addr::UNSPECIFIED,
            port: 0,
            on: false,
        }
    }

    /// How long the daemon waits for the answer before it gives up on the
    /// call: a wedged helper must not hold a VM operation forever.
    pub fn deadline(&self) -> std::time::Duration {
        use std::time::Duration;
        match self {
            PrivRequest::BuildRootfs(_) => Duration::from_secs(45 * 60),
            PrivRequest::Ping | PrivRequest::Shutdown | PrivRequest::ListVmms => {
                Duration::from_secs(15)
            }
            // Network operations queue behind each other in the helper.
            _ => Duration::from_secs(120),
        }
    }

    /// Whether sending it again after a lost connection is safe (the
    /// request is idempotent): not a launch, a build or a shutdown.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            PrivRequest::LaunchVmm(_) | PrivRequest::BuildRootfs(_) | PrivRequest::Shutdown
        )
    }

    /// Method name for logs.
    pub fn method(&self) -> &'static str {
        match self {
            PrivRequest::Ping => "ping",
            PrivRequest::EnsureBridge { .. } => "ensure_bridge",
            PrivRequest::CreateTap { .. } => "create_tap",
            PrivRequest::DeleteTap { .. } => "delete_tap",
            PrivRequest::ListTaps => "list_taps",
            PrivRequest::Shutdown => "shutdown",
            PrivRequest::BuildRootfs(_) => "build_rootfs",
            PrivRequest::EnableNat { .. } => "enable_nat",
            PrivRequest::DisableNat { .. } => "disable_nat",
            PrivRequest::LaunchVmm(_) => "launch_vmm",
            PrivRequest::SignalVmm { .. } => "signal_vmm",
            PrivRequest::ListVmms => "list_vmms",
            PrivRequest::GuardTap { .. } => "guard_tap",
            PrivRequest::ListNat => "list_nat",
            PrivRequest::RouteDns { .. } => "route_dns",
        }
    }
}

/// Successful answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrivReply {
    Pong {
        pid: u32,
        version: String,
        owner_uid: u32,
    },
    Done,
    Taps(Vec<TapInfo>),
    Built(BuiltRootfs),
    Launched {
        pid: u32,
    },
    Vmms(Vec<VmmProcess>),
    /// VM ids with NAT rules.
    NatVms(Vec<String>),
    /// What [`PrivRequest::RouteDns`] did, in words (`routed ~vm ...` or
    /// why not and what to configure instead).
    Resolver {
        routed: bool,
        detail: String,
    },
}

/// The result of [`PrivRequest::BuildRootfs`]: files now in `out_dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuiltRootfs {
    pub rootfs: std::path::PathBuf,
    pub work_seed: std::path::PathBuf,
    pub bootstrap_ms: u64,
    pub assemble_ms: u64,
}

/// A tap device as the helper reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TapInfo {
    pub name: String,
    pub master: Option<String>,
    pub up: bool,
}

/// The helper protocol streams no events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum NoEvent {}
