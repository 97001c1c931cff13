//! Kernels: bundles on disk (`vmlinux`, optional `initrd.img`, `modules/`,
//! `manifest.json`), pulled from the host's apt (Debian cloud kernel) or
//! imported from a directory.

pub mod bzimage;
pub mod debian;
pub mod initramfs;
pub mod modules;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{sha256_file, tree_sha256};
use crate::fsutil::IoContext;

/// `manifest.json` of a kernel bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelManifest {
    pub name: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    pub arch: String,
    /// Where it came from, e.g. `apt:linux-image-6.1.0-56-cloud-amd64=6.1.192-2`.
    pub source: String,
    pub vmlinux_sha256: String,
    pub initrd_sha256: Option<String>,
    /// Digest over every module file (relative path and content).
    pub modules_sha256: Option<String>,
}

/// Errors of kernel operations.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
}

/// Files of a staged or published bundle.
pub struct BundlePaths {
    pub dir: PathBuf,
}

impl BundlePaths {
    pub fn new(dir: &Path) -> BundlePaths {
        BundlePaths {
            dir: dir.to_path_buf(),
        }
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join("modules")
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
}

/// Writes the manifest of a staged bundle, hashing its files.
pub fn write_manifest(
    dir: &Path,
    name: &str,
    kernel_version: &str,
    source: &str,
) -> Result<KernelManifest, KernelError> {
    let b = BundlePaths::new(dir);
    let m = KernelManifest {
        name: name.to_string(),
        kernel_version: kernel_version.to_string(),
        arch: "x86_64".into(),
        source: source.to_string(),
        vmlinux_sha256: sha256_file(&b.vmlinux()).ctx("hashing", &b.vmlinux())?,
        initrd_sha256: if b.initrd().exists() {
            Some(sha256_file(&b.initrd()).ctx("hashing", &b.initrd())?)
        } else {
            None
        },
        modules_sha256: if b.modules().exists() {
            Some(tree_sha256(&b.modules()).ctx("hashing", &b.modules())?)
        } else {
            None
        },
    };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| KernelError::Failed(e.to_string()))?;
    crate::fsutil::write_synced(&b.manifest(), &json).ctx("writing", &b.manifest())?;
    Ok(m)
}

/// The largest manifest read.
pub const MAX_MANIFEST: u64 = 1 << 20;
/// The largest kernel file (bzImage or vmlinux) imported.
pub const MAX_KERNEL_FILE: u64 = 512 << 20;

/// Reads a bundle's manifest.
pub fn read_manifest(dir: &Path) -> Result<KernelManifest, KernelError> {
    let p = BundlePaths::new(dir).manifest();
    let bytes = crate::fsutil::read_capped(&p, MAX_MANIFEST).ctx("reading", &p)?;
    serde_json::from_slice(&bytes).map_err(|e| KernelError::Failed(format!("{}: {e}", p.display())))
}

/// What `kernel import --from <dir>` found.
#[derive(Debug, PartialEq, Eq)]
pub struct ImportSource {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `lib/modules/<version>` (or `modules/<version>`).
    pub modules: Option<PathBuf>,
    pub version: Option<String>,
}

/// Finds a kernel, an optional initrd and modules in `dir`: `vmlinux`,
/// `vmlinuz`, `boot/vmlinuz-*`, `boot/vmlinux-*`; `initrd.img`,
/// `boot/initrd.img-*`; `lib/modules/<ver>` or `modules/<ver>`.
pub fn discover(dir: &Path) -> Result<ImportSource, KernelError> {
    if !dir.is_dir() {
        return Err(KernelError::BadInput(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let glob = |sub: &str, prefix: &str| -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|f| f.to_str())
                        .is_some_and(|f| f.starts_with(prefix))
            })
            .collect();
        v.sort();
        v.pop()
    };
    let kernel = ["vmlinux", "vmlinuz", "bzImage"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .or_else(|| glob("boot", "vmlinux-"))
        .or_else(|| glob("boot", "vmlinuz-"))
        .ok_or_else(|| {
            KernelError::BadInput(format!(
                "no kernel in {}: expected vmlinux, vmlinuz or boot/vmlinuz-<version>",
                dir.display()
            ))
        })?;
    let initrd = ["initrd.img", "initrd", "initramfs.img"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .or_else(|| glob("boot", "initrd.img-"));
    let modules = ["lib/modules", "modules"].iter().find_map(|m| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(m))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v.pop()
    });
    let version = modules
        .as_ref()
        .and_then(|m| m.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .or_else(|| {
            kernel
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.split_once('-'))
                .map(|(_, v)| v.to_string())
        });
    Ok(ImportSource {
        kernel,
        initrd,
        modules,
        version,
    })
}

/// Stages an imported kernel into `stage` (vmlinux extracted from a bzImage
/// when needed, initrd and modules copied).
pub fn stage_import(src: &ImportSource, stage: &Path) -> Result<String, KernelError> {
    let b = BundlePaths::new(stage);
    std::fs::create_dir_all(stage).ctx("creating", stage)?;
    let image =
        crate::fsutil::read_capped(&src.kernel, MAX_KERNEL_FILE).ctx("reading", &src.kernel)?;
    let vmlinux = bzimage::extract_vmlinux(&image)
        .map_err(|e| KernelError::BadInput(format!("{}: {e}", src.kernel.display())))?;
    crate::fsutil::write_synced(&b.vmlinux(), &vmlinux).ctx("writing", &b.vmlinux())?;
    if let Some(i) = &src.initrd {
        crate::fsutil::copy_synced(i, &b.initrd()).ctx("copying", i)?;
    }
    let version = src.version.clone().unwrap_or_else(|| "unknown".into());
    if let Some(m) = &src.modules {
        crate::fsutil::copy_tree(m, &b.modules().join(&version)).ctx("copying", m)?;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_layouts() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            matches!(discover(d.path()), Err(KernelError::BadInput(m)) if m.contains("no kernel"))
        );
        std::fs::create_dir_all(d.path().join("boot")).unwrap();
        std::fs::create_dir_all(d.path().join("lib/modules/6.1.0-9-x")).unwrap();
        std::fs::write(d.path().join("boot/vmlinuz-6.1.0-9-x"), b"k").unwrap();
        std::fs::write(d.path().join("boot/initrd.img-6.1.0-9-x"), b"i").unwrap();
        let s = discover(d.path()).unwrap();
        assert!(s.kernel.ends_with("boot/vmlinuz-6.1.0-9-x"));
        assert!(s.initrd.unwrap().ends_with("boot/initrd.img-6.1.0-9-x"));
        assert_eq!(s.version.as_deref(), Some("6.1.0-9-x"));
        assert!(matches!(
            discover(&d.path().join("nope")),
            Err(KernelError::BadInput(_))
        ));
    }
}
