//! Images: build (coalesced per name, cached by inputs), import, export,
//! list, show, delete, promote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{views, Ctx, Progress};
use crate::digest::sha256_file;
use crate::fsutil::{IoContext, IoError};
use crate::image::{self, bundle, recipe, ImageManifest, MANIFEST, ROOTFS, WORK_SEED};
use crate::protocol::cli::{Event, Reply};
use crate::protocol::helper::{PrivReply, PrivRequest, RootfsSpec};
use crate::protocol::{ErrorCode, RpcError};
use crate::store::model::now_unix;
use crate::store::{ImageRecord, DEFAULT_IMAGE_KEY};

pub fn images_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.state_dir.join("images")
}

fn cache_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.cache_dir.join("images")
}

fn validate_name(name: &str) -> Result<(), RpcError> {
    image::validate_image_name(name).map_err(RpcError::bad_request)
}

/// The default image name.
pub fn default_image(ctx: &Ctx) -> Result<String, RpcError> {
    Ok(ctx
        .store
        .setting(DEFAULT_IMAGE_KEY)?
        .unwrap_or_else(|| recipe::DEFAULT_IMAGE.to_string()))
}

/// Looks an image up or says how to get it.
pub fn get(ctx: &Ctx, name: &str) -> Result<ImageRecord, RpcError> {
    ctx.store.get_image(name)?.ok_or_else(|| {
        let hint = if recipe::find(name).is_some() {
            format!("build it with `banger image build {name}`")
        } else {
            format!(
                "see `banger image list`; buildable images: {}; or a catalog name (banger image catalog) or a reference such as docker.io/library/{name}:latest",
                recipe::names()
            )
        };
        RpcError::not_found(format!("no image named {name:?}; {hint}"))
    })
}

fn view(ctx: &Ctx, rec: &ImageRecord) -> Result<Reply, RpcError> {
    Ok(Reply::Image(views::image(
        rec,
        default_image(ctx)? == rec.name,
    )))
}

/// A finished build in the cache: `rootfs.ext4`, `work-seed.ext4`, `build.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    rootfs_sha256: String,
    work_seed_sha256: String,
    rootfs_bytes: u64,
    work_seed_bytes: u64,
    bootstrap_ms: u64,
    assemble_ms: u64,
}

fn read_cache(dir: &Path) -> Option<CacheEntry> {
    let e: CacheEntry =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).ok()?).ok()?;
    (dir.join(ROOTFS).is_file() && dir.join(WORK_SEED).is_file()).then_some(e)
}

/// `image build <name> [--rebuild]`, coalesced per name.
pub async fn build(
    ctx: Arc<Ctx>,
    name: String,
    rebuild: bool,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    validate_name(&name)?;
    let recipe = recipe::find(&name).ok_or_else(|| {
        RpcError::not_found(format!(
            "no recipe named {name:?}; buildable images: {} (other images can be imported: banger image import <bundle>)",
            recipe::names()
        ))
    })?;
    let jobs = ctx.images.clone();
    jobs.run(
        &name,
        events,
        Box::new(move |p| {
            Box::pin(async move {
                let rec = build_work(&ctx, recipe, rebuild, p).await?;
                view(&ctx, &rec)
            })
        }),
    )
    .await
}

/// Makes sure image `name` exists, building it (coalesced) when it has a
/// recipe. Used by VM creation.
pub async fn ensure(
    ctx: &Arc<Ctx>,
    name: &str,
    progress: &Progress,
) -> Result<ImageRecord, RpcError> {
    let existing = ctx.store.get_image(name)?;
    let Some(recipe) = recipe::find(name) else {
        return get(ctx, name);
    };
    match existing {
        Some(i) if current_key(ctx, recipe)?.is_some_and(|k| i.source == format!("built:{k}")) => {
            return Ok(i)
        }
        Some(_) => progress.log(format!(
            "image {name} was built by another banger version; building it again"
        )),
        None => progress.log(format!("image {name} is not here yet; building it")),
    }
    let (tx, fwd) = progress.forwarder("");
    let r = build(ctx.clone(), name.to_string(), false, tx).await;
    let _ = fwd.await;
    r?;
    get(ctx, name)
}

/// The cache key a build of `recipe` would have now (`None` while its
/// kernel is missing or must be pulled again).
fn current_key(ctx: &Ctx, recipe: &recipe::Recipe) -> Result<Option<String>, RpcError> {
    let Some(k) = ctx.store.get_kernel(recipe.kernel_ref)? else {
        return Ok(None);
    };
    if super::kernels::stale(&k) {
        return Ok(None);
    }
    let km = crate::kernel::read_manifest(Path::new(&k.dir))?;
    Ok(Some(recipe::cache_key(
        recipe,
        &km.kernel_version,
        km.modules_sha256.as_deref().unwrap_or(""),
    )))
}

/// Takes the cache lock of `key` (one builder per key across processes
/// sharing the cache).
async fn lock_cache(cache: &Path, key: &str) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
    lock_file(
        cache.join(format!("{key}.lock")),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .await
}

async fn lock_file(
    lock_path: PathBuf,
    how: nix::fcntl::FlockArg,
) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
    let at = lock_path.clone();
    tokio::task::spawn_blocking(move || open_and_lock(&lock_path, how))
        .await
        .unwrap_or_else(|e| Err(IoError::new("locking", &at, std::io::Error::other(e))))
}

fn open_and_lock(
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
const IN_USE: &str = ".in-use.lock";

pub(super) async fn cache_in_use(ctx: &Ctx) -> Result<nix::fcntl::Flock<std::fs::File>, IoError> {
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

async fn build_work(
    ctx: &Arc<Ctx>,
    recipe: &'static recipe::Recipe,
    rebuild: bool,
    progress: Progress,
) -> Result<ImageRecord, RpcError> {
    let _in_use = cache_in_use(ctx).await?;
    let kernel =
        super::kernels::ensure(ctx, recipe.kernel_ref, recipe.kernel_source, &progress).await?;
    let km = crate::kernel::read_manifest(Path::new(&kernel.dir))?;
    let modules_dir = Path::new(&kernel.dir)
        .join("modules")
        .join(&km.kernel_version);
    let key = recipe::cache_key(
        recipe,
        &km.kernel_version,
        km.modules_sha256.as_deref().unwrap_or(""),
    );
    let source = format!("built:{key}");
    if !rebuild {
        if let Some(existing) = ctx.store.get_image(recipe.name)? {
            if existing.source == source {
                progress.log(format!("image {} is up to date", recipe.name));
                return Ok(existing);
            }
        }
    }
    let cache = cache_dir(ctx);
    std::fs::create_dir_all(&cache).ctx("creating", &cache)?;
    let entry_dir = cache.join(&key);
    let lock = lock_cache(&cache, &key).await?;
    let entry = match (rebuild, read_cache(&entry_dir)) {
        (false, Some(e)) => {
            progress.stage("cache", format!("using the cached build {key}"), true);
            e
        }
        _ => {
            build_into_cache(
                ctx,
                recipe,
                &key,
                &cache,
                &modules_dir,
                &km.kernel_version,
                &progress,
            )
            .await?
        }
    };
    drop(lock);
    progress.stage("publish", format!("image {}", recipe.name), false);
    let m = ImageManifest {
        name: recipe.name.to_string(),
        distro: recipe.distro.to_string(),
        arch: "x86_64".into(),
        kernel_ref: recipe.kernel_ref.to_string(),
        rootfs_bytes: entry.rootfs_bytes,
        work_seed_bytes: entry.work_seed_bytes,
        rootfs_sha256: entry.rootfs_sha256.clone(),
        work_seed_sha256: entry.work_seed_sha256.clone(),
    };
    let ctx2 = ctx.clone();
    let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, RpcError> {
        let dir = images_dir(&ctx2);
        let stage =
            crate::fsutil::TempDir::new_in(&dir, &m.name).ctx("staging an image in", &dir)?;
        for f in [ROOTFS, WORK_SEED] {
            let to = stage.path().join(f);
            crate::fsutil::link_or_copy(&entry_dir.join(f), &to).ctx("placing", &to)?;
        }
        publish(&ctx2, stage, &m, source)
    })
    .await??;
    progress.stage("publish", "done", true);
    Ok(rec)
}

/// Builds the root filesystem in bangerd-root and stores it in the cache
/// under `key` (staged in a `.tmp-` directory, then renamed).
async fn build_into_cache(
    ctx: &Ctx,
    recipe: &'static recipe::Recipe,
    key: &str,
    cache: &Path,
    modules_dir: &Path,
    kernel_version: &str,
    progress: &Progress,
) -> Result<CacheEntry, RpcError> {
    for stale in std::fs::read_dir(cache).ctx("reading", cache)?.flatten() {
        if stale
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".tmp-{key}-"))
        {
            let _ = crate::fsutil::remove_all(&stale.path());
        }
    }
    let out =
        crate::fsutil::TempDir::new_in(cache, key).ctx("creating a build directory in", cache)?;
    use rand::RngExt;
    let build_id = format!(
        "{}-{:06x}",
        &key[..12],
        rand::rng().random::<u32>() & 0xffffff
    );
    let packages = recipe.packages().len();
    progress.stage(
        "bootstrap",
        format!(
            "mmdebstrap {} with {packages} packages (in bangerd-root)",
            recipe.suite
        ),
        false,
    );
    tracing::info!(image = recipe.name, %build_id, "building rootfs with mmdebstrap via bangerd-root");
    let spec = RootfsSpec {
        build_id,
        recipe: recipe.name.to_string(),
        kernel_modules: Some(modules_dir.to_path_buf()),
        kernel_version: Some(kernel_version.to_string()),
        out_dir: out.path().to_path_buf(),
        package_cache: true,
    };
    let built = match ctx.helper.call(PrivRequest::BuildRootfs(spec)).await? {
        PrivReply::Built(b) => b,
        other => {
            return Err(RpcError::failed(format!(
                "unexpected helper reply {other:?}"
            )))
        }
    };
    progress.stage(
        "bootstrap",
        format!("done in {:.1}s", built.bootstrap_ms as f64 / 1000.0),
        true,
    );
    progress.stage(
        "assemble",
        format!(
            "ext4 images made in {:.1}s; hashing",
            built.assemble_ms as f64 / 1000.0
        ),
        false,
    );
    let dir = out.path().to_path_buf();
    let key2 = key.to_string();
    let e = tokio::task::spawn_blocking(move || -> Result<CacheEntry, IoError> {
        let (rootfs, seed) = (dir.join(ROOTFS), dir.join(WORK_SEED));
        let e = CacheEntry {
            key: key2,
            rootfs_sha256: sha256_file(&rootfs).ctx("hashing", &rootfs)?,
            work_seed_sha256: sha256_file(&seed).ctx("hashing", &seed)?,
            rootfs_bytes: std::fs::metadata(&rootfs).ctx("inspecting", &rootfs)?.len(),
            work_seed_bytes: std::fs::metadata(&seed).ctx("inspecting", &seed)?.len(),
            bootstrap_ms: built.bootstrap_ms,
            assemble_ms: built.assemble_ms,
        };
        let json = dir.join("build.json");
        crate::fsutil::write_synced(
            &json,
            &serde_json::to_vec_pretty(&e)
                .map_err(std::io::Error::other)
                .ctx("encoding", &json)?,
        )
        .ctx("writing", &json)?;
        Ok(e)
    })
    .await??;
    let entry_dir = cache.join(key);
    crate::fsutil::replace_dir(out.path(), &entry_dir).ctx("storing the build as", &entry_dir)?;
    let _ = out.keep();
    progress.stage("assemble", "done", true);
    Ok(e)
}

/// Writes the manifest into `stage`, publishes it as the image directory and
/// records it: nothing is visible before the record is written.
fn publish(
    ctx: &Ctx,
    stage: crate::fsutil::TempDir,
    m: &ImageManifest,
    source: String,
) -> Result<ImageRecord, RpcError> {
    let mpath = stage.path().join(MANIFEST);
    let json = serde_json::to_vec_pretty(m)
        .map_err(|e| RpcError::failed(format!("encoding {}: {e}", mpath.display())))?;
    crate::fsutil::write_synced(&mpath, &json).ctx("writing", &mpath)?;
    let dst = images_dir(ctx).join(&m.name);
    crate::fsutil::replace_dir(stage.path(), &dst).ctx("publishing", &dst)?;
    let _ = stage.keep();
    let rec = ImageRecord {
        name: m.name.clone(),
        distro: m.distro.clone(),
        arch: m.arch.clone(),
        kernel_ref: m.kernel_ref.clone(),
        dir: dst.display().to_string(),
        rootfs_bytes: m.rootfs_bytes,
        work_seed_bytes: m.work_seed_bytes,
        rootfs_sha256: m.rootfs_sha256.clone(),
        work_seed_sha256: m.work_seed_sha256.clone(),
        source,
        created_at_unix: now_unix(),
    };
    ctx.store.put_image(&rec)?;
    Ok(rec)
}

/// `image import <bundle> [--name]`.
pub async fn import(ctx: Arc<Ctx>, file: String, name: Option<String>) -> Result<Reply, RpcError> {
    if let Some(n) = &name {
        validate_name(n)?;
    }
    let path = PathBuf::from(&file);
    if !path.is_file() {
        return Err(RpcError::bad_request(format!(
            "{file} does not exist or is not a file"
        )));
    }
    tokio::task::spawn_blocking(move || -> Result<Reply, RpcError> {
        let dir = images_dir(&ctx);
        let stage =
            crate::fsutil::TempDir::new_in(&dir, "import").ctx("staging an import in", &dir)?;
        let mut m = bundle::import(&path, stage.path())?;
        if let Some(n) = name {
            m.name = n;
        }
        validate_name(&m.name)?;
        if ctx.store.get_image(&m.name)?.is_some() {
            return Err(RpcError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "an image named {:?} exists; delete it first or import with --name",
                    m.name
                ),
            ));
        }
        let rec = publish(&ctx, stage, &m, format!("imported:{file}"))?;
        view(&ctx, &rec)
    })
    .await?
}

/// `image export <name> -o <file>`: written under a temp name, then renamed.
pub async fn export(ctx: Arc<Ctx>, name: String, file: String) -> Result<Reply, RpcError> {
    validate_name(&name)?;
    let rec = get(&ctx, &name)?;
    let out = PathBuf::from(&file);
    tokio::task::spawn_blocking(move || -> Result<Reply, RpcError> {
        let dir = PathBuf::from(&rec.dir);
        let mpath = dir.join(MANIFEST);
        let m: ImageManifest = serde_json::from_slice(
            &crate::fsutil::read_capped(&mpath, crate::kernel::MAX_MANIFEST)
                .ctx("reading", &mpath)?,
        )
        .map_err(|e| RpcError::failed(format!("{}: {e}", mpath.display())))?;
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = parent.join(format!(
            ".{}.partial",
            out.file_name().unwrap_or_default().to_string_lossy()
        ));
        let bytes = match bundle::export(&dir, &m, &tmp) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(RpcError::failed(format!("writing {file}: {e}")));
            }
        };
        std::fs::rename(&tmp, &out).ctx("renaming the bundle to", &out)?;
        Ok(Reply::Exported { file, bytes })
    })
    .await?
}

pub fn list(ctx: &Ctx) -> Result<Reply, RpcError> {
    let default = default_image(ctx)?;
    let mut v = ctx.store.list_images()?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Reply::Images(
        v.iter()
            .map(|i| views::image(i, i.name == default))
            .collect(),
    ))
}

pub fn show(ctx: &Ctx, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    view(ctx, &get(ctx, name)?)
}

/// `image delete`: refused while a VM uses the image.
pub fn delete(ctx: &Ctx, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let rec = get(ctx, name)?;
    let vms = ctx.store.list_vms()?.into_iter();
    super::refuse_if_used(
        &format!("image {name}"),
        "VM(s)",
        vms.filter(|v| v.image == name).map(|v| v.name),
    )?;
    ctx.store.delete_image(name)?;
    let dir = Path::new(&rec.dir);
    crate::fsutil::remove_all(dir).ctx("removing", dir)?;
    Ok(Reply::Done)
}

pub fn promote(ctx: &Ctx, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let rec = get(ctx, name)?;
    ctx.store.set_setting(DEFAULT_IMAGE_KEY, name)?;
    Ok(Reply::Image(views::image(&rec, true)))
}

/// `image pull <reference> [--name N] [--insecure]`: the registry's image
/// for linux/amd64, its layers verified and applied, the agent added, an
/// ext4 root and a work seed published as image `name`. Concurrent pulls
/// of one name share one job.
pub async fn pull(
    ctx: Arc<Ctx>,
    reference: String,
    name: Option<String>,
    insecure: bool,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    if let Some(entry) = catalog_for(&ctx, &reference)?.image(&reference).cloned() {
        return pull_entry(ctx, entry, name, events).await;
    }
    let r = image::oci::parse(&reference).map_err(|e| {
        RpcError::bad_request(format!(
            "{e}; or a catalog name ({})",
            catalog(&ctx)
                .map(|c| c
                    .images
                    .iter()
                    .map(|i| i.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ))
    })?;
    let name = name.unwrap_or_else(|| image::oci::default_name(&r));
    validate_name(&name)?;
    refuse_recipe_name(&name)?;
    let jobs = ctx.images.clone();
    jobs.run(
        &name.clone(),
        events,
        Box::new(move |p| {
            Box::pin(async move {
                let kernel = recipe::DEFAULT_KERNEL;
                let rec = pull_work(&ctx, &reference, &name, kernel, insecure, p).await?;
                view(&ctx, &rec)
            })
        }),
    )
    .await
}

async fn pull_work(
    ctx: &Arc<Ctx>,
    reference: &str,
    name: &str,
    kernel: &str,
    insecure: bool,
    progress: Progress,
) -> Result<ImageRecord, RpcError> {
    let _in_use = cache_in_use(ctx).await?;
    let failed = |e: image::oci::OciError| RpcError::failed(e.to_string());
    progress.stage("pull", reference.to_string(), false);
    let blobs = cache_dir(ctx).join("oci-blobs");
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let p2 = progress.clone();
    let fetched = image::oci::fetch(reference, insecure, home.as_deref(), &blobs, &move |l| {
        p2.log(l)
    })
    .await
    .map_err(failed)?;
    progress.stage(
        "pull",
        format!(
            "{} layers, manifest {}",
            fetched.layers.len(),
            fetched.digest
        ),
        true,
    );
    progress.stage("assemble", "layers into an ext4 root", false);
    let cache = cache_dir(ctx);
    let dir = images_dir(ctx);
    let (m, stage) = {
        let (name, fetched, kernel) = (name.to_string(), fetched.clone(), kernel.to_string());
        tokio::task::spawn_blocking(
            move || -> Result<(ImageManifest, crate::fsutil::TempDir), RpcError> {
                let work =
                    crate::fsutil::TempDir::new_in(&cache, "oci").ctx("staging in", &cache)?;
                let root = work.path().join("root");
                std::fs::create_dir(&root).ctx("creating", &root)?;
                let tree = image::oci::assemble(&fetched, &root)
                    .map_err(|e| RpcError::failed(e.to_string()))?;
                let stage =
                    crate::fsutil::TempDir::new_in(&dir, &name).ctx("staging an image in", &dir)?;
                // Room for the inode tables of a tree of many small files
                // too (mkfs_ext4 gives it twice its count of inodes).
                let content = image::layers::tree_bytes(&root) + tree.meta.len() as u64 * 512;
                let root_mib = (content + content / 2 + (256 << 20)).div_ceil(64 << 20) * 64;
                let (rootfs, seed) = (stage.path().join(ROOTFS), stage.path().join(WORK_SEED));
                let lerr = |e: image::layers::LayerError| RpcError::failed(e.0);
                image::layers::make_ext4(
                    &root,
                    &tree,
                    &rootfs,
                    root_mib,
                    "banger-root",
                    work.path(),
                )
                .map_err(lerr)?;
                let empty = work.path().join("seed");
                std::fs::create_dir(&empty).ctx("creating", &empty)?;
                image::layers::make_ext4(
                    &empty,
                    &image::layers::Tree::default(),
                    &seed,
                    64,
                    "banger-work",
                    work.path(),
                )
                .map_err(lerr)?;
                // No SSH server: `vm ssh` says so at once rather than wait.
                if !image::layers::has_sshd(&root) {
                    let marker = stage.path().join(NO_SSHD);
                    crate::fsutil::write_synced(&marker, b"").ctx("writing", &marker)?;
                }
                // The blobs this image came from: `image cache prune` keeps them.
                let used = OciBlobs {
                    manifest: fetched.digest.clone(),
                    blobs: fetched.layers.iter().map(|l| l.digest.clone()).collect(),
                };
                let upath = stage.path().join(OCI_BLOBS);
                let json = serde_json::to_vec_pretty(&used).map_err(std::io::Error::other);
                crate::fsutil::write_synced(&upath, &json.ctx("encoding", &upath)?)
                    .ctx("writing", &upath)?;
                let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                let m = ImageManifest {
                    name: name.clone(),
                    distro: "oci".into(),
                    arch: "x86_64".into(),
                    kernel_ref: kernel,
                    rootfs_bytes: size(&rootfs),
                    work_seed_bytes: size(&seed),
                    rootfs_sha256: sha256_file(&rootfs).ctx("hashing", &rootfs)?,
                    work_seed_sha256: sha256_file(&seed).ctx("hashing", &seed)?,
                };
                Ok((m, stage))
            },
        )
        .await??
    };
    progress.stage(
        "assemble",
        format!("root {}", crate::size::format_size(m.rootfs_bytes)),
        true,
    );
    // The kernel it pairs with is there before the image is listed.
    super::kernels::ensure(ctx, &m.kernel_ref, &m.kernel_ref, &progress).await?;
    let source = format!("oci:{reference}@{}", fetched.digest);
    let ctx2 = ctx.clone();
    let rec = tokio::task::spawn_blocking(move || publish(&ctx2, stage, &m, source)).await??;
    progress.stage("publish", format!("image {}", rec.name), true);
    Ok(rec)
}

/// Present in a pulled image's directory when the image has no sshd.
pub const NO_SSHD: &str = "no-sshd";

/// Whether image `rec` is known to have no SSH server.
pub fn lacks_sshd(rec: &ImageRecord) -> bool {
    Path::new(&rec.dir).join(NO_SSHD).exists()
}

/// The file in a pulled image's directory naming the blobs it came from.
const OCI_BLOBS: &str = "oci-blobs.json";

#[derive(Debug, Serialize, Deserialize)]
struct OciBlobs {
    manifest: String,
    blobs: Vec<String>,
}

/// The catalog as it is now (the user's file is read on every call).
pub fn catalog(ctx: &Ctx) -> Result<crate::catalog::Catalog, RpcError> {
    crate::catalog::load(&ctx.layout.config_dir).map_err(|e| RpcError::bad_request(e.to_string()))
}

/// The catalog for looking up `name`: a broken user file fails only the
/// names it could hold — a built-in name or an OCI reference still works
/// (with the file's error in the log).
pub fn catalog_for(ctx: &Ctx, name: &str) -> Result<crate::catalog::Catalog, RpcError> {
    match catalog(ctx) {
        Ok(c) => Ok(c),
        Err(e) => {
            let b = crate::catalog::builtin();
            if b.image(name).is_some() || b.kernel(name).is_some() || name.contains('/') {
                tracing::warn!("ignoring the user catalog for {name}: {}", e.message);
                Ok(b)
            } else {
                Err(e)
            }
        }
    }
}

/// `image pull <catalog name>`: a recipe is built, an OCI entry pulled by
/// its pinned digest, a bundle downloaded, verified and imported.
async fn pull_entry(
    ctx: Arc<Ctx>,
    entry: crate::catalog::ImageEntry,
    name: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    use crate::catalog::ImageSource;
    let name = name.unwrap_or_else(|| entry.name.clone());
    validate_name(&name)?;
    if let ImageSource::Recipe { recipe } = entry.source.clone() {
        if name != recipe {
            return Err(RpcError::bad_request(format!(
                "{} is built from its recipe under its own name; drop --name",
                entry.name
            )));
        }
        return build(ctx, recipe, false, events).await;
    }
    refuse_recipe_name(&name)?;
    let jobs = ctx.images.clone();
    jobs.run(
        &name.clone(),
        events,
        Box::new(move |p| {
            Box::pin(async move {
                let rec = match entry.source.clone() {
                    ImageSource::Oci { reference } => {
                        match up_to_date(&ctx, &name, &format!("oci:{reference}@"))? {
                            Some(r) => r,
                            None => {
                                pull_work(&ctx, &reference, &name, &entry.kernel, false, p).await?
                            }
                        }
                    }
                    ImageSource::Bundle { url, sha256 } => {
                        bundle_work(&ctx, &entry, &url, &sha256, &name, p).await?
                    }
                    ImageSource::Recipe { .. } => {
                        return Err(RpcError::failed("a recipe entry is built, not pulled"))
                    }
                };
                view(&ctx, &rec)
            })
        }),
    )
    .await
}

/// A pull may not take a recipe image's name (the next build would
/// replace it).
fn refuse_recipe_name(name: &str) -> Result<(), RpcError> {
    if recipe::find(name).is_some() {
        return Err(RpcError::bad_request(format!(
            "{name} is the name of a recipe image; pull under another name (--name)"
        )));
    }
    Ok(())
}

/// The image `name` when it came from `source_prefix` (nothing to pull);
/// an error when that name holds some other image.
fn up_to_date(ctx: &Ctx, name: &str, source_prefix: &str) -> Result<Option<ImageRecord>, RpcError> {
    match ctx.store.get_image(name)? {
        Some(i) if i.source.starts_with(source_prefix) => Ok(Some(i)),
        Some(i) => Err(RpcError::new(
            ErrorCode::AlreadyExists,
            format!(
                "an image named {name:?} exists (from {}); delete it first (banger image delete {name}) or pull with --name",
                i.source
            ),
        )),
        None => Ok(None),
    }
}

/// A user catalog's bundle: downloaded (verified against the pinned sha256,
/// content-addressed in the cache), then imported like `image import`.
async fn bundle_work(
    ctx: &Arc<Ctx>,
    entry: &crate::catalog::ImageEntry,
    url: &str,
    sha256: &str,
    name: &str,
    progress: Progress,
) -> Result<ImageRecord, RpcError> {
    let source = format!("catalog:{}@sha256:{sha256}", entry.name);
    if let Some(r) = up_to_date(ctx, name, &source)? {
        progress.log(format!("image {name} is up to date"));
        return Ok(r);
    }
    // The kernel it pairs with must be one banger can get, before the
    // download.
    if ctx.store.get_kernel(&entry.kernel)?.is_none()
        && catalog(ctx)?.kernel(&entry.kernel).is_none()
    {
        return Err(RpcError::bad_request(format!(
            "catalog image {} pairs with kernel {:?}, which is neither here nor in the catalog (banger kernel catalog); fix its `kernel` in {}",
            entry.name, entry.kernel, entry.origin
        )));
    }
    let _in_use = cache_in_use(ctx).await?;
    progress.stage("download", url.to_string(), false);
    let dir = cache_dir(ctx).join("bundles");
    let p2 = progress.clone();
    let file = image::download::fetch_verified(url, sha256, entry.size, &dir, &move |l| p2.log(l))
        .await
        .map_err(RpcError::failed)?;
    progress.stage("download", "sha256 verified", true);
    super::kernels::ensure(ctx, &entry.kernel, &entry.kernel, &progress).await?;
    let (ctx2, name, kernel) = (ctx.clone(), name.to_string(), entry.kernel.clone());
    let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, RpcError> {
        let dir = images_dir(&ctx2);
        let stage =
            crate::fsutil::TempDir::new_in(&dir, "import").ctx("staging an import in", &dir)?;
        let mut m = bundle::import(&file, stage.path())?;
        m.name = name;
        m.kernel_ref = kernel;
        publish(&ctx2, stage, &m, source)
    })
    .await??;
    progress.stage("publish", format!("image {}", rec.name), true);
    Ok(rec)
}

/// What `vm create --image X` boots: an image here, a recipe (built), a
/// catalog entry or an OCI reference (pulled on first use, coalesced with
/// every other create asking for it). Returns the image's name.
pub async fn ensure_for_vm(
    ctx: &Arc<Ctx>,
    wanted: &str,
    progress: &Progress,
) -> Result<ImageRecord, RpcError> {
    if image::validate_image_name(wanted).is_ok() {
        if recipe::find(wanted).is_some() || ctx.store.get_image(wanted)?.is_some() {
            return ensure(ctx, wanted, progress).await;
        }
        if catalog_for(ctx, wanted)?.image(wanted).is_some() {
            progress.log(format!(
                "image {wanted} is not here yet; pulling it from the catalog"
            ));
            let (tx, fwd) = progress.forwarder("");
            let r = pull(ctx.clone(), wanted.to_string(), None, false, tx).await;
            let _ = fwd.await;
            r?;
            return get(ctx, wanted);
        }
        if !wanted.contains(['/', ':', '@']) {
            return get(ctx, wanted);
        }
    }
    let r = image::oci::parse(wanted).map_err(|e| {
        RpcError::bad_request(format!(
            "--image {wanted:?} is not an image here, a catalog name or an image reference: {e}"
        ))
    })?;
    let mut name = image::oci::default_name(&r);
    // A recipe's or catalog entry's name stays theirs: the reference gets
    // the name with a short digest of itself (the same every time).
    if recipe::find(&name).is_some() || catalog_for(ctx, wanted)?.image(&name).is_some() {
        let tag = &crate::digest::sha256_hex(wanted.as_bytes())[..8];
        name = format!(
            "{}-{tag}",
            &name[..name.len().min(crate::names::MAX_NAME_LEN - 9)]
        );
    }
    validate_name(&name)?;
    let source_prefix = format!("oci:{wanted}@");
    if let Some(i) = ctx.store.get_image(&name)? {
        if i.source.starts_with(&source_prefix) {
            return Ok(i);
        }
        return Err(RpcError::new(
            ErrorCode::AlreadyExists,
            format!(
                "--image {wanted} would be stored as {name:?}, which holds another image ({}); pull it under another name: banger image pull {wanted} --name <name>",
                i.source
            ),
        ));
    }
    progress.log(format!(
        "image {wanted} is not here yet; pulling it as {name}"
    ));
    let (tx, fwd) = progress.forwarder("");
    let r = pull(
        ctx.clone(),
        wanted.to_string(),
        Some(name.clone()),
        false,
        tx,
    )
    .await;
    let _ = fwd.await;
    r?;
    // Pulls of one name share a job: make sure it was this reference's.
    let i = get(ctx, &name)?;
    if !i.source.starts_with(&source_prefix) {
        return Err(RpcError::new(
            ErrorCode::AlreadyExists,
            format!(
                "another reference was pulled as {name:?} at the same time ({}); pull {wanted} under a name of its own: banger image pull {wanted} --name <name>",
                i.source
            ),
        ));
    }
    Ok(i)
}

/// `image cache prune [--dry-run]`: the paths and sizes of build entries, OCI blobs and bundle
/// downloads no image (or kernel) here came from. Refused while any build
/// or pull sharing the cache runs (what it fetched is not recorded yet).
/// Images pulled before banger recorded their blobs keep every blob.
pub async fn cache_prune(ctx: Arc<Ctx>, dry_run: bool) -> Result<Vec<(String, u64)>, RpcError> {
    let cache = cache_dir(&ctx);
    tokio::task::spawn_blocking(move || -> Result<Vec<(String, u64)>, RpcError> {
        // No build or pull may be running: what it fetched is not
        // recorded until it publishes. (The records are read after.)
        let _alone = match open_and_lock(&cache.join(IN_USE), nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err(e) if e.is(std::io::ErrorKind::WouldBlock) => {
                return Err(RpcError::failed(
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
        let consider = |path: PathBuf, out: &mut Vec<(String, u64)>| -> Result<(), RpcError> {
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
