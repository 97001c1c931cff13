//! Images: a root filesystem (`rootfs.ext4`), the initial contents of
//! `/root` (`work-seed.ext4`) and a `manifest.json`, built from a recipe,
//! imported from a bundle, or exported to one.

pub mod build;
pub mod bundle;
pub mod download;
pub mod layers;
pub mod oci;
pub mod recipe;
pub mod register;

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

/// `mkfs.ext4 -d dir`: an ext4 file system of `size_mib` holding `dir`
/// (`paths` entries). The default ratio gives one inode per 16 KiB, too few
/// for a tree of many small files: a tree that would fill more than half of
/// them gets twice its count. The error names the tool's complaint.
pub fn mkfs_ext4(
    dir: &std::path::Path,
    image: &std::path::Path,
    size_mib: u64,
    label: &str,
    paths: u64,
) -> Result<(), String> {
    let mkfs = crate::host::system_tool("mkfs.ext4")
        .ok_or_else(|| "mkfs.ext4 is not installed; install e2fsprogs".to_string())?;
    let mut cmd = std::process::Command::new(mkfs);
    cmd.args(["-F", "-q", "-m", "1", "-L", label]);
    let by_ratio = size_mib * 64;
    let wanted = paths.saturating_mul(2);
    if wanted > by_ratio {
        cmd.arg("-N").arg(wanted.to_string());
    }
    // Bounded: a tree of hostile content must not hold the build forever.
    let out = crate::host::process::run_bounded(
        cmd.arg("-d")
            .arg(dir)
            .arg(image)
            .arg(format!("{size_mib}M"))
            .env("LC_ALL", "C"),
        TOOL_DEADLINE,
        1 << 20,
    )
    .map_err(|e| format!("running mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 for {label} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// How long one filesystem tool (mkfs.ext4, debugfs) may run on an image.
pub const TOOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1800);

/// Checks an image name: the VM-name grammar (it becomes a path and a label).
pub fn validate_image_name(name: &str) -> Result<(), String> {
    crate::names::validate_vm_name(name).map_err(|e| e.to_string().replace("VM name", "image name"))
}
