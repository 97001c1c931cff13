//! `image register NAME --rootfs FILE [--kernel K]`: an ext4 root file
//! system the owner has, copied, checked and given the agent
//! (`image::register`), published as an image that pairs with kernel `K`.

use super::*;

pub async fn register(
    ctx: Arc<Ctx>,
    name: String,
    rootfs: String,
    kernel: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<ImageView, OpError> {
    validate_name(&name)?;
    if recipe::find(&name).is_some() {
        return Err(OpError::invalid(format!(
            "{name} is the name of a recipe image; register under another name"
        )));
    }
    let src = PathBuf::from(&rootfs);
    if !src.is_file() {
        return Err(OpError::invalid(format!(
            "{rootfs} does not exist or is not a file: give an ext4 image file"
        )));
    }
    if ctx.store.get_image(&name)?.is_some() {
        return Err(OpError::already_exists(format!(
            "an image named {name:?} exists; delete it first or register under another name"
        )));
    }
    let kernel = kernel.unwrap_or_else(|| recipe::DEFAULT_KERNEL.to_string());
    let jobs = ctx.images.clone();
    jobs.run(
        &name.clone(),
        events,
        Box::new(move |p| {
            Box::pin(async move {
                let rec = register_work(&ctx, &src, &name, &kernel, p).await?;
                view(&ctx, &rec).map(Made::Image)
            })
        }),
    )
    .await?
    .image()
}

async fn register_work(
    ctx: &Arc<Ctx>,
    src: &Path,
    name: &str,
    kernel: &str,
    progress: Progress,
) -> Result<ImageRecord, OpError> {
    progress.stage("adopt", format!("{} as image {name}", src.display()), false);
    let (dir, cache) = (images_dir(ctx), cache_dir(ctx));
    let (src, name2, kernel2) = (src.to_path_buf(), name.to_string(), kernel.to_string());
    let (m, stage) = tokio::task::spawn_blocking(
        move || -> Result<(ImageManifest, crate::fsutil::TempDir), OpError> {
            let stage =
                crate::fsutil::TempDir::new_in(&dir, &name2).ctx("staging an image in", &dir)?;
            let scratch =
                crate::fsutil::TempDir::new_in(&cache, "register").ctx("staging in", &cache)?;
            let rootfs = stage.path().join(ROOTFS);
            crate::fsutil::copy_synced(&src, &rootfs)
                .ctx("copying the root file system to", &rootfs)?;
            let has_sshd = image::register::adopt(&rootfs, recipe::AGENT, scratch.path())
                .map_err(|e| OpError::invalid(format!("{}: {}", src.display(), e.0)))?;
            let m = seal_stage(
                stage.path(),
                scratch.path(),
                &name2,
                "registered",
                &kernel2,
                has_sshd,
            )?;
            Ok((m, stage))
        },
    )
    .await??;
    progress.stage(
        "adopt",
        format!("root {}", crate::size::format_size(m.rootfs_bytes)),
        true,
    );
    let source = format!("registered:{}", m.name);
    publish_with_kernel(ctx, stage, m, source, &progress).await
}
