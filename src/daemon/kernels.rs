//! Kernel requests: pull (coalesced per name), import, list, show, delete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::actors::job_manager::{run_job, work, Progress};
use crate::actors::Services;
use crate::kernel::{self, KernelError};
use crate::protocol::cli::{Event, Reply};
use crate::protocol::{ErrorCode, RpcError};
use crate::store::model::now_unix;
use crate::store::KernelRecord;

/// Kernel sources `kernel pull` knows.
pub const SOURCES: &[&str] = &["debian-cloud"];

fn kerr(e: KernelError) -> RpcError {
    match e {
        KernelError::BadInput(m) => RpcError::bad_request(m),
        other => RpcError::failed(other.to_string()),
    }
}

fn store_err(e: crate::store::StoreError) -> RpcError {
    RpcError::failed(e.to_string())
}

pub fn kernels_dir(svc: &Services) -> PathBuf {
    svc.layout.state_dir.join("kernels")
}

fn validate_name(name: &str) -> Result<(), RpcError> {
    crate::image::validate_image_name(name)
        .map_err(|e| RpcError::bad_request(e.replace("image name", "kernel name")))
}

/// Looks a kernel up or says how to get it.
pub fn get(svc: &Services, name: &str) -> Result<KernelRecord, RpcError> {
    svc.store.get_kernel(name).map_err(store_err)?.ok_or_else(|| {
        RpcError::not_found(format!(
            "no kernel named {name:?}; see `banger kernel list`, or get one with `banger kernel pull debian-cloud`"
        ))
    })
}

/// `kernel pull <source> [--name] [--version]`, coalesced per name.
pub async fn pull(
    svc: Arc<Services>,
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
    let manager = svc
        .kernels
        .get()
        .ok_or_else(|| RpcError::new(ErrorCode::Busy, "the kernel manager is restarting; retry"))?;
    let key = name.clone();
    run_job(
        &manager,
        &key,
        events,
        work(move |p| async move {
            pull_work(svc, name, version, p)
                .await
                .map(|k| Reply::Kernel(k.view()))
        }),
    )
    .await
}

/// Makes sure kernel `name` exists, pulling it from `source` (coalesced with
/// any pull in flight) when it does not.
pub async fn ensure(
    svc: &Arc<Services>,
    name: &str,
    source: &str,
    progress: &Progress,
) -> Result<KernelRecord, RpcError> {
    if let Some(k) = svc.store.get_kernel(name).map_err(store_err)? {
        return Ok(k);
    }
    progress.log(format!(
        "kernel {name} is not here yet; pulling it from {source}"
    ));
    let (tx, mut rx) = mpsc::channel(64);
    let p = progress.clone();
    let fwd = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Event::Stage {
                stage,
                detail,
                done,
                ..
            } = ev
            {
                p.stage(&format!("kernel {stage}"), detail, done);
            }
        }
    });
    let r = pull(svc.clone(), source.to_string(), name.to_string(), None, tx).await;
    let _ = fwd.await;
    r?;
    get(svc, name)
}

async fn pull_work(
    svc: Arc<Services>,
    name: String,
    version: Option<String>,
    progress: Progress,
) -> Result<KernelRecord, RpcError> {
    let package = tokio::task::spawn_blocking({
        let v = version.clone();
        move || kernel::debian::resolve_package(v.as_deref())
    })
    .await
    .map_err(|e| RpcError::failed(e.to_string()))?
    .map_err(kerr)?;
    if let Some(existing) = svc.store.get_kernel(&name).map_err(store_err)? {
        if existing.source.starts_with(&format!("apt:{package}=")) {
            progress.log(format!(
                "kernel {name} is up to date ({})",
                existing.kernel_version
            ));
            return Ok(existing);
        }
    }
    let dir = kernels_dir(&svc);
    let cache = svc.layout.cache_dir.join("downloads");
    let svc2 = svc.clone();
    let p = progress.clone();
    let rec = tokio::task::spawn_blocking(move || -> Result<KernelRecord, RpcError> {
        let stage = crate::fsutil::TempDir::new_in(&dir, &name)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        let pulled =
            kernel::debian::pull(&package, &cache, stage.path(), |s, d| p.stage(s, d, false))
                .map_err(kerr)?;
        crate::fsutil::sweep_temp(stage.path());
        let m = kernel::write_manifest(stage.path(), &name, &pulled.kernel_version, &pulled.source)
            .map_err(kerr)?;
        publish(&svc2, stage, &dir.join(&name), &m)
    })
    .await
    .map_err(|e| RpcError::failed(e.to_string()))??;
    progress.stage(
        "kernel",
        format!("{} ready ({})", rec.name, rec.kernel_version),
        true,
    );
    Ok(rec)
}

fn publish(
    svc: &Services,
    stage: crate::fsutil::TempDir,
    dst: &Path,
    m: &kernel::KernelManifest,
) -> Result<KernelRecord, RpcError> {
    crate::fsutil::replace_dir(stage.path(), dst)
        .map_err(|e| RpcError::failed(format!("publishing {}: {e}", dst.display())))?;
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
    svc.store.put_kernel(&rec).map_err(store_err)?;
    Ok(rec)
}

/// `kernel import <name> --from <dir>`.
pub async fn import(svc: Arc<Services>, name: String, from: String) -> Result<Reply, RpcError> {
    validate_name(&name)?;
    if svc.store.get_kernel(&name).map_err(store_err)?.is_some() {
        return Err(RpcError::new(
            ErrorCode::AlreadyExists,
            format!("a kernel named {name:?} exists; delete it first (banger kernel delete {name}) or pick another name"),
        ));
    }
    let from = PathBuf::from(from);
    let dir = kernels_dir(&svc);
    tokio::task::spawn_blocking(move || {
        let src = kernel::discover(&from).map_err(kerr)?;
        let stage = crate::fsutil::TempDir::new_in(&dir, &name)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        let version = kernel::stage_import(&src, stage.path()).map_err(kerr)?;
        let m = kernel::write_manifest(
            stage.path(),
            &name,
            &version,
            &format!("import:{}", from.display()),
        )
        .map_err(kerr)?;
        publish(&svc, stage, &dir.join(&name), &m).map(|k| Reply::Kernel(k.view()))
    })
    .await
    .map_err(|e| RpcError::failed(e.to_string()))?
}

pub fn list(svc: &Services) -> Result<Reply, RpcError> {
    let mut v = svc.store.list_kernels().map_err(store_err)?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Reply::Kernels(v.iter().map(KernelRecord::view).collect()))
}

pub fn show(svc: &Services, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    Ok(Reply::Kernel(get(svc, name)?.view()))
}

/// `kernel delete`: refused while an image or VM references the kernel.
pub fn delete(svc: &Services, name: &str) -> Result<Reply, RpcError> {
    validate_name(name)?;
    let k = get(svc, name)?;
    let images: Vec<String> = svc
        .store
        .list_images()
        .map_err(store_err)?
        .into_iter()
        .filter(|i| i.kernel_ref == name)
        .map(|i| i.name)
        .collect();
    if !images.is_empty() {
        return Err(RpcError::bad_request(format!(
            "kernel {name} is used by image(s) {}; delete those first",
            images.join(", ")
        )));
    }
    let vms: Vec<String> = svc
        .store
        .list_vms()
        .map_err(store_err)?
        .into_iter()
        .filter(|v| v.kernel == name)
        .map(|v| v.name)
        .collect();
    if !vms.is_empty() {
        return Err(RpcError::bad_request(format!(
            "kernel {name} is used by VM(s) {}; delete those first",
            vms.join(", ")
        )));
    }
    svc.store.delete_kernel(name).map_err(store_err)?;
    crate::fsutil::remove_all(Path::new(&k.dir))
        .map_err(|e| RpcError::failed(format!("removing {}: {e}", k.dir)))?;
    Ok(Reply::Done)
}
