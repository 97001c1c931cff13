//! Image bundles: `image import` and `image export`.

use super::*;

/// `image import <bundle> [--name]`.
pub async fn import(
    ctx: Arc<Ctx>,
    file: String,
    name: Option<String>,
) -> Result<ImageView, OpError> {
    if let Some(n) = &name {
        validate_name(n)?;
    }
    let path = PathBuf::from(&file);
    if !path.is_file() {
        return Err(OpError::invalid(format!(
            "{file} does not exist or is not a file"
        )));
    }
    tokio::task::spawn_blocking(move || -> Result<ImageView, OpError> {
        let dir = images_dir(&ctx);
        let stage =
            crate::fsutil::TempDir::new_in(&dir, "import").ctx("staging an import in", &dir)?;
        let mut m = bundle::import(&path, stage.path())?;
        if let Some(n) = name {
            m.name = n;
        }
        validate_name(&m.name)?;
        if ctx.store.get_image(&m.name)?.is_some() {
            return Err(OpError::already_exists(format!(
                "an image named {:?} exists; delete it first or import with --name",
                m.name
            )));
        }
        let rec = publish(&ctx, stage, &m, format!("imported:{file}"))?;
        view(&ctx, &rec)
    })
    .await?
}

/// `image export <name> -o <file>`: written under a temp name, then renamed;
/// the bundle's size.
pub async fn export(ctx: Arc<Ctx>, name: String, file: String) -> Result<u64, OpError> {
    validate_name(&name)?;
    let rec = get(&ctx, &name)?;
    let out = PathBuf::from(&file);
    tokio::task::spawn_blocking(move || -> Result<u64, OpError> {
        let dir = PathBuf::from(&rec.dir);
        let mpath = dir.join(MANIFEST);
        let m: ImageManifest = serde_json::from_slice(
            &crate::fsutil::read_capped(&mpath, crate::kernel::MAX_MANIFEST)
                .ctx("reading", &mpath)?,
        )
        .map_err(|e| OpError::failed(format!("{}: {e}", mpath.display())))?;
        let (_, tmp) = crate::fsutil::partial_path(&out);
        let bytes = match bundle::export(&dir, &m, &tmp) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(OpError::failed(format!("writing {file}: {e}")));
            }
        };
        std::fs::rename(&tmp, &out).ctx("renaming the bundle to", &out)?;
        Ok(bytes)
    })
    .await?
}

/// A user catalog's bundle: downloaded (verified against the pinned sha256,
/// content-addressed in the cache), then imported like `image import`.
pub(super) async fn bundle_work(
    ctx: &Arc<Ctx>,
    entry: &crate::catalog::ImageEntry,
    url: &str,
    sha256: &str,
    name: &str,
    progress: Progress,
) -> Result<ImageRecord, OpError> {
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
        return Err(OpError::invalid(format!(
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
        .map_err(OpError::failed)?;
    progress.stage("download", "sha256 verified", true);
    crate::ops::kernels::ensure(ctx, &entry.kernel, &entry.kernel, &progress).await?;
    let (ctx2, name, kernel) = (ctx.clone(), name.to_string(), entry.kernel.clone());
    let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, OpError> {
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
