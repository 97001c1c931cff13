//! Messages between `bangerd` and `bangerd-root`: a small, typed set of
//! privileged operations. Nothing here carries a command line or a shell
//! string; every name and address is validated by the helper before use.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Methods;

/// A privileged operation. Append new variants at the end and bump COUNT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrivRequest {
    /// Liveness and identity. Answers [`PrivReply::Pong`].
    Ping,
    /// Creates the bridge if missing, gives it `address/prefix_len` and brings
    /// it up. Idempotent. `name` must be a banger bridge name (`banger*`).
    EnsureBridge {
        name: String,
        address: Ipv4Addr,
        prefix_len: u8,
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
}

impl Methods for PrivRequest {
    const COUNT: u32 = 7;
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
    #[doc(hidden)]
    pub fn last_variant_for_tests() -> PrivRequest {
        PrivRequest::BuildRootfs(RootfsSpec {
            build_id: String::new(),
            recipe: String::new(),
            kernel_modules: None,
            kernel_version: None,
            out_dir: Default::default(),
            package_cache: false,
        })
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
