//! What the daemon tells a client about its things: VMs, images, kernels,
//! snapshots, workspaces, stats. `ops` builds these from records; the wire
//! (`protocol::cli`) carries them unchanged.

use serde::{Deserialize, Serialize};

use super::{VmState, VmmChoice, VmmKind, WorkspaceMode};

/// A terminal's size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// A prepared workspace as the CLI sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceView {
    pub guest_path: String,
    pub host_path: String,
    pub head: String,
    pub branch: String,
    pub mode: WorkspaceMode,
    pub files: u64,
}

/// What `vm create` / `vm run` ask for. Sizes are resolved by the CLI
/// (config, host, floor) so the `spec:` line matches the VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmCreateSpec {
    /// Generated when absent.
    pub name: Option<String>,
    /// The default image when absent.
    pub image: Option<String>,
    /// The image's kernel when absent.
    pub kernel: Option<String>,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub nat: bool,
    pub vmm: VmmChoice,
    /// Restore this snapshot (its image, kernel and shape) rather than boot.
    pub from: Option<String>,
    /// Boot even when a warm snapshot of this image and shape exists.
    pub cold: bool,
    /// A VM whose start fails is deleted rather than left in `error`
    /// (`vm run --rm`: nothing of the run may be left).
    pub delete_on_failure: bool,
    /// VMs (by name) this one may talk to, and they to it; every other
    /// sibling stays out of reach.
    #[serde(default)]
    pub links: Vec<String>,
    /// Deny egress but what this allows (merged with the config's
    /// `[egress]` allowances by the daemon).
    #[serde(default)]
    pub egress: Option<super::egress::EgressPolicy>,
    /// Secrets kept outside the VM (`--secret NAME@HOST`).
    #[serde(default)]
    pub secrets: Vec<super::egress::SecretSpec>,
}

/// A snapshot as the CLI sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotView {
    pub name: String,
    pub source_vm: String,
    pub image: String,
    pub kernel: String,
    pub vmm: VmmKind,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    /// Bytes its files take on disk.
    pub size_bytes: u64,
    pub created_at_unix: u64,
    pub dir: String,
    /// An automatic warm-start snapshot.
    pub auto: bool,
    /// What a warm workspace snapshot serves (repository and branch).
    pub scope: Option<String>,
}

/// A listening socket in a guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortView {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub proto: String,
    /// The address it listens on in the guest.
    pub address: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// Where to reach it from the host: `<name>.vm:<port>` (the IP when
    /// DNS is off); empty for a loopback-only socket.
    pub endpoint: String,
}

/// `vm stats`. Fractions are integers on the wire (x100 for load and
/// CPU %) so every view stays `Eq`; the CLI prints them as decimals.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStatsView {
    pub name: String,
    pub host: HostStats,
    pub guest: Option<GuestStatsView>,
    /// Why there are no guest figures.
    pub guest_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStats {
    pub vmm_pid: Option<u32>,
    /// The VMM's CPU use over a short sample, % x100 (of one core).
    pub cpu_percent_x100: u32,
    pub rss_bytes: u64,
    /// Space the VM's files take on the host (allocated blocks).
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GuestStatsView {
    /// 1, 5, 15 minute load averages, x100.
    pub load_x100: [u32; 3],
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub disks: Vec<DiskView>,
    pub uptime_s: u64,
    pub processes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskView {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// `vm health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmHealthView {
    pub name: String,
    pub state: VmState,
    /// The agent answered just now.
    pub agent_ok: bool,
    pub rtt_us: Option<u64>,
    /// Why it did not.
    pub agent_error: Option<String>,
    pub boot_id: Option<String>,
    pub uptime_s: Option<u64>,
    /// The guest's PID 1 (`systemd`, or `banger`).
    pub init: Option<String>,
    pub setup_errors: Vec<String>,
    pub children: Vec<ChildView>,
}

/// One per-VM child's restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChildView {
    pub name: String,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub last_restart_unix: Option<u64>,
}

/// `banger dns`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsView {
    /// `network.dns_port` is not 0.
    pub enabled: bool,
    /// `address:port` it listens on (or will, once the bridge exists).
    pub listen: String,
    /// The socket is bound now.
    pub serving: bool,
    /// What the host resolver does with `*.vm` (routed, or what to set).
    pub resolver: String,
    /// `(name.vm, ip)` of the VMs it answers for now.
    pub records: Vec<(String, String)>,
    /// When this server (actor) started: changes when it is restarted.
    pub started_unix_ms: u64,
}

/// How to reach a VM with the system `ssh`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SshTarget {
    pub name: String,
    pub ip: String,
    pub user: String,
    pub identity: String,
    pub known_hosts: String,
    /// Alias pinned in `known_hosts` (`<name>.vm`).
    pub host_alias: String,
    pub ssh_config: String,
}

/// A kernel as the CLI sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelView {
    pub name: String,
    pub kernel_version: String,
    pub arch: String,
    pub source: String,
    pub dir: String,
    pub has_initrd: bool,
    pub has_modules: bool,
    pub vmlinux_sha256: String,
    pub created_at_unix: u64,
}

/// An image as the CLI sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageView {
    pub name: String,
    pub distro: String,
    pub arch: String,
    pub kernel_ref: String,
    pub dir: String,
    pub rootfs_bytes: u64,
    pub work_seed_bytes: u64,
    pub rootfs_sha256: String,
    pub work_seed_sha256: String,
    pub source: String,
    pub default: bool,
    pub created_at_unix: u64,
}

/// A VM as the CLI sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmView {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub ip: Option<String>,
    pub nat: bool,
    pub created_at_unix: u64,
    pub last_error: Option<String>,
    pub kernel: String,
    pub vmm: VmmKind,
    pub pid: Option<u32>,
    pub started_at_unix: Option<u64>,
    pub boot_id: Option<String>,
    /// Host path of the prepared workspace, if any.
    pub workspace: Option<String>,
    /// Why the agent of a running VM does not answer (then `state` is
    /// `degraded`).
    pub agent_error: Option<String>,
    /// Restarts of this VM's children (agent session, guest watch, VMM
    /// monitor) since the daemon started.
    pub child_restarts: u32,
    /// The VMs it may talk to (`--link`, either way round), by name.
    #[serde(default)]
    pub links: Vec<String>,
    /// Its egress policy, if it has one.
    #[serde(default)]
    pub egress: Option<super::egress::EgressPolicy>,
    /// Its secrets (names, hosts and placeholders; never values).
    #[serde(default)]
    pub secrets: Vec<super::egress::SecretRef>,
}

/// How a command ended: its code, and why when banger or the guest could
/// not run it (126, 127).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub message: Option<String>,
}
