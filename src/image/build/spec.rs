//! What a rootfs build is asked for and what it makes. bangerd-root runs
//! the build; the wire (`protocol::helper`) carries these unchanged.

use serde::{Deserialize, Serialize};

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

/// The result of [`PrivRequest::BuildRootfs`]: files now in `out_dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuiltRootfs {
    pub rootfs: std::path::PathBuf,
    pub work_seed: std::path::PathBuf,
    pub bootstrap_ms: u64,
    pub assemble_ms: u64,
}
