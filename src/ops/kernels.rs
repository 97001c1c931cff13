//! Kernels: pull (coalesced per name), import, list, show, delete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{views, Ctx, Made, Progress};
use crate::fsutil::IoContext;
use crate::kernel;

use crate::domain::views::KernelView;
use crate::domain::Event;
use crate::ops::OpError;
use crate::store::model::now_unix;
use crate::store::KernelRecord;

pub fn kernels_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.state_dir.join("kernels")
}

fn validate_name(name: &str) -> Result<(), OpError> {
    crate::image::validate_image_name(name)
        .map_err(|e| OpError::invalid(e.replace("image name", "kernel name")))
}

/// Looks a kernel up or says how to get it.
pub fn get(ctx: &Ctx, name: &str) -> Result<KernelRecord, OpError> {
    ctx.store.get_kernel(name)?.ok_or_else(|| {
        OpError::not_found(format!(
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
) -> Result<KernelView, OpError> {
    validate_name(&name)?;
    let apt = matches!(
        crate::catalog::builtin().kernel(&source).map(|k| &k.source),
        Some(crate::catalog::KernelSource::Apt)
    );
    if apt {
        super::release_catalog::prepare(&ctx, &source).await?;
    }
    let catalog = super::images::catalog_for(&ctx, &source)?;
    let entry = catalog.kernel(&source).cloned().ok_or_else(|| {
        OpError::not_found(format!(
            "unknown kernel source {source:?}; the catalog has: {} (banger kernel catalog); or use `banger kernel import <name> --from <dir>`",
            catalog.kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let jobs = ctx.kernels.clone();
    let key = name.clone();
    jobs.run(
        &key,
        events,
        Box::new(move |p| {
            Box::pin(async move {
                let k = match entry.source {
                    crate::catalog::KernelSource::Apt => pull_work(ctx, name, version, p).await,
                    crate::catalog::KernelSource::Bundle { url, sha256 } => {
                        bundle_work(ctx, &entry.name, &url, &sha256, entry.size, name, p).await
                    }
                };
                k.map(|k| Made::Kernel(views::kernel(&k)))
            })
        }),
    )
    .await?
    .kernel()
}

/// A user catalog's kernel bundle: a `.tar.zst` of a directory as `kernel
/// import` takes it, downloaded and verified against its pinned sha256,
/// unpacked (bounded, nothing outside the staging directory), imported.
async fn bundle_work(
    ctx: Arc<Ctx>,
    entry: &str,
    url: &str,
    sha256: &str,
    size: u64,
    name: String,
    progress: Progress,
) -> Result<KernelRecord, OpError> {
    let source = format!("catalog:{entry}@sha256:{sha256}");
    if let Some(k) = ctx.store.get_kernel(&name)? {
        if k.source == source {
            progress.log(format!("kernel {name} is up to date"));
            return Ok(k);
        }
    }
    let _in_use = super::images::cache_in_use(&ctx).await?;
    progress.stage("download", url.to_string(), false);
    let cache = ctx.layout.cache_dir.join("images/bundles");
    let p2 = progress.clone();
    let file =
        crate::image::download::fetch_verified(url, sha256, size, &cache, &move |l| p2.log(l))
            .await
            .map_err(OpError::failed)?;
    progress.stage("download", "sha256 verified", true);
    let dir = kernels_dir(&ctx);
    let url = url.to_string();
    tokio::task::spawn_blocking(move || -> Result<KernelRecord, OpError> {
        let unpacked = crate::fsutil::TempDir::new_in(&dir, "unpack").ctx("unpacking in", &dir)?;
        unpack_bounded(&file, unpacked.path())
            .map_err(|e| OpError::invalid(format!("the kernel bundle from {url}: {e}")))?;
        let src = kernel::discover(unpacked.path())?;
        let stage = crate::fsutil::TempDir::new_in(&dir, &name).ctx("staging a kernel in", &dir)?;
        let version = kernel::stage_import(&src, stage.path())?;
        let m = kernel::write_manifest(stage.path(), &name, &version, &source)?;
        publish(&ctx, stage, &dir.join(&name), &m)
    })
    .await?
}

/// Unpacks a `.tar.zst` into `dst`: at most 8 GiB and 200,000 entries,
/// regular files and directories only — no symlink or hard link is made,
/// so nothing read from the tree afterwards (`kernel import`'s discovery
/// and copies) can lead outside it — and only plain relative paths.
/// Directories get 0755 and files 0644 (0755 if executable), whatever the
/// archive says.
fn unpack_bounded(file: &Path, dst: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    const MAX_BYTES: u64 = 8 << 30;
    const MAX_ENTRIES: usize = 200_000;
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let z = zstd::stream::read::Decoder::new(f).map_err(|e| format!("not zstd: {e}"))?;
    // One byte more than allowed: a bundle that reaches it is refused,
    // never cut short at an entry boundary and taken as complete.
    let mut a = tar::Archive::new(z.take(MAX_BYTES + 1));
    let mut n = 0usize;
    for e in a.entries().map_err(|e| format!("not a tar: {e}"))? {
        n += 1;
        if n > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let mut e = e.map_err(|e| format!("not a tar: {e}"))?;
        let path = e
            .path()
            .map_err(|e| format!("an entry's path: {e}"))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                std::path::Component::Normal(s) => rel.push(s),
                std::path::Component::CurDir => {}
                _ => {
                    return Err(format!(
                        "{}: only plain relative paths are allowed",
                        path.display()
                    ))
                }
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let to = dst.join(&rel);
        use tar::EntryType as T;
        match e.header().entry_type() {
            T::Directory => {
                std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", rel.display()))?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
            }
            T::Regular | T::Continuous => {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("{}: {e}", rel.display()))?;
                }
                let exec = e.header().mode().unwrap_or(0) & 0o111 != 0;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&to)
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
                std::io::copy(&mut e, &mut out).map_err(|e| format!("{}: {e}", rel.display()))?;
                let mode = if exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
            }
            // Links (and devices, FIFOs) are not part of a kernel bundle.
            _ => {}
        }
    }
    if a.into_inner().limit() == 0 {
        return Err(format!(
            "it unpacks to more than {}",
            crate::size::format_size(MAX_BYTES)
        ));
    }
    Ok(())
}

/// Makes sure kernel `name` exists, pulling it from `source` (coalesced with
/// any pull in flight) when it does not.
pub async fn ensure(
    ctx: &Arc<Ctx>,
    name: &str,
    source: &str,
    progress: &Progress,
) -> Result<KernelRecord, OpError> {
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
) -> Result<KernelRecord, OpError> {
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
    let rec = tokio::task::spawn_blocking(move || -> Result<KernelRecord, OpError> {
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
) -> Result<KernelRecord, OpError> {
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
pub async fn import(ctx: Arc<Ctx>, name: String, from: String) -> Result<KernelView, OpError> {
    validate_name(&name)?;
    if ctx.store.get_kernel(&name)?.is_some() {
        return Err(OpError::already_exists(format!("a kernel named {name:?} exists; delete it first (banger kernel delete {name}) or pick another name"),
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
        publish(&ctx, stage, &dir.join(&name), &m).map(|k| views::kernel(&k))
    })
    .await?
}

pub fn list(ctx: &Ctx) -> Result<Vec<KernelView>, OpError> {
    let mut v = ctx.store.list_kernels()?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v.iter().map(views::kernel).collect())
}

pub fn show(ctx: &Ctx, name: &str) -> Result<KernelView, OpError> {
    validate_name(name)?;
    Ok(views::kernel(&get(ctx, name)?))
}

/// `kernel delete`: refused while an image or VM references the kernel.
pub fn delete(ctx: &Ctx, name: &str) -> Result<(), OpError> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, entries: &[(&str, tar::EntryType, &str, u32)]) -> PathBuf {
        let p = dir.join("b.tar.zst");
        let z = zstd::stream::write::Encoder::new(std::fs::File::create(&p).unwrap(), 3).unwrap();
        let mut t = tar::Builder::new(z);
        for (path, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            if *kind == tar::EntryType::Symlink {
                h.set_size(0);
                t.append_link(&mut h, path, data).unwrap();
            } else {
                h.set_size(data.len() as u64);
                if path.contains("..") {
                    // The tar crate will not write such a name: put it in the raw header.
                    let raw = &mut h.as_old_mut().name;
                    raw[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    t.append(&h, data.as_bytes()).unwrap();
                } else {
                    t.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        t.into_inner().unwrap().finish().unwrap();
        p
    }

    #[test]
    fn a_kernel_bundle_makes_no_link_and_no_path_outside() {
        use std::os::unix::fs::PermissionsExt;
        use tar::EntryType as T;
        let d = tempfile::tempdir().unwrap();
        let b = bundle(
            d.path(),
            &[
                ("vmlinux", T::Regular, "ELF", 0o000),
                ("initrd.img", T::Symlink, "/etc/passwd", 0o777),
                ("modules", T::Directory, "", 0o500),
                ("modules/6.1.0", T::Symlink, "/root/.ssh", 0o777),
            ],
        );
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_bounded(&b, &out).unwrap();
        assert_eq!(std::fs::read(out.join("vmlinux")).unwrap(), b"ELF");
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("vmlinux"), 0o644);
        assert_eq!(mode("modules"), 0o755);
        for link in ["initrd.img", "modules/6.1.0"] {
            assert!(
                std::fs::symlink_metadata(out.join(link)).is_err(),
                "{link} was made"
            );
        }
        let bad = bundle(d.path(), &[("../escape", T::Regular, "x", 0o644)]);
        let out2 = d.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        let e = unpack_bounded(&bad, &out2).unwrap_err();
        assert!(e.contains("plain relative paths"), "{e}");
        assert!(!d.path().join("escape").exists());
    }
}
