//! Image requests: build (coalesced per name, cached by inputs), import,
//! export, list, show, delete, promote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::actors::helper_link::call_helper;
use crate::actors::job_manager::{run_job, work, Progress};
use crate::actors::Services;
use crate::digest::sha256_file;
use crate::image::{self, bundle, recipe, ImageManifest, MANIFEST, ROOTFS, WORK_SEED};
use crate::protocol::cli::{Event, Reply};
use crate::protocol::helper::{PrivReply, PrivRequest, RootfsSpec};
use crate::protocol::{ErrorCode, RpcError};
use crate::store::model::now_unix;
use crate::store::{ImageRecord, DEFAULT_IMAGE_KEY};

fn store_err(e: crate::store::StoreError) -> RpcError {
    RpcError::failed(e.to_string())
}
fn io_err(what: &str) -> impl Fn(std::io::Error) -> RpcError + '_ {
    move |e| RpcError::failed(format!("{what}: {e}"))
}
fn join_err(e: tokio::task::JoinError) -> RpcError {
    RpcError::failed(format!("internal task failed: {e}"))
}

pub fn images_dir(svc: &Services) -> PathBuf {
    svc.layout.state_dir.join("images")
}
fn cache_dir(svc: &Services) -> PathBuf {
    svc.layout.cache_dir.join("images")
}

fn validate_name(name: &str) -> Result<(), RpcError> {
    image::validate_image_name(name).map_err(RpcError::bad_request)
}

/// The default image name.
pub fn default_image(svc: &Services) -> Result<String, RpcError> {
    Ok(svc
        .store
        .setting(DEFAULT_IMAGE_KEY)
        .map_err(store_err)?
        .unwrap_or_else(|| recipe::DEFAULT_IMAGE.to_string()))
}

/// Looks an image up or says how to get it.
pub fn get(svc: &Services, name: &str) -> Result<ImageRecord, RpcError> {
    svc.store
        .get_image(name)
        .map_err(store_err)?
        .ok_or_else(|| {
            let hint = if recipe::find(name).is_some() {
                format!("build it with `banger image build {name}`")
            } else {
                format!(
                    "see `banger image list`; buildable images: {}",
                    recipe::names()
                )
            };
            RpcError::not_found(format!("no image named {name:?}; {hint}"))
        })
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
    svc: Arc<Services>,
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
    let manager = svc
        .images
        .get()
        .ok_or_else(|| RpcError::new(ErrorCode::Busy, "the image manager is restarting; retry"))?;
    run_job(
        &manager,
        &name.clone(),
        events,
        work(move |p| async move {
            let svc2 = svc.clone();
            let rec = build_work(svc, recipe, rebuild, p).await?;
            Ok(Reply::Image(rec.view(default_image(&svc2)? == rec.name)))
        }),
    )
    .await
}

/// Makes sure image `name` exists, building it (coalesced) when it has a
/// recipe. Used by VM creation.
pub async fn ensure(
    svc: &Arc<Services>,
    name: &str,
    progress: &Progress,
) -> Result<ImageRecord, RpcError> {
    if let Some(i) = svc.store.get_image(name).map_err(store_err)? {
        return Ok(i);
    }
    if recipe::find(name).is_none() {
        return get(svc, name);
    }
    progress.log(format!("image {name} is not here yet; building it"));
    let (tx, mut rx) = mpsc::channel(64);
    let p = progress.clone();
    let fwd = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Stage {
                    stage,
                    detail,
                    done,
                    ..
                } => p.stage(&stage, detail, done),
                Event::Log(l) => p.log(l),
                _ => {}
            }
        }
    });
    let r = build(svc.clone(), name.to_string(), false, tx).await;
    let _ = fwd.await;
    r?;
    get(svc, name)
}

async fn build_work(
    svc: Arc<Services>,
    recipe: &'static recipe::Recipe,
    rebuild: bool,
    progress: Progress,
) -> Result<ImageRecord, RpcError> {
    let kernel =
        super::kernels::ensure(&svc, recipe.kernel_ref, recipe.kernel_source, &progress).await?;
    let km = crate::kernel::read_manifest(Path::new(&kernel.dir))
        .map_err(|e| RpcError::failed(e.to_string()))?;
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
        if let Some(existing) = svc.store.get_image(recipe.name).map_err(store_err)? {
            if existing.source == source {
                progress.log(format!("image {} is up to date", recipe.name));
                return Ok(existing);
            }
        }
    }
    let cache = cache_dir(&svc);
    std::fs::create_dir_all(&cache).map_err(io_err("creating the image cache"))?;
    let entry_dir = cache.join(&key);
    // One builder per cache key across processes sharing this cache.
    let lock_path = cache.join(format!("{key}.lock"));
    let lock = tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(join_err)?
    .map_err(io_err("locking the image cache"))?;
    let entry = match (rebuild, read_cache(&entry_dir)) {
        (false, Some(e)) => {
            progress.stage("cache", format!("using the cached build {key}"), true);
            e
        }
        _ => {
            for stale in std::fs::read_dir(&cache)
                .map_err(io_err("reading the cache"))?
                .flatten()
            {
                if stale
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".tmp-{key}-"))
                {
                    let _ = crate::fsutil::remove_all(&stale.path());
                }
            }
            let out = crate::fsutil::TempDir::new_in(&cache, &key)
                .map_err(io_err("creating a build directory"))?;
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
                kernel_modules: Some(modules_dir.clone()),
                kernel_version: Some(km.kernel_version.clone()),
                out_dir: out.path().to_path_buf(),
                package_cache: true,
            };
            let op = crate::protocol::new_op_id();
            let built = match call_helper(&svc.helper, &op, PrivRequest::BuildRootfs(spec)).await? {
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
            let e = tokio::task::spawn_blocking(move || -> std::io::Result<CacheEntry> {
                let e = CacheEntry {
                    key: key.clone(),
                    rootfs_sha256: sha256_file(&dir.join(ROOTFS))?,
                    work_seed_sha256: sha256_file(&dir.join(WORK_SEED))?,
                    rootfs_bytes: std::fs::metadata(dir.join(ROOTFS))?.len(),
                    work_seed_bytes: std::fs::metadata(dir.join(WORK_SEED))?.len(),
                    bootstrap_ms: built.bootstrap_ms,
                    assemble_ms: built.assemble_ms,
                };
                crate::fsutil::write_synced(
                    &dir.join("build.json"),
                    &serde_json::to_vec_pretty(&e)?,
                )?;
                Ok(e)
            })
            .await
            .map_err(join_err)?
            .map_err(io_err("recording the build"))?;
            crate::fsutil::replace_dir(out.path(), &entry_dir)
                .map_err(io_err("storing the build in the cache"))?;
            let _ = out.keep();
            progress.stage("assemble", "done", true);
            e
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
    let svc2 = svc.clone();
    let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, RpcError> {
        let dir = images_dir(&svc2);
        let stage =
            crate::fsutil::TempDir::new_in(&dir, &m.name).map_err(io_err("staging the image"))?;
        for f in [ROOTFS, WORK_SEED] {
            crate::fsutil::link_or_copy(&entry_dir.join(f), &stage.path().join(f))
                .map_err(io_err("placing the image"))?;
        }
        publish(&svc2, stage, &m, source)
    })
    .await
    .map_err(join_err)??;
    progress.stage("publish", "done", true);
    Ok(rec)
}

/// Writes the manifest into `stage`, publishes it as the image directory and
/// records it: nothing is visible before the record is written.
fn publish(
    svc: &Services,
    stage: crate::fsutil::TempDir,
    m: &ImageManifest,
    source: String,
) -> Result<ImageRecord, RpcError> {
    let json = serde_json::to_vec_pretty(m).map_err(|e| RpcError::failed(e.to_string()))?;
    crate::fsutil::write_synced(&stage.path().join(MANIFEST), &json)
        .map_err(io_err("writing the manifest"))?;
    let dst = images_dir(svc).join(&m.name);
    crate::fsutil::replace_dir(stage.path(), &dst).map_err(io_err("publishing the image"))?;
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
    svc.store.put_image(&rec).map_err(store_err)?;
    Ok(rec)
}

/// `image import <bundle> [--name]`.
pub async fn import(
    svc: Arc<Services>,
    file: String,
    name: Option<String>,
) -> Result<Reply, RpcError> {
    if let Some(n) = &name {
        validate_name(n)?;
    }
    let path = PathBuf::from(&file);
    if !path.is_file() {
        return Err(RpcError::bad_request(format!(
            "{file} does not exist or is not a file"
        )));
    }
    let svc2 = svc.clone();
    tokio::task::spawn_blocking(move || -> Result<Reply, RpcError> {
        let dir = images_dir(&svc2);
        let stage =
            crate::fsutil::TempDir::new_in(&dir, "import").map_err(io_err("staging the import"))?;
        let mut m = bundle::import(&path, stage.path()).map_err(|e| match e {
            bundle::BundleError::Io(io) => RpcError::failed(io.to_string()),
            other => RpcError::bad_request(other.to_string()),
        })?;
        if let Some(n) = name {
            m.name = n;
        }
        validate_name(&m.name)?;
        if svc2.store.get_image(&m.name).map_err(store_err)?.is_some() {
            return Err(RpcError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "an image named {:?} exists; delete it first or import with --name",
                    m.name
                ),
            ));
        }
        let rec = publish(&svc2, stage, &m, format!("imported:{file}"))?;
        let default = default_image(&svc2)? == rec.name;
        Ok(Reply::Image(rec.view(default)))
    })
    .await
    .map_err(join_err)?
}

/// `image export <name> -o <file>`: written under a temp name, then renamed.
pub async fn export(svc: Arc<Services>, name: String, file: String) -> Result<Reply, RpcError> {
    validate_name(&name)?;
    let rec = get(&svc, &name)?;
    let out = PathBuf::from(&file);
    tokio::task::spawn_blocking(move || -> Result<Reply, RpcError> {
        let dir = PathBuf::from(&rec.dir);
        let m: ImageManifest = serde_json::from_slice(
            &std::fs::read(dir.join(MANIFEST)).map_err(io_err("reading the manifest"))?,
        )
        .map_err(|e| RpcError::failed(e.to_string()))?;
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = parent.join(format!(
            ".{}.partial",
            out.file_name().unwrap_or_default().to_string_lossy()
        ));
        let res = bundle::export(&dir, &m, &tmp);
        let bytes = match res {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(RpcError::failed(format!("writing {file}: {e}")));
            }
        };
        std::fs::rename(&tmp, &out).map_err(io_err("renaming the bundle"))?;
        Ok(Reply::Exported { file, bytes })
    })
    .await
    .map_err(join_err)?
}

pub fn list(svc: &Services) -> Result<Reply, RpcError> {
    let default = default_image(svc)?;
    let mut v = svc.store.list_images().map_err(store_err)?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Reply::Images(
        v.iter().map(|i| i.view(i.name == default)).collect(),
    ))
}

pub fn show(svc: &Services, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let rec = get(svc, name)?;
    Ok(Reply::Image(rec.view(default_image(svc)? == rec.name)))
}

/// `image delete`: refused while a VM uses the image.
pub fn delete(svc: &Services, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let rec = get(svc, name)?;
    let vms: Vec<String> = svc
        .store
        .list_vms()
        .map_err(store_err)?
        .into_iter()
        .filter(|v| v.image == name)
        .map(|v| v.name)
        .collect();
    if !vms.is_empty() {
        return Err(RpcError::bad_request(format!(
            "image {name} is used by VM(s) {}; delete those first",
            vms.join(", ")
        )));
    }
    svc.store.delete_image(name).map_err(store_err)?;
    crate::fsutil::remove_all(Path::new(&rec.dir)).map_err(io_err("removing the image files"))?;
    Ok(Reply::Done)
}

pub fn promote(svc: &Services, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let rec = get(svc, name)?;
    svc.store
        .set_setting(DEFAULT_IMAGE_KEY, name)
        .map_err(store_err)?;
    Ok(Reply::Image(rec.view(true)))
}
