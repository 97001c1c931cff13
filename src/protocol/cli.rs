//! Messages between `banger` (the CLI) and `bangerd`.
//!
//! Each [`Request`] variant documents when it is legal and what it answers.

use serde::{Deserialize, Serialize};

use super::Methods;

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
}

impl Methods for Request {
    const COUNT: u32 = 17;
}

impl Request {
    #[doc(hidden)]
    pub fn last_variant_for_tests() -> Request {
        Request::ImagePromote {
            name: String::new(),
        }
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
            Request::ImageList => "image.list",
            Request::ImageShow { .. } => "image.show",
            Request::ImageDelete { .. } => "image.delete",
            Request::ImagePromote { .. } => "image.promote",
        }
    }
}

/// Successful answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    Pong,
    Status(DaemonStatus),
    ShuttingDown { pid: u32 },
    Vms(Vec<VmView>),
    Vm(VmView),
    Done,
    Kernel(KernelView),
    Kernels(Vec<KernelView>),
    Image(ImageView),
    Images(Vec<ImageView>),
    Exported { file: String, bytes: u64 },
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

/// Progress and output streamed before the final reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Event {
    /// A named stage finished (or started, when `done` is false).
    Stage {
        stage: String,
        detail: String,
        elapsed_ms: u64,
        done: bool,
    },
    /// A human-readable log line.
    Log(String),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
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

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
}
