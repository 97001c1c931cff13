//! Messages between `bangerd` and `bangerd-root`: a small, typed set of
//! privileged operations. Nothing here carries a command line or a shell
//! string; every name and address is validated by the helper before use.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Methods;
use crate::domain::Signal;
pub use crate::host::net::TapInfo;
pub use crate::image::build::{BuiltRootfs, RootfsSpec};
pub use crate::vmm::{LaunchSpec, QemuMachine, VmmProcess};

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
    /// Removes the rules of [`PrivRequest::EnableNat`] and the VM's links.
    /// Idempotent.
    DisableNat {
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
    },
    /// Starts a VMM from a root-owned, non-writable binary, as the owner uid,
    /// in its own session (it outlives the helper and the daemon). The helper
    /// builds the command line from these typed fields. Answers
    /// [`PrivReply::Launched`].
    LaunchVmm(Box<LaunchSpec>),
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
    /// Lets two guests of `bridge` talk (`vm create --link`): a rule each
    /// way between their addresses, tagged with both ids, and the bridge
    /// answering ARP for its guests. Both addresses must be guest addresses
    /// of the bridge. [`PrivRequest::DisableNat`] of either VM removes it.
    /// Idempotent.
    LinkVms {
        bridge: String,
        a_id: String,
        a_ip: Ipv4Addr,
        b_id: String,
        b_ip: Ipv4Addr,
    },
    /// Sends the TCP connections of one guest /32 of `bridge` that leave
    /// the host to `port` on the bridge address (the daemon's egress
    /// proxy): a REDIRECT tagged with the VM id, so
    /// [`PrivRequest::DisableNat`] removes it. The VM must have no NAT
    /// rules (nothing else of it is forwarded). Idempotent.
    PoliceEgress {
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
        port: u16,
    },
}

impl Methods for PrivRequest {
    const COUNT: u32 = 17;
}

impl PrivRequest {
    #[cfg(test)]
    pub(crate) fn last_variant_for_tests() -> PrivRequest {
        PrivRequest::PoliceEgress {
            vm_id: String::new(),
            ip: Ipv4Addr::UNSPECIFIED,
            bridge: String::new(),
            port: 0,
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
            PrivRequest::LinkVms { .. } => "link_vms",
            PrivRequest::LaunchVmm(_) => "launch_vmm",
            PrivRequest::SignalVmm { .. } => "signal_vmm",
            PrivRequest::ListVmms => "list_vmms",
            PrivRequest::GuardTap { .. } => "guard_tap",
            PrivRequest::ListNat => "list_nat",
            PrivRequest::PoliceEgress { .. } => "police_egress",
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

/// The helper protocol streams no events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum NoEvent {}
