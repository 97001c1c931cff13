//! Kernels: pull (coalesced per name), import, list, show, delete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{views, Ctx, Progress};
use crate::fsutil::IoContext;
use crate::kernel;
use crate::protocol::cli::{Event, Reply};
use crate::protocol::{ErrorCode, RpcError};
use crate::store::model::now_unix;
use crate::store::KernelRecord;

/// Kernel sources `kernel pull` knows.
pub const SOURCES: &[&str] = &["debian-cloud"];

pub fn kernels_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.state_dir.join("kernels")
}

fn validate_name(name: &str) -> Result<(), RpcError> {
    crate::image::validate_image_name(name)
        .map_err(|e| RpcError::bad_request(e.replace("image name", "kernel name")))
}

/// Looks a kernel up or says how to get it.
pub fn get(ctx: &Ctx, name: &str) -> Result<KernelRecord, RpcError> {
    ctx.store.get_kernel(name)?.ok_or_else(|| {
        RpcError::not_found(format!(
            "no kernel named {name:?}; see `banger kernel list`, or get one with `banger kernel pull debian-cloud`"
        ))
    })
}

/// `kernel pull <source> [--name] [--version]`, coalesced per name.
pub async fn pull(
    ctx: Arc<Ctx>,
    source: String,
    name: String,
    version: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    validate_name(&name)?;
    if !SOURCES.contains(&source.as_str()) {
        return Err(RpcError::not_found(format!(
            "unknown kernel source {source:?}; known sources: {}; or use `banger kernel import <name> --from <dir>`",
            SOURCES.join(", ")
        )));
    }
    let jobs = ctx.kernels.clone();
    let key = name.clone();
    jobs.run(
        &key,
        events,
        Box::new(move |p| {
            Box::pin(async move {
                pull_work(ctx, name, version, p)
                    .await
                    .map(|k| Reply::Kernel(views::kernel(&k)))
            })
        }),
    )
    .await
}

/// Makes sure kernel `name` exists, pulling it from `source` (coalesced with
/// any pull in flight) when it does not.
pub async fn ensure(
    ctx: &Arc<Ctx>,
    name: &str,
    source: &str,
    progress: &Progress,
) -> Result<KernelRecord, RpcError> {
    match ctx.store.get_kernel(name)? {
        Some(k) if !stale(&k) => return Ok(k),
        Some(_) => progress.log(format!(
            "kernel {name} has an older banger's initramfs; pulling it again from {source}"
        )),
        None => progress.log(format!(
            "kernel {name} is not here yet; pulling it from {source}"
        )),
    }
    let (tx, fwd) = progress.forwarder("kernel ");
    let r = pull(ctx.clone(), source.to_string(), name.to_string(), None, tx).await;
    let _ = fwd.await;
    r?;
    get(ctx, name)
}

/// A kernel pulled through apt whose initramfs an older banger built (its
/// boot would not start this banger's agent).
pub fn stale(k: &KernelRecord) -> bool {
    k.source.starts_with("apt:")
        && !k
            .source
            .ends_with(&format!(";initramfs={}", kernel::initramfs::REVISION))
}

async fn pull_work(
    ctx: Arc<Ctx>,
    name: String,
    version: Option<String>,
    progress: Progress,
) -> Result<KernelRecord, RpcError> {
    let package = tokio::task::spawn_blocking({
        let v = version.clone();
        move || kernel::debian::resolve_package(v.as_deref())
    })
    .await??;
    if let Some(existing) = ctx.store.get_kernel(&name)? {
        if kernel::debian::up_to_date(&existing.source, &package) {
            progress.log(format!(
                "kernel {name} is up to date ({})",
                existing.kernel_version
            ));
            return Ok(existing);
        }
    }
    let dir = kernels_dir(&ctx);
    let cache = ctx.layout.cache_dir.join("downloads");
    let ctx2 = ctx.clone();
    let p = progress.clone();
    let rec = tokio::task::spawn_blocking(move || -> Result<KernelRecord, RpcError> {
        let stage = crate::fsutil::TempDir::new_in(&dir, &name).ctx("staging a kernel in", &dir)?;
        let pulled =
            kernel::debian::pull(&package, &cache, stage.path(), |s, d| p.stage(s, d, false))?;
        crate::fsutil::sweep_temp(stage.path());
        let m =
            kernel::write_manifest(stage.path(), &name, &pulled.kernel_version, &pulled.source)?;
        publish(&ctx2, stage, &dir.join(&name), &m)
    })
    .await??;
    progress.stage(
        "kernel",
        format!("{} ready ({})", rec.name, rec.kernel_version),
        true,
    );
    Ok(rec)
}

fn publish(
    ctx: &Ctx,
    stage: crate::fsutil::TempDir,
    dst: &Path,
    m: &kernel::KernelManifest,
) -> Result<KernelRecord, RpcError> {
    crate::fsutil::replace_dir(stage.path(), dst).ctx("publishing", dst)?;
    let _ = stage.keep();
    let b = kernel::BundlePaths::new(dst);
    let rec = KernelRecord {
        name: m.name.clone(),
        kernel_version: m.kernel_version.clone(),
        arch: m.arch.clone(),
        source: m.source.clone(),
        dir: dst.display().to_string(),
        vmlinux_sha256: m.vmlinux_sha256.clone(),
        has_initrd: b.initrd().exists(),
        has_modules: b.modules().exists(),
        created_at_unix: now_unix(),
    };
    ctx.store.put_kernel(&rec)?;
    Ok(rec)
}

/// `kernel import <name> --from <dir>`.
pub async fn import(ctx: Arc<Ctx>, name: String, from: String) -> Result<Reply, RpcError> {
    validate_name(&name)?;
    if ctx.store.get_kernel(&name)?.is_some() {
        return Err(RpcError::new(
            ErrorCode::AlreadyExists,
            format!("a kernel named {name:?} exists; delete it first (banger kernel delete {name}) or pick another name"),
        ));
    }
    let from = PathBuf::from(from);
    let dir = kernels_dir(&ctx);
    tokio::task::spawn_blocking(move || {
        let src = kernel::discover(&from)?;
        let stage = crate::fsutil::TempDir::new_in(&dir, &name).ctx("staging a kernel in", &dir)?;
        let version = kernel::stage_import(&src, stage.path())?;
        let m = kernel::write_manifest(
            stage.path(),
            &name,
            &version,
            &format!("import:{}", from.display()),
        )?;
        publish(&ctx, stage, &dir.join(&name), &m).map(|k| Reply::Kernel(views::kernel(&k)))
    })
    .await?
}

pub fn list(ctx: &Ctx) -> Result<Reply, RpcError> {
    let mut v = ctx.store.list_kernels()?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Reply::Kernels(v.iter().map(views::kernel).collect()))
}

pub fn show(ctx: &Ctx, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    Ok(Reply::Kernel(views::kernel(&get(ctx, name)?)))
}

/// `kernel delete`: refused while an image or VM references the kernel.
pub fn delete(ctx: &Ctx, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let k = get(ctx, name)?;
    let images = ctx.store.list_images()?.into_iter();
    super::refuse_if_used(
        &format!("kernel {name}"),
        "image(s)",
        images.filter(|i| i.kernel_ref == name).map(|i| i.name),
    )?;
    let vms = ctx.store.list_vms()?.into_iter();
    super::refuse_if_used(
        &format!("kernel {name}"),
        "VM(s)",
        vms.filter(|v| v.kernel == name).map(|v| v.name),
    )?;
    ctx.store.delete_kernel(name)?;
    let dir = Path::new(&k.dir);
    crate::fsutil::remove_all(dir).ctx("removing", dir)?;
    Ok(Reply::Done)
}
