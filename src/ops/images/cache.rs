//! The build and pull cache: entries, locks, the start-up sweep, `image
//! cache prune`.

use super::*;

/// A finished build in the cache: `rootfs.ext4`, `work-seed.ext4`, `build.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    pub(super) key: String,
    pub(super) rootfs_sha256: String,
    pub(super) work_seed_sha256: String,
    pub(super) rootfs_bytes: u64,
    pub(super) work_seed_bytes: u64,
    pub(super) bootstrap_ms: u64,
    pub(super) assemble_ms: u64,
}

pub(super) fn read_cache(dir: &Path) -> Option<CacheEntry> {
    let e: CacheEntry =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).ok()?).ok()?;
    (dir.join(ROOTFS).is_file() && dir.join(WORK_SEED).is_file()).then_some(e)
}

/// Takes the cache lock of `key` (one builder per key across processes
/// sharing the cache).
pub(super) async fn lock_cache(
    cache: &Path,
    key: &str,
) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
    lock_file(
        cache.join(format!("{key}.lock")),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .await
}

pub(super) async fn lock_file(
    lock_path: PathBuf,
    how: nix::fcntl::FlockArg,
) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
    let at = lock_path.clone();
    tokio::task::spawn_blocking(move || open_and_lock(&lock_path, how))
        .await
        .unwrap_or_else(|e| Err(IoError::new("locking", &at, std::io::Error::other(e))))
}

pub(super) fn open_and_lock(
    lock_path: &Path,
    how: nix::fcntl::FlockArg,
) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).ctx("creating", dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .ctx("opening", lock_path)?;
    nix::fcntl::Flock::lock(f, how).map_err(|(_, e)| IoError::new("locking", lock_path, e.into()))
}

/// Held shared by every build and pull for as long as it uses the cache,
/// and exclusively by `image cache prune` and the start-up sweep: neither
/// removes what a job in flight (of any daemon sharing the cache) is about
/// to read.
pub(super) const IN_USE: &str = ".in-use.lock";

pub(in crate::ops) async fn cache_in_use(
    ctx: &Ctx,
) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
    lock_file(
        cache_dir(ctx).join(IN_USE),
        nix::fcntl::FlockArg::LockShared,
    )
    .await
}

/// At start: temporary files of interrupted pulls and downloads, when no
/// job of any daemon sharing the cache is running.
pub fn sweep_cache(ctx: &Ctx) -> Vec<PathBuf> {
    let cache = cache_dir(ctx);
    let Ok(_held) = open_and_lock(
        &cache.join(IN_USE),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    ) else {
        return Vec::new();
    };
    let mut removed = crate::fsutil::sweep_temp(&cache);
    removed.extend(crate::fsutil::sweep_temp(&cache.join("bundles")));
    let blobs = cache.join("oci-blobs");
    for e in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".tmp")
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(e.path());
        }
    }
    removed
}

/// `image cache prune [--dry-run]`: the paths and sizes of build entries, OCI blobs and bundle
/// downloads no image (or kernel) here came from. Refused while any build
/// or pull sharing the cache runs (what it fetched is not recorded yet).
/// Images pulled before banger recorded their blobs keep every blob.
pub async fn cache_prune(ctx: Arc<Ctx>, dry_run: bool) -> Result<Vec<(String, u64)>, OpError> {
    let cache = cache_dir(&ctx);
    tokio::task::spawn_blocking(move || -> Result<Vec<(String, u64)>, OpError> {
        // No build or pull may be running: what it fetched is not
        // recorded until it publishes. (The records are read after.)
        let _alone = match open_and_lock(&cache.join(IN_USE), nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(e) if e.is(std::io::ErrorKind::WouldBlock) => {
                return Err(OpError::failed(
                    "an image build or pull is running (of this or another banger sharing the cache); run `banger image cache prune` again when it is done",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let images = ctx.store.list_images()?;
        let kernels = ctx.store.list_kernels()?;
        let mut keys = std::collections::HashSet::new();
        let mut blobs = std::collections::HashSet::new();
        let mut bundles = std::collections::HashSet::new();
        let mut all_blobs = false;
        for i in &images {
            if let Some(k) = i.source.strip_prefix("built:") {
                keys.insert(k.to_string());
            }
            if let Some((_, sha)) = i.source.rsplit_once("@sha256:") {
                if i.source.starts_with("catalog:") {
                    bundles.insert(format!("sha256-{sha}.tar.zst"));
                }
            }
            if i.source.starts_with("oci:") {
                let p = Path::new(&i.dir).join(OCI_BLOBS);
                match std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<OciBlobs>(&b).ok())
                {
                    Some(u) => {
                        blobs.extend(u.blobs.iter().filter_map(|d| image::oci::blob_name(d).ok()))
                    }
                    None => all_blobs = true,
                }
            }
        }
        for k in &kernels {
            if let Some((_, sha)) = k.source.rsplit_once("@sha256:") {
                bundles.insert(format!("sha256-{sha}.tar.zst"));
            }
        }
        let mut out = Vec::new();
        let consider = |path: PathBuf, out: &mut Vec<(String, u64)>| -> Result<(), OpError> {
            let bytes = crate::fsutil::disk_usage(&path);
            if !dry_run {
                crate::fsutil::remove_all(&path).ctx("removing", &path)?;
            }
            out.push((path.display().to_string(), bytes));
            Ok(())
        };
        let names = |d: &Path| -> Vec<(String, PathBuf)> {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| !n.starts_with('.') && !n.ends_with(".tmp"))
                .collect();
            v.sort();
            v
        };
        for (n, path) in names(&cache) {
            let is_key = n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_key || keys.contains(&n) || !path.is_dir() {
                continue;
            }
            // (No build runs: the in-use lock is ours.)
            consider(path, &mut out)?;
            if !dry_run {
                let _ = std::fs::remove_file(cache.join(format!("{n}.lock")));
            }
        }
        if !all_blobs {
            for (n, path) in names(&cache.join("oci-blobs")) {
                if !blobs.contains(&n) {
                    consider(path, &mut out)?;
                }
            }
        }
        for (n, path) in names(&cache.join("bundles")) {
            if !bundles.contains(&n) {
                consider(path, &mut out)?;
            }
        }
        Ok(out)
    })
    .await?
}
