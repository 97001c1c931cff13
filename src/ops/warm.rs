//! Warm workspaces (`vm run --warm CMD`): the snapshot a key names and what
//! it serves. The key covers the image (its root file system's digest), the
//! kernel, the VM's shape, the command, the content of the key files, and
//! the repository and branch: the warm command runs the repository's own
//! code, so one branch's set-up is never restored into another's runs.

use std::path::{Path, PathBuf};

use super::Ctx;
use crate::store::StoreError;

/// Why a warm key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WarmKeyError {
    #[error("--warm-key {file}: {path}: {source}; name a file of the repository")]
    KeyFile {
        file: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the key is made of, besides the repository.
pub struct WarmInputs<'a> {
    /// The image asked for (the default image when None).
    pub image: Option<&'a str>,
    /// The kernel asked for (the image's when None).
    pub kernel: Option<&'a str>,
    pub shape: (u32, u32, u64),
    pub nat: bool,
    pub command: &'a str,
    pub key_files: &'a [String],
}

/// The snapshot name of a warm workspace of the repository at `repo`. None
/// while the image or its kernel is not here yet (there is then no such
/// snapshot either).
pub fn key(ctx: &Ctx, repo: &Path, w: &WarmInputs) -> Result<Option<String>, WarmKeyError> {
    let image_name = match w.image {
        Some(n) => n.to_string(),
        None => ctx
            .store
            .setting(crate::store::DEFAULT_IMAGE_KEY)?
            .unwrap_or_else(|| crate::image::recipe::DEFAULT_IMAGE.to_string()),
    };
    let Some(image) = ctx.store.get_image(&image_name)? else {
        return Ok(None);
    };
    let kernel = w.kernel.unwrap_or(&image.kernel_ref).to_string();
    let Some(k) = ctx.store.get_kernel(&kernel)? else {
        return Ok(None);
    };
    let scope = scope(repo).unwrap_or_default();
    let (vcpu, memory_mib, disk_bytes) = w.shape;
    let mut key = format!(
        "warmws2|{}|{}:{scope}|{}|{kernel}|{}|{vcpu}|{memory_mib}|{disk_bytes}|{}|{}",
        image.name,
        scope.len(),
        image.rootfs_sha256,
        k.vmlinux_sha256,
        w.nat,
        w.command.len()
    );
    key.push_str(w.command);
    for f in w.key_files {
        let path = repo.join(f);
        let sha = crate::digest::sha256_file(&path).map_err(|source| WarmKeyError::KeyFile {
            file: f.clone(),
            path: path.clone(),
            source,
        })?;
        key.push_str(&format!("|{}|{f}|{sha}", f.len()));
    }
    let digest = crate::digest::sha256_hex(key.as_bytes());
    Ok(Some(format!("warmws-{}", &digest[..16])))
}

/// What a warm workspace snapshot serves: the repository's root and its
/// branch (`detached <commit>` without one). None outside a repository.
pub fn scope(path: &Path) -> Option<String> {
    let g = crate::workspace::git::Git::at(path).ok()?;
    let branch = match g.run(&["symbolic-ref", "--short", "-q", "HEAD"]) {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => format!(
            "detached {}",
            String::from_utf8_lossy(&g.run(&["rev-parse", "HEAD"]).ok()?).trim()
        ),
    };
    Some(format!("{} on {branch}", g.root.display()))
}
