//! Records kept in the store (JSON values, so fields can be added with
//! `#[serde(default)]` without a migration).

use serde::{Deserialize, Serialize};

use crate::protocol::cli::{VmState, VmView, VmmKind};

/// One VM, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    /// Stable id (16 hex digits); directories and taps derive from it.
    pub id: String,
    /// User-visible unique name (validated by [`crate::names::validate_vm_name`]).
    pub name: String,
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
    #[serde(default)]
    pub vmm: VmmKind,
    /// The VMM process while running.
    #[serde(default)]
    pub vmm_pid: Option<u32>,
    /// The vhost-device-vsock process (QEMU) while running.
    #[serde(default)]
    pub vsock_pid: Option<u32>,
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
    pub workspace: Option<crate::workspace::WorkspaceState>,
}

impl VmRecord {
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
            vsock_pid: None,
            started_at_unix: None,
            boot_id: None,
            host_key: None,
            workspace: None,
        }
    }

    /// The wire view.
    pub fn view(&self) -> VmView {
        VmView {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state,
            image: self.image.clone(),
            vcpu: self.vcpu,
            memory_mib: self.memory_mib,
            disk_bytes: self.disk_bytes,
            ip: self.ip.clone(),
            nat: self.nat,
            created_at_unix: self.created_at_unix,
            last_error: self.last_error.clone(),
            kernel: self.kernel.clone(),
            vmm: self.vmm,
            pid: self.vmm_pid,
            started_at_unix: self.started_at_unix,
            boot_id: self.boot_id.clone(),
            workspace: self.workspace.as_ref().map(|w| w.host_path.clone()),
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

impl KernelRecord {
    pub fn view(&self) -> crate::protocol::cli::KernelView {
        crate::protocol::cli::KernelView {
            name: self.name.clone(),
            kernel_version: self.kernel_version.clone(),
            arch: self.arch.clone(),
            source: self.source.clone(),
            dir: self.dir.clone(),
            has_initrd: self.has_initrd,
            has_modules: self.has_modules,
            vmlinux_sha256: self.vmlinux_sha256.clone(),
            created_at_unix: self.created_at_unix,
        }
    }
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

impl ImageRecord {
    pub fn view(&self, default: bool) -> crate::protocol::cli::ImageView {
        crate::protocol::cli::ImageView {
            name: self.name.clone(),
            distro: self.distro.clone(),
            arch: self.arch.clone(),
            kernel_ref: self.kernel_ref.clone(),
            dir: self.dir.clone(),
            rootfs_bytes: self.rootfs_bytes,
            work_seed_bytes: self.work_seed_bytes,
            rootfs_sha256: self.rootfs_sha256.clone(),
            work_seed_sha256: self.work_seed_sha256.clone(),
            source: self.source.clone(),
            default,
            created_at_unix: self.created_at_unix,
        }
    }
}
