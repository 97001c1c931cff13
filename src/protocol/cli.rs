//! Messages between `banger` (the CLI) and `bangerd`.
//!
//! Each [`Request`] variant documents when it is legal and what it answers.

use serde::{Deserialize, Serialize};

use super::Methods;
pub use crate::domain::views::*;
use crate::domain::Signal;
pub use crate::domain::{Event, Input};
pub use crate::workspace::WorkspaceSpec;

/// A CLI request. Append new variants at the end and bump [`Methods::COUNT`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Request {
    /// Liveness check; always legal. Answers [`Reply::Pong`].
    Ping,
    /// Daemon facts: pid, uptime, socket, helper. Answers [`Reply::Status`].
    Status,
    /// Stops the daemon, and in user mode the helper it started. Running VMs
    /// keep running. Answers [`Reply::ShuttingDown`] before the daemon exits.
    Shutdown,
    /// Every VM record. Answers [`Reply::Vms`].
    VmList,
    /// One VM by name. Answers [`Reply::Vm`] or `not_found`.
    VmShow { name: String },
    /// Fetches a kernel from a source (`debian-cloud`) under `name`; concurrent
    /// pulls of one name share one job. Streams stages; answers [`Reply::Kernel`].
    KernelPull {
        source: String,
        name: String,
        version: Option<String>,
    },
    /// Imports a kernel from a local directory (runs in the daemon, which must
    /// be able to read it). Answers [`Reply::Kernel`].
    KernelImport { name: String, from: String },
    /// Every kernel. Answers [`Reply::Kernels`].
    KernelList,
    /// One kernel. Answers [`Reply::Kernel`].
    KernelShow { name: String },
    /// Deletes a kernel no image or VM references. Answers [`Reply::Done`].
    KernelDelete { name: String },
    /// Builds an image from its recipe (`debian-bookworm`), pulling its kernel
    /// first if needed. Concurrent builds of one name share one job.
    /// `rebuild` ignores the built-artifact cache. Answers [`Reply::Image`].
    ImageBuild { name: String, rebuild: bool },
    /// Imports an image bundle (`.tar.zst`), verifying every sha256.
    ImageImport { file: String, name: Option<String> },
    /// Writes an image bundle to `file`. Answers [`Reply::Exported`].
    ImageExport { name: String, file: String },
    /// Every image. Answers [`Reply::Images`].
    ImageList,
    /// One image. Answers [`Reply::Image`].
    ImageShow { name: String },
    /// Deletes an image no VM uses. Answers [`Reply::Done`].
    ImageDelete { name: String },
    /// Makes an image the default for new VMs. Answers [`Reply::Image`].
    ImagePromote { name: String },
    /// Creates a VM and boots it (building or pulling its image and kernel on
    /// first use). Streams stages (reserve, network, disks, vmm, agent, ssh,
    /// ready); answers [`Reply::Vm`]. Bad specs are refused before anything
    /// is created.
    VmCreate(VmCreateSpec),
    /// Boots a stopped VM. Answers [`Reply::Vm`].
    VmStart { name: String },
    /// Stops a running VM: sync in the guest, graceful power-off, kill after
    /// a bounded wait. Answers [`Reply::Vm`].
    VmStop { name: String },
    /// Stops then starts a VM. Answers [`Reply::Vm`].
    VmRestart { name: String },
    /// Sends a signal to the VMM. Answers [`Reply::Vm`] once the signal is
    /// delivered (and, for a terminating one, once the VMM has exited).
    VmKill { name: String, signal: Signal },
    /// Stops a VM if needed and removes it with its disks. Answers [`Reply::Done`].
    ///
    /// With `id`, only the VM of that id is deleted (`vm run --rm` deletes
    /// what it created, never a VM that took the name meanwhile).
    VmDelete { name: String, id: Option<String> },
    /// Deletes every VM that is not running. Answers [`Reply::Pruned`].
    VmPrune,
    /// Changes a VM's vcpu, memory (both for its next start), NAT (at
    /// once) or work disk size (grown while stopped). Answers [`Reply::Vm`].
    VmSet {
        name: String,
        vcpu: Option<u32>,
        memory_mib: Option<u32>,
        nat: Option<bool>,
        disk_bytes: Option<u64>,
        /// Its egress policy (at once on a running VM).
        egress: crate::domain::egress::EgressChange,
    },
    /// The serial console and VMM log of a VM. Answers [`Reply::Logs`].
    VmLogs { name: String },
    /// Runs a command in a running VM through its agent: `argv` exactly as
    /// given (no shell), in `cwd` (default: the workspace, else `/root`),
    /// stdout and stderr streamed as events. With `stdin`, the client's
    /// [`Input`]s feed it (bytes, then EOF); signals and, with `tty`,
    /// terminal resizes are forwarded. Answers [`Reply::Exit`] with the
    /// command's code (128+N for a signal, 126/127 when it cannot run).
    VmExec {
        name: String,
        argv: Vec<String>,
        cwd: Option<String>,
        env: Vec<(String, String)>,
        /// Run on a pseudo-terminal of this size.
        tty: Option<TtySize>,
        stdin: bool,
        /// In a VM with a workspace: re-sync it first when the host's HEAD
        /// moved since prepare (otherwise a warning is streamed).
        auto_prepare: bool,
    },
    /// How to reach a running VM with the system `ssh`. Answers [`Reply::Ssh`].
    VmSsh { name: String },
    /// Ships a host git repository into a running VM at `/root/repo` (one
    /// streamed archive over the agent's vsock exec channel) and records it
    /// with the VM. Streams a notice about skipped untracked files. Answers
    /// [`Reply::Workspace`].
    WorkspacePrepare { name: String, spec: WorkspaceSpec },
    /// Streams a binary git patch of the guest's changes (new files included)
    /// against the prepared commit, or `base_commit`, as stdout events.
    /// Answers [`Reply::Done`].
    WorkspaceExport {
        name: String,
        base_commit: Option<String>,
    },
    /// One round trip to a running VM's agent. Answers [`Reply::Ping`].
    VmPing { name: String },
    /// Listening sockets in a running VM (from its agent), each with the
    /// endpoint to reach it at. Answers [`Reply::Ports`].
    VmPorts { name: String },
    /// Host-side (VMM CPU, RSS, disk) and guest-side (load, memory, disks)
    /// figures of a running VM. Answers [`Reply::Stats`].
    VmStats { name: String },
    /// Whether a VM's agent answers now, and its per-VM children' restarts.
    /// Answers [`Reply::Health`].
    VmHealth { name: String },
    /// The `<name>.vm` DNS server: where it listens, the host resolver's
    /// routing, the names it answers. Answers [`Reply::Dns`].
    Dns,
    /// Rewrites banger's ssh_config (every VM with an address) and answers
    /// its path. Answers [`Reply::SshConfig`].
    SshConfig,
    /// Pauses a running (QEMU) VM, saves its memory, devices and disks as
    /// snapshot `snapshot` (generated when absent), and resumes it, or with
    /// `stop` stops it. Streams stages; answers [`Reply::Snapshot`].
    VmSnapshot {
        name: String,
        snapshot: Option<String>,
        stop: bool,
        /// Made by banger (a warm workspace), pruned when unused.
        auto: bool,
        /// What a warm workspace snapshot serves (repository and branch).
        scope: Option<String>,
    },
    /// Every snapshot. Answers [`Reply::Snapshots`].
    SnapshotList,
    /// One snapshot. Answers [`Reply::Snapshot`].
    SnapshotShow { name: String },
    /// Deletes a snapshot no VM was made from. Answers [`Reply::Done`].
    SnapshotDelete { name: String },
    /// Deletes the automatic snapshots (warm starts, warm workspaces) not
    /// used for `days` days (0: every unused one) that no VM was made from.
    /// Answers [`Reply::Pruned`] with their names.
    SnapshotPrune { days: u32 },
    /// Pulls an image from an OCI registry (linux/amd64), verifies and
    /// applies its layers, adds the agent, and publishes it as `name`
    /// (default: from the reference). HTTPS, except for loopback
    /// registries or with `insecure`. Concurrent pulls of one name share
    /// one job. Streams stages; answers [`Reply::Image`].
    ImagePull {
        reference: String,
        name: Option<String>,
        insecure: bool,
    },
    /// Removes build and pull caches no image here came from (or, with
    /// `dry_run`, only says which). Answers [`Reply::CachePruned`].
    ImageCachePrune { dry_run: bool },
    /// `vm run`, whole: create (or restore) a VM, ship the workspace,
    /// bootstrap and warm it, run the command, write the patch, delete it.
    /// Streams [`Event::Spec`] first, the stages, [`Event::CommandStarted`]
    /// when the command runs (from then on the client's [`Input`]s feed it;
    /// before, a signal stops the run after its current step), and the
    /// command's output. The run finishes on its own task: a client that
    /// goes away is treated as interrupted (the command is killed, the patch
    /// still written, `rm` still deletes). Answers [`Reply::Exit`] (130
    /// when interrupted before the command ran), or [`Reply::Vm`] when there
    /// is no command (`-d`).
    VmRun(Box<RunSpec>),
    /// What a workspace prepare of `spec` would ship, read on the host
    /// (`--dry-run`: nothing is made). Answers [`Reply::Plan`].
    WorkspacePlan(WorkspaceSpec),
    /// Makes the ext4 root file system at `rootfs` (absolute) an image:
    /// copied, checked, the agent added; it pairs with `kernel` (default
    /// the default kernel, pulled if missing). Streams stages; answers
    /// [`Reply::Image`].
    ImageRegister {
        name: String,
        rootfs: String,
        kernel: Option<String>,
    },
    /// A VM's egress policy and what it refused. Answers [`Reply::Egress`].
    VmEgress { name: String },
    /// Opens the HTTP API and web dashboard on loopback TCP (`[api]
    /// listen`, else a free port) if it is not open yet. Answers
    /// [`Reply::Dashboard`].
    Dashboard,
    /// Fault injection for tests: only in builds with the `test-hooks`
    /// feature (the test suite's), and refused unless the daemon was
    /// started with `BANGER_TEST_HOOKS=1`. Answers [`Reply::Done`].
    #[cfg(feature = "test-hooks")]
    TestHook(TestHook),
}

impl Methods for Request {
    const COUNT: u32 = 48 + cfg!(feature = "test-hooks") as u32;
}

/// What `vm run` asks for. Paths are absolute (the client's view).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSpec {
    /// Its `delete_on_failure` is set by the daemon from `rm`.
    pub create: VmCreateSpec,
    pub workspace: Option<WorkspaceSpec>,
    /// Skip `mise install` in a repository that has a `.mise.toml`.
    pub no_bootstrap: bool,
    pub warm: Option<WarmSpec>,
    /// None: leave the VM running and answer its view (`-d`).
    pub command: Option<RunCommand>,
    /// Delete the VM when the run ends, however it ends.
    pub rm: bool,
    /// Write the guest's workspace changes here before the VM goes.
    pub export_patch: Option<String>,
}

/// `--warm CMD --warm-key FILE...`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WarmSpec {
    pub command: String,
    /// Files of the repository whose content is part of the key.
    pub key_files: Vec<String>,
}

/// The command of a `vm run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub tty: Option<TtySize>,
    /// The client's stdin feeds it (after [`Event::CommandStarted`]).
    pub stdin: bool,
}

/// What `Request::TestHook` breaks.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum TestHook {
    /// The DnsServer actor panics.
    PanicDns,
    /// The DNS server's socket task panics (its actor stays).
    PanicDnsTask,
    /// The VM's GuestWatch actor panics.
    PanicWatch { name: String },
    /// The VM's VmmMonitor actor panics.
    PanicMonitor { name: String },
    /// The task driving the VM's agent session is aborted.
    KillSession { name: String },
}

impl Request {
    #[cfg(test)]
    pub(crate) fn last_variant_for_tests() -> Request {
        #[cfg(feature = "test-hooks")]
        return Request::TestHook(TestHook::PanicDns);
        #[cfg(not(feature = "test-hooks"))]
        Request::Dashboard
    }

    /// Method name for logs.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Status => "status",
            Request::Shutdown => "shutdown",
            Request::VmList => "vm.list",
            Request::VmShow { .. } => "vm.show",
            Request::KernelPull { .. } => "kernel.pull",
            Request::KernelImport { .. } => "kernel.import",
            Request::KernelList => "kernel.list",
            Request::KernelShow { .. } => "kernel.show",
            Request::KernelDelete { .. } => "kernel.delete",
            Request::ImageBuild { .. } => "image.build",
            Request::ImageImport { .. } => "image.import",
            Request::ImageExport { .. } => "image.export",
            Request::VmSnapshot { .. } => "vm.snapshot",
            Request::SnapshotList => "snapshot.list",
            Request::SnapshotShow { .. } => "snapshot.show",
            Request::SnapshotDelete { .. } => "snapshot.delete",
            Request::SnapshotPrune { .. } => "snapshot.prune",
            Request::ImagePull { .. } => "image.pull",
            Request::ImageRegister { .. } => "image.register",
            Request::ImageCachePrune { .. } => "image.cache.prune",
            Request::ImageList => "image.list",
            Request::ImageShow { .. } => "image.show",
            Request::ImageDelete { .. } => "image.delete",
            Request::ImagePromote { .. } => "image.promote",
            Request::VmCreate(_) => "vm.create",
            Request::VmStart { .. } => "vm.start",
            Request::VmStop { .. } => "vm.stop",
            Request::VmRestart { .. } => "vm.restart",
            Request::VmKill { .. } => "vm.kill",
            Request::VmDelete { .. } => "vm.delete",
            Request::VmPrune => "vm.prune",
            Request::VmSet { .. } => "vm.set",
            Request::VmLogs { .. } => "vm.logs",
            Request::VmExec { .. } => "vm.exec",
            Request::VmSsh { .. } => "vm.ssh",
            Request::WorkspacePrepare { .. } => "workspace.prepare",
            Request::WorkspaceExport { .. } => "workspace.export",
            Request::VmPing { .. } => "vm.ping",
            Request::VmPorts { .. } => "vm.ports",
            Request::VmStats { .. } => "vm.stats",
            Request::VmHealth { .. } => "vm.health",
            Request::Dns => "dns",
            Request::SshConfig => "ssh_config",
            #[cfg(feature = "test-hooks")]
            Request::TestHook(_) => "test_hook",
            Request::VmRun(_) => "vm.run",
            Request::WorkspacePlan(_) => "workspace.plan",
            Request::VmEgress { .. } => "vm.egress",
            Request::Dashboard => "dashboard",
        }
    }
}

/// Successful answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    Pong,
    Status(DaemonStatus),
    ShuttingDown {
        pid: u32,
    },
    Vms(Vec<VmView>),
    Vm(VmView),
    Done,
    Kernel(KernelView),
    Kernels(Vec<KernelView>),
    Image(ImageView),
    Images(Vec<ImageView>),
    Exported {
        file: String,
        bytes: u64,
    },
    Pruned(Vec<String>),
    Logs {
        serial: String,
        vmm: String,
    },
    /// How a command ended: its code, and why when banger or the guest
    /// could not run it (126, 127).
    Exit {
        code: i32,
        message: Option<String>,
    },
    /// The agent's round-trip time.
    Ping {
        rtt_us: u64,
    },
    Ssh(SshTarget),
    Workspace(WorkspaceView),
    Ports(Vec<PortView>),
    Stats(Box<VmStatsView>),
    Health(Box<VmHealthView>),
    Dns(Box<DnsView>),
    SshConfig {
        path: String,
    },
    Snapshot(SnapshotView),
    Snapshots(Vec<SnapshotView>),
    /// Cache entries removed (or, in a dry run, that would be), with their
    /// bytes on disk.
    CachePruned(Vec<(String, u64)>),
    /// What a workspace prepare would ship, as text, and the notice about
    /// untracked files left out, if any.
    Plan {
        text: String,
        notice: Option<String>,
    },
    Egress(crate::domain::egress::EgressView),
    /// Where the dashboard is: `url` signs the browser in (it carries the
    /// token); `token` is the bearer token of the loopback API.
    Dashboard {
        url: String,
        token: String,
    },
}

/// What `banger daemon status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub commit: String,
    pub protocol_version: u32,
    pub uptime_ms: u64,
    pub socket: String,
    pub store: String,
    pub system_mode: bool,
    pub vm_count: u32,
    pub helper: HelperState,
}

/// Whether the daemon can reach `bangerd-root`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum HelperState {
    Connected {
        pid: u32,
        version: String,
        socket: String,
    },
    NotConnected {
        reason: String,
    },
}
