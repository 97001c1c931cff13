//! Records kept in the store (JSON values, so fields can be added with
//! `#[serde(default)]` without a migration). Enum fields are written with
//! the store's own names ([`super::codec`]); views for the wire are built
//! elsewhere (`ops::views`).

use serde::{Deserialize, Serialize};

use super::codec;
use crate::domain::{VmState, VmmKind, WorkspaceMode};

/// One VM, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    /// Stable id (16 hex digits); directories and taps derive from it.
    pub id: String,
    /// User-visible unique name (validated by [`crate::names::validate_vm_name`]).
    pub name: String,
    #[serde(with = "codec::vm_state")]
    pub state: VmState,
    pub image: String,
    #[serde(default)]
    pub kernel: String,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    #[serde(default)]
    pub nat: bool,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub tap: Option<String>,
    pub created_at_unix: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default, with = "codec::vmm_kind")]
    pub vmm: VmmKind,
    /// The VMM process while running.
    #[serde(default)]
    pub vmm_pid: Option<u32>,
    #[serde(default)]
    pub started_at_unix: Option<u64>,
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The guest's SSH host key (`ssh-ed25519 AAAA...`), learned over vsock
    /// and pinned in banger's known_hosts.
    #[serde(default)]
    pub host_key: Option<String>,
    /// The prepared workspace, if any (survives restarts of VM and daemon).
    #[serde(default)]
    pub workspace: Option<WorkspaceState>,
    /// Made from this snapshot (its root disk stays backed by the
    /// snapshot's, so the snapshot is kept while the VM exists).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The next start restores the snapshot's memory rather than booting
    /// (set by `--from`, cleared by the first start).
    #[serde(default)]
    pub restore_pending: bool,
    /// VMs (by id) this one may talk to, and they to it (`--link`).
    #[serde(default)]
    pub links: Vec<String>,
    /// Made for one command and deleted after it (`vm run --rm`): never
    /// reported running, so its start does not wait for sshd.
    #[serde(default)]
    pub ephemeral: bool,
    /// Its egress policy (`--egress deny`): nothing leaves but what it
    /// allows, through the daemon. None: NAT (if on) reaches anything.
    #[serde(default)]
    pub egress: Option<crate::domain::egress::EgressPolicy>,
    /// Its secrets' names, hosts and placeholders; the values are in the
    /// daemon's vault (`ops::egress::secrets`), never here.
    #[serde(default)]
    pub secrets: Vec<crate::domain::egress::SecretRef>,
}

impl VmRecord {
    /// Whether `other` (another VM) and this one are linked: either named
    /// the other with `--link`.
    pub fn linked_with(&self, other: &VmRecord) -> bool {
        other.id != self.id && (self.links.contains(&other.id) || other.links.contains(&self.id))
    }

    /// A new record in state `created`, before addresses are assigned.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        image: &str,
        kernel: &str,
        vcpu: u32,
        memory_mib: u32,
        disk_bytes: u64,
        nat: bool,
        vmm: VmmKind,
    ) -> VmRecord {
        VmRecord {
            id: new_vm_id(),
            name: name.into(),
            state: VmState::Created,
            image: image.into(),
            kernel: kernel.into(),
            vcpu,
            memory_mib,
            disk_bytes,
            nat,
            ip: None,
            mac: None,
            tap: None,
            created_at_unix: now_unix(),
            last_error: None,
            vmm,
            vmm_pid: None,
            started_at_unix: None,
            boot_id: None,
            host_key: None,
            workspace: None,
            snapshot: None,
            restore_pending: false,
            links: vec![],
            ephemeral: false,
            egress: None,
            secrets: vec![],
        }
    }
}

/// A fresh random VM id.
pub fn new_vm_id() -> String {
    use rand::RngExt;
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One kernel bundle, as persisted (the files live in `dir`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelRecord {
    pub name: String,
    pub kernel_version: String,
    pub arch: String,
    pub source: String,
    pub dir: String,
    pub vmlinux_sha256: String,
    #[serde(default)]
    pub has_initrd: bool,
    #[serde(default)]
    pub has_modules: bool,
    pub created_at_unix: u64,
}

/// One image, as persisted (the files live in `dir`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub distro: String,
    pub arch: String,
    pub kernel_ref: String,
    pub dir: String,
    pub rootfs_bytes: u64,
    pub work_seed_bytes: u64,
    pub rootfs_sha256: String,
    pub work_seed_sha256: String,
    /// `built:<cache key>` or `imported:<file>`.
    pub source: String,
    pub created_at_unix: u64,
}

/// A VM's saved state, as persisted (the files live in `dir`): its memory
/// and devices (the VMM's migration stream) and its disks at that instant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub name: String,
    pub id: String,
    pub dir: String,
    /// The VM it was taken of (name at the time) and that VM's address.
    pub source_vm: String,
    pub source_ip: Option<String>,
    pub image: String,
    pub kernel: String,
    #[serde(with = "codec::vmm_kind")]
    pub vmm: VmmKind,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub nat: bool,
    /// The kernel command line the guest booted with (a restore passes the
    /// same: the VMM's devices must match the saved ones).
    pub cmdline: String,
    /// sha256 of the kernel file and the VMM's version line at the time: a
    /// restore with either changed is refused.
    pub vmlinux_sha256: String,
    pub vmm_version: String,
    /// Bytes on disk (allocated) of the snapshot's files.
    pub size_bytes: u64,
    pub created_at_unix: u64,
    /// Made by banger (a warm start or a warm workspace), not by a user.
    #[serde(default)]
    pub auto: bool,
    /// The last restore of it (0: never).
    #[serde(default)]
    pub last_used_unix: u64,
    /// The snapshot its VM was made from (by id): its root overlay is
    /// backed by that one's, which is kept while this one exists.
    #[serde(default)]
    pub parent: Option<String>,
    /// What a warm workspace snapshot was made for (the repository's root
    /// and branch): its clones serve only that tree.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A prepared workspace, stored with its VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceState {
    pub guest_path: String,
    pub host_path: String,
    pub head: String,
    pub branch: String,
    #[serde(with = "codec::workspace_mode")]
    pub mode: WorkspaceMode,
    #[serde(default)]
    pub include_untracked: bool,
    /// Prepared with `--from`: the host's HEAD does not matter to it.
    #[serde(default)]
    pub pinned: bool,
    pub prepared_at_unix: u64,
}
