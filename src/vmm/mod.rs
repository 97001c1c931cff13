//! VMM drivers behind one [`Vmm`] trait: QEMU microvm (KVM where hardware
//! virtualisation works, TCG otherwise) and Firecracker. Everything above the
//! driver is the same for both.

pub mod firecracker;
pub mod qemu;
pub mod qmp;
pub mod serial;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::domain::{VmmChoice, VmmKind};
use crate::paths::VmPaths;
use serde::{Deserialize, Serialize};

/// A boxed future borrowing its driver.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// What driver operations return.
pub type BootFut<'a> = BoxFut<'a, Result<(), VmmError>>;

/// Driver failures.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the VMM did not become ready within {0:?}")]
    Timeout(std::time::Duration),
}

/// Disk image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Everything needed to boot one VM, whatever the VMM.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub vm_id: String,
    pub paths: VmPaths,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// `/dev/vda` first.
    pub disks: Vec<(PathBuf, DiskFormat)>,
    pub tap: Option<String>,
    pub mac: Option<String>,
    pub kvm: bool,
    /// The VMM binary from the config (`qemu_binary`/`firecracker_binary`);
    /// the helper's default locations otherwise.
    pub binary: Option<PathBuf>,
    /// Wait for a saved state instead of booting (QEMU `-incoming defer`).
    pub incoming: bool,
    /// QEMU's TCG translation cache, MiB (config `tcg_tb_size_mib`).
    pub tcg_tb_mib: u32,
    /// Directories outside the VM's own holding its disks' backing files
    /// (a snapshot's and those it was built on).
    pub backing: Vec<PathBuf>,
}

impl BootSpec {
    /// What the VMM reads outside its VM's own directories: the kernel's
    /// and initrd's directories and the backing files'. Only these (read
    /// only) and the VM's own directories are in its mount namespace.
    pub fn reads(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = [Some(&self.kernel), self.initrd.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .chain(self.backing.iter().cloned())
            .collect();
        v.dedup();
        v
    }
}

/// A VMM driver.
pub trait Vmm: Send + Sync {
    fn kind(&self) -> VmmKind;
    /// What bangerd-root must start for this VM.
    fn launch_spec(&self, boot: &BootSpec) -> LaunchSpec;
    /// Takes the started process to a booting guest: QEMU waits for its QMP
    /// socket; Firecracker is configured over its API and started.
    fn boot<'a>(&'a self, boot: &'a BootSpec) -> BoxFut<'a, Result<(), VmmError>>;
    /// Asks the guest to power off (ACPI power button / Ctrl-Alt-Del).
    fn powerdown<'a>(&'a self, paths: &'a VmPaths) -> BoxFut<'a, Result<(), VmmError>>;
}

/// The driver for `kind`.
pub fn driver(kind: VmmKind) -> Box<dyn Vmm> {
    match kind {
        VmmKind::Qemu => Box::new(qemu::Qemu),
        VmmKind::Firecracker => Box::new(firecracker::Firecracker),
    }
}

/// Resolves `auto`: Firecracker only when it is installed and KVM is
/// hardware-backed; QEMU otherwise. An explicit choice that cannot work here
/// is an error saying why.
pub fn choose(choice: VmmChoice) -> Result<VmmKind, String> {
    let fc_ok = || firecracker::binary().is_some() && crate::host::cpu::hardware_kvm();
    match choice {
        VmmChoice::Qemu => Ok(VmmKind::Qemu),
        VmmChoice::Auto => Ok(if fc_ok() {
            VmmKind::Firecracker
        } else {
            VmmKind::Qemu
        }),
        VmmChoice::Firecracker => {
            if firecracker::binary().is_none() {
                return Err("firecracker is not installed (a root-owned binary in /usr/local/bin or /usr/bin); use --vmm qemu".into());
            }
            if let Some(why) = crate::host::cpu::kvm_unavailable_reason() {
                return Err(format!(
                    "firecracker cannot boot guests here: {why}; use --vmm qemu"
                ));
            }
            Ok(VmmKind::Firecracker)
        }
    }
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
    /// Directories the VMM reads besides the VM's own (kernel, backing
    /// files; [`BootSpec::reads`]): bound read-only into its mount
    /// namespace, opened with the owner's rights.
    pub reads: Vec<std::path::PathBuf>,
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
    /// TCG's translation cache in MiB (`tb-size`); 0: QEMU's default.
    #[serde(default)]
    pub tcg_tb_mib: u32,
}

/// A banger VMM process found by [`PrivRequest::ListVmms`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmmProcess {
    pub pid: u32,
    pub vm_id: String,
}
