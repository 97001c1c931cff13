//! `image build`: coalesced per name, cached by its inputs, published
//! atomically.

use super::*;

/// `image build <name> [--rebuild]`, coalesced per name.
pub async fn build(
    ctx: Arc<Ctx>,
    name: String,
    rebuild: bool,
    events: mpsc::Sender<Event>,
) -> Result<ImageView, OpError> {
    validate_name(&name)?;
    let recipe = recipe::find(&name).ok_or_else(|| {
        OpError::not_found(format!(
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
                view(&ctx, &rec).map(Made::Image)
            })
        }),
    )
    .await?
    .image()
}

/// Makes sure image `name` exists, building it (coalesced) when it has a
/// recipe. Used by VM creation.
pub async fn ensure(
    ctx: &Arc<Ctx>,
    name: &str,
    progress: &Progress,
) -> Result<ImageRecord, OpError> {
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
pub(super) fn current_key(ctx: &Ctx, recipe: &recipe::Recipe) -> Result<Option<String>, OpError> {
    let Some(k) = ctx.store.get_kernel(recipe.kernel_ref)? else {
        return Ok(None);
    };
    if crate::ops::kernels::stale(&k) {
        return Ok(None);
    }
    let km = crate::kernel::read_manifest(Path::new(&k.dir))?;
    Ok(Some(recipe::cache_key(
        recipe,
        &km.kernel_version,
        km.modules_sha256.as_deref().unwrap_or(""),
    )))
}

pub(super) async fn build_work(
    ctx: &Arc<Ctx>,
    recipe: &'static recipe::Recipe,
    rebuild: bool,
    progress: Progress,
) -> Result<ImageRecord, OpError> {
    let _in_use = cache_in_use(ctx).await?;
    let kernel =
        crate::ops::kernels::ensure(ctx, recipe.kernel_ref, recipe.kernel_source, &progress)
            .await?;
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
    let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, OpError> {
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
pub(super) async fn build_into_cache(
    ctx: &Ctx,
    recipe: &'static recipe::Recipe,
    key: &str,
    cache: &Path,
    modules_dir: &Path,
    kernel_version: &str,
    progress: &Progress,
) -> Result<CacheEntry, OpError> {
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
    let built = ctx.helper.build_rootfs(spec).await?;
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
pub(super) fn publish(
    ctx: &Ctx,
    stage: crate::fsutil::TempDir,
    m: &ImageManifest,
    source: String,
) -> Result<ImageRecord, OpError> {
    let mpath = stage.path().join(MANIFEST);
    let json = serde_json::to_vec_pretty(m)
        .map_err(|e| OpError::failed(format!("encoding {}: {e}", mpath.display())))?;
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
