//! Images: a root filesystem (`rootfs.ext4`), the initial contents of
//! `/root` (`work-seed.ext4`) and a `manifest.json`, built from a recipe,
//! imported from a bundle, or exported to one.

pub mod build;
pub mod bundle;
pub mod layers;
pub mod oci;
pub mod recipe;

use serde::{Deserialize, Serialize};

/// `manifest.json` of an image (on disk and inside bundles).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageManifest {
    pub name: String,
    pub distro: String,
    pub arch: String,
    /// Name of the kernel this image pairs with.
    pub kernel_ref: String,
    pub rootfs_bytes: u64,
    pub work_seed_bytes: u64,
    pub rootfs_sha256: String,
    pub work_seed_sha256: String,
}

/// File names inside an image directory and a bundle.
pub const ROOTFS: &str = "rootfs.ext4";
pub const WORK_SEED: &str = "work-seed.ext4";
pub const MANIFEST: &str = "manifest.json";

/// Checks an image name: the VM-name grammar (it becomes a path and a label).
pub fn validate_image_name(name: &str) -> Result<(), String> {
    crate::names::validate_vm_name(name).map_err(|e| e.to_string().replace("VM name", "image name"))
}
