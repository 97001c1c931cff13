//! `image pull` from an OCI registry or a catalog entry.

use super::*;

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
) -> Result<ImageView, OpError> {
    if let Some(entry) = catalog_for(&ctx, &reference)?.image(&reference).cloned() {
        return pull_entry(ctx, entry, name, events).await;
    }
    let r = image::oci::parse(&reference).map_err(|e| {
        OpError::invalid(format!(
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
                view(&ctx, &rec).map(Made::Image)
            })
        }),
    )
    .await?
    .image()
}

pub(super) async fn pull_work(
    ctx: &Arc<Ctx>,
    reference: &str,
    name: &str,
    kernel: &str,
    insecure: bool,
    progress: Progress,
) -> Result<ImageRecord, OpError> {
    let _in_use = cache_in_use(ctx).await?;
    let failed = |e: image::oci::OciError| OpError::failed(e.to_string());
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
            move || -> Result<(ImageManifest, crate::fsutil::TempDir), OpError> {
                let work =
                    crate::fsutil::TempDir::new_in(&cache, "oci").ctx("staging in", &cache)?;
                let root = work.path().join("root");
                std::fs::create_dir(&root).ctx("creating", &root)?;
                let tree = image::oci::assemble(&fetched, &root)
                    .map_err(|e| OpError::failed(e.to_string()))?;
                let stage =
                    crate::fsutil::TempDir::new_in(&dir, &name).ctx("staging an image in", &dir)?;
                // Room for the inode tables of a tree of many small files
                // too (mkfs_ext4 gives it twice its count of inodes).
                let content = image::layers::tree_bytes(&root) + tree.meta.len() as u64 * 512;
                let root_mib = (content + content / 2 + (256 << 20)).div_ceil(64 << 20) * 64;
                let rootfs = stage.path().join(ROOTFS);
                let lerr = |e: image::layers::LayerError| OpError::failed(e.0);
                image::layers::make_ext4(
                    &root,
                    &tree,
                    &rootfs,
                    root_mib,
                    "banger-root",
                    work.path(),
                )
                .map_err(lerr)?;
                // No SSH server: `vm ssh` says so at once rather than wait.
                let has_sshd = image::layers::has_sshd(&root);
                let m = seal_stage(stage.path(), work.path(), &name, "oci", &kernel, has_sshd)?;
                // The blobs this image came from: `image cache prune` keeps them.
                let used = OciBlobs {
                    manifest: fetched.digest.clone(),
                    blobs: fetched.layers.iter().map(|l| l.digest.clone()).collect(),
                };
                let upath = stage.path().join(OCI_BLOBS);
                let json = serde_json::to_vec_pretty(&used).map_err(std::io::Error::other);
                crate::fsutil::write_synced(&upath, &json.ctx("encoding", &upath)?)
                    .ctx("writing", &upath)?;
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
    let source = format!("oci:{reference}@{}", fetched.digest);
    publish_with_kernel(ctx, stage, m, source, &progress).await
}

/// Finishes a staged image whose root is at [`ROOTFS`]: an empty work
/// seed beside it, the no-sshd marker when `has_sshd` is false, and its
/// manifest.
pub(super) fn seal_stage(
    stage: &Path,
    scratch: &Path,
    name: &str,
    distro: &str,
    kernel: &str,
    has_sshd: bool,
) -> Result<ImageManifest, OpError> {
    let (rootfs, seed) = (stage.join(ROOTFS), stage.join(WORK_SEED));
    empty_work_seed(&seed, scratch)?;
    if !has_sshd {
        let marker = stage.join(NO_SSHD);
        crate::fsutil::write_synced(&marker, b"").ctx("writing", &marker)?;
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(ImageManifest {
        name: name.to_string(),
        distro: distro.into(),
        arch: "x86_64".into(),
        kernel_ref: kernel.to_string(),
        rootfs_bytes: size(&rootfs),
        work_seed_bytes: size(&seed),
        rootfs_sha256: sha256_file(&rootfs).ctx("hashing", &rootfs)?,
        work_seed_sha256: sha256_file(&seed).ctx("hashing", &seed)?,
    })
}

/// Publishes a staged image once the kernel it pairs with is here (so it
/// is never listed without one).
pub(super) async fn publish_with_kernel(
    ctx: &Arc<Ctx>,
    stage: crate::fsutil::TempDir,
    m: ImageManifest,
    source: String,
    progress: &Progress,
) -> Result<ImageRecord, OpError> {
    crate::ops::kernels::ensure(ctx, &m.kernel_ref, &m.kernel_ref, progress).await?;
    let ctx2 = ctx.clone();
    let rec = tokio::task::spawn_blocking(move || publish(&ctx2, stage, &m, source)).await??;
    progress.stage("publish", format!("image {}", rec.name), true);
    Ok(rec)
}

/// An empty 64 MiB work seed at `seed` (a VM's work disk grows from it),
/// staged in `scratch`.
pub(super) fn empty_work_seed(seed: &Path, scratch: &Path) -> Result<(), OpError> {
    let empty = scratch.join("seed");
    std::fs::create_dir(&empty).ctx("creating", &empty)?;
    image::layers::make_ext4(
        &empty,
        &image::layers::Tree::default(),
        seed,
        64,
        "banger-work",
        scratch,
    )
    .map_err(|e| OpError::failed(e.0))
}

/// The file in a pulled image's directory naming the blobs it came from.
pub(super) const OCI_BLOBS: &str = "oci-blobs.json";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct OciBlobs {
    pub(super) manifest: String,
    pub(super) blobs: Vec<String>,
}

/// The catalog as it is now (the user's file is read on every call), with
/// the release's bundles standing in for the built-in kernel and image a
/// host without the tools to make them cannot make
/// (`ops::release_catalog`).
pub fn catalog(ctx: &Ctx) -> Result<crate::catalog::Catalog, OpError> {
    let mut c = crate::catalog::load(&ctx.layout.config_dir)
        .map_err(|e| OpError::invalid(e.to_string()))?;
    if let Some(r) = crate::ops::release_catalog::overlay(ctx) {
        c.overlay(r);
    }
    Ok(c)
}

/// The catalog for looking up `name`: a broken user file fails only the
/// names it could hold — a built-in name or an OCI reference still works
/// (with the file's error in the log).
pub fn catalog_for(ctx: &Ctx, name: &str) -> Result<crate::catalog::Catalog, OpError> {
    match catalog(ctx) {
        Ok(c) => Ok(c),
        Err(e) => {
            let b = crate::catalog::builtin();
            if b.image(name).is_some() || b.kernel(name).is_some() || name.contains('/') {
                tracing::warn!("ignoring the user catalog for {name}: {e}");
                Ok(b)
            } else {
                Err(e)
            }
        }
    }
}

/// `image pull <catalog name>`: a recipe is built, an OCI entry pulled by
/// its pinned digest, a bundle downloaded, verified and imported.
pub(super) async fn pull_entry(
    ctx: Arc<Ctx>,
    entry: crate::catalog::ImageEntry,
    name: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<ImageView, OpError> {
    use crate::catalog::ImageSource;
    let name = name.unwrap_or_else(|| entry.name.clone());
    validate_name(&name)?;
    let stands_in = crate::ops::release_catalog::stands_in(&entry, &name);
    if let ImageSource::Recipe { recipe } = entry.source.clone() {
        if name != recipe {
            return Err(OpError::invalid(format!(
                "{} is built from its recipe under its own name; drop --name",
                entry.name
            )));
        }
        return build(ctx, recipe, false, events).await;
    }
    if !stands_in {
        refuse_recipe_name(&name)?;
    }
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
                        return Err(OpError::failed("a recipe entry is built, not pulled"))
                    }
                };
                view(&ctx, &rec).map(Made::Image)
            })
        }),
    )
    .await?
    .image()
}

/// A pull may not take a recipe image's name (the next build would
/// replace it).
pub(super) fn refuse_recipe_name(name: &str) -> Result<(), OpError> {
    if recipe::find(name).is_some() {
        return Err(OpError::invalid(format!(
            "{name} is the name of a recipe image; pull under another name (--name)"
        )));
    }
    Ok(())
}

/// The image `name` when it came from `source_prefix` (nothing to pull);
/// an error when that name holds some other image.
pub(super) fn up_to_date(
    ctx: &Ctx,
    name: &str,
    source_prefix: &str,
) -> Result<Option<ImageRecord>, OpError> {
    match ctx.store.get_image(name)? {
        Some(i) if i.source.starts_with(source_prefix) => Ok(Some(i)),
        Some(i) => Err(OpError::already_exists(format!(
                "an image named {name:?} exists (from {}); delete it first (banger image delete {name}) or pull with --name",
                i.source
            ),
        )),
        None => Ok(None),
    }
}
