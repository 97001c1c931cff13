//! Images: build (coalesced per name, cached by inputs), import, export,
//! list, show, delete, promote.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{views, Ctx, Made, Progress};
use crate::digest::sha256_file;
use crate::fsutil::{IoContext, IoError};
use crate::image::{self, bundle, recipe, ImageManifest, MANIFEST, ROOTFS, WORK_SEED};

use crate::domain::views::ImageView;
use crate::domain::Event;
use crate::image::build::RootfsSpec;
use crate::ops::OpError;
use crate::store::model::now_unix;
use crate::store::{ImageRecord, DEFAULT_IMAGE_KEY};

mod build;
mod bundles;
mod cache;
mod pull;
mod register;

pub use build::*;
pub use bundles::*;
pub use cache::*;
pub use pull::*;
pub use register::*;

pub fn images_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.state_dir.join("images")
}

fn cache_dir(ctx: &Ctx) -> PathBuf {
    ctx.layout.cache_dir.join("images")
}

fn validate_name(name: &str) -> Result<(), OpError> {
    image::validate_image_name(name).map_err(OpError::invalid)
}

/// The default image name.
pub fn default_image(ctx: &Ctx) -> Result<String, OpError> {
    Ok(ctx
        .store
        .setting(DEFAULT_IMAGE_KEY)?
        .unwrap_or_else(|| recipe::DEFAULT_IMAGE.to_string()))
}

/// Looks an image up or says how to get it.
pub fn get(ctx: &Ctx, name: &str) -> Result<ImageRecord, OpError> {
    ctx.store.get_image(name)?.ok_or_else(|| {
        let hint = if recipe::find(name).is_some() {
            format!("build it with `banger image build {name}`")
        } else {
            format!(
                "see `banger image list`; buildable images: {}; or a catalog name (banger image catalog) or a reference such as docker.io/library/{name}:latest",
                recipe::names()
            )
        };
        OpError::not_found(format!("no image named {name:?}; {hint}"))
    })
}

fn view(ctx: &Ctx, rec: &ImageRecord) -> Result<ImageView, OpError> {
    Ok(views::image(rec, default_image(ctx)? == rec.name))
}

pub fn list(ctx: &Ctx) -> Result<Vec<ImageView>, OpError> {
    let default = default_image(ctx)?;
    let mut v = ctx.store.list_images()?;
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v.iter()
        .map(|i| views::image(i, i.name == default))
        .collect())
}

pub fn show(ctx: &Ctx, name: &str) -> Result<ImageView, OpError> {
    validate_name(name)?;
    view(ctx, &get(ctx, name)?)
}

/// `image delete`: refused while a VM uses the image.
pub fn delete(ctx: &Ctx, name: &str) -> Result<(), OpError> {
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
    Ok(())
}

pub fn promote(ctx: &Ctx, name: &str) -> Result<ImageView, OpError> {
    validate_name(name)?;
    let rec = get(ctx, name)?;
    ctx.store.set_setting(DEFAULT_IMAGE_KEY, name)?;
    Ok(views::image(&rec, true))
}

/// Present in a pulled image's directory when the image has no sshd.
pub const NO_SSHD: &str = "no-sshd";

/// Whether image `rec` is known to have no SSH server.
pub fn lacks_sshd(rec: &ImageRecord) -> bool {
    Path::new(&rec.dir).join(NO_SSHD).exists()
}

/// The release's bundle for recipe image `wanted` on a host that cannot
/// build it (`ops::release_catalog`); None where the host builds.
async fn release_bundle(
    ctx: &Arc<Ctx>,
    wanted: &str,
) -> Result<Option<crate::catalog::ImageEntry>, OpError> {
    if recipe::find(wanted).is_none()
        || crate::ops::release_catalog::missing_build_tools().is_empty()
    {
        return Ok(None);
    }
    // One built here before the tools went: it is used as it is.
    if ctx
        .store
        .get_image(wanted)?
        .is_some_and(|i| !i.source.starts_with("catalog:"))
    {
        return Ok(None);
    }
    crate::ops::release_catalog::prepare(ctx, wanted).await?;
    let entry = catalog(ctx)?.image(wanted).cloned();
    match entry {
        Some(e) if matches!(e.source, crate::catalog::ImageSource::Bundle { .. }) => Ok(Some(e)),
        _ => Err(OpError::invalid(format!(
            "this host cannot build {wanted} (no {}) and the release catalog has no bundle of it",
            crate::ops::release_catalog::missing_build_tools().join(", ")
        ))),
    }
}

/// What `vm create --image X` boots: an image here, a recipe (built), a
/// catalog entry or an OCI reference (pulled on first use, coalesced with
/// every other create asking for it). Returns the image's name.
pub async fn ensure_for_vm(
    ctx: &Arc<Ctx>,
    wanted: &str,
    progress: &Progress,
) -> Result<ImageRecord, OpError> {
    if image::validate_image_name(wanted).is_ok() {
        if let Some(entry) = release_bundle(ctx, wanted).await? {
            let (tx, fwd) = progress.forwarder("");
            let r = pull_entry(ctx.clone(), entry, None, tx).await;
            let _ = fwd.await;
            r?;
            return get(ctx, wanted);
        }
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
        OpError::invalid(format!(
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
        return Err(OpError::already_exists(format!(
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
        return Err(OpError::already_exists(format!(
                "another reference was pulled as {name:?} at the same time ({}); pull {wanted} under a name of its own: banger image pull {wanted} --name <name>",
                i.source
            ),
        ));
    }
    Ok(i)
}
