//! The release catalog: on a host that cannot make banger's default kernel
//! and image itself (no `apt-get`, `dpkg-deb` or `mmdebstrap` — an Arch,
//! Fedora or NixOS workstation), they come as bundles published with this
//! banger's release (`scripts/release.sh --kernel-dir --image-bundle`).
//!
//! The release's `catalog.toml` is trusted only through its line in the
//! signed `SHA256SUMS` (the release key built in, as for `banger update`);
//! each bundle it names is then pinned by its sha256 like any catalog
//! entry. The verified file is kept in the state directory, one per
//! version, and its entries stand in for the built-in ones of the same
//! names (`debian-cloud`, `debian-bookworm`) only while the host lacks the
//! tools to make those.

use std::path::PathBuf;

use crate::catalog::Catalog;
use crate::release::{self, semver::Version, verify};

use super::{Ctx, OpError};

/// What making the default kernel and image here needs.
pub const BUILD_TOOLS: [&str; 3] = ["apt-get", "dpkg-deb", "mmdebstrap"];
/// The release catalog's file name in a release.
pub const FILE: &str = "catalog.toml";

/// The tools of [`BUILD_TOOLS`] not on this process's PATH.
pub fn missing_build_tools() -> Vec<&'static str> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    BUILD_TOOLS
        .into_iter()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect()
}

fn cached_path(ctx: &Ctx, version: &Version) -> PathBuf {
    ctx.layout
        .state_dir
        .join(format!("release-catalog-{version}.toml"))
}

/// The verified release catalog of this version, when the host cannot
/// build and one was fetched.
pub fn overlay(ctx: &Ctx) -> Option<Catalog> {
    if missing_build_tools().is_empty() {
        return None;
    }
    let v = Version::parse(crate::version::version())?;
    let path = cached_path(ctx, &v);
    let text = std::fs::read_to_string(&path).ok()?;
    match crate::catalog::parse_user(&text, &path) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("ignoring the release catalog: {e}");
            None
        }
    }
}

/// Whether `entry`, pulled as `name`, is a release bundle standing in for
/// the built-in entry of that name (so it may take a recipe's name).
pub fn stands_in(entry: &crate::catalog::ImageEntry, name: &str) -> bool {
    name == entry.name
        && std::path::Path::new(&entry.origin)
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("release-catalog-"))
}

/// Makes sure the release catalog is here when the host cannot build
/// `name` (the default kernel or image) itself; an error saying what to do
/// when it cannot be had.
pub async fn prepare(ctx: &Ctx, name: &str) -> Result<(), OpError> {
    let missing = missing_build_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let installed = crate::version::version();
    let hint = format!(
        "this host has no {} to make {name} itself; install them (Debian: apt-get install mmdebstrap), or use a banger release whose [update] url publishes its kernel and image (scripts/install.sh --release)",
        missing.join(", ")
    );
    let Some(v) = Version::parse(installed) else {
        return Err(OpError::invalid(format!(
            "{hint} — this is a {installed} build, which has no release bundles"
        )));
    };
    let path = cached_path(ctx, &v);
    if path.is_file() {
        return Ok(());
    }
    let Some(url) = ctx.config.update_url.clone() else {
        return Err(OpError::invalid(format!(
            "{hint} — no [update] url is set in {}",
            ctx.config.path.display()
        )));
    };
    let text = fetch(&url, &v)
        .await
        .map_err(|e| OpError::failed(format!("{hint} — the release catalog of {v}: {e}")))?;
    crate::catalog::parse_user(&text, &path).map_err(|e| OpError::failed(e.to_string()))?;
    let tmp = path.with_extension("toml.tmp");
    crate::fsutil::write_synced(&tmp, text.as_bytes())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| OpError::failed(format!("keeping {}: {e}", path.display())))?;
    tracing::info!(version = %v, "release catalog verified and kept");
    Ok(())
}

/// `catalog.toml` of release `v`, verified through the signed sums, its
/// bundle URLs made absolute.
async fn fetch(url: &str, v: &Version) -> Result<String, String> {
    let base = release::join_url(url, v.as_str());
    let http = release::http_client()?;
    let (sums, sig) = release::fetch_sums(&http, &base).await?;
    let sums = verify::verify_sums(&sums, &sig, &verify::release_key())?;
    let want = sums
        .get(FILE)
        .ok_or_else(|| format!("release {v} publishes no kernel and image bundles"))?;
    let body = release::fetch_small(&http, &release::join_url(&base, FILE)).await?;
    if crate::digest::sha256_hex(&body) != want {
        return Err(format!("{FILE} does not match its signed sha256"));
    }
    let text = String::from_utf8(body).map_err(|_| format!("{FILE} is not UTF-8"))?;
    absolute_urls(&text, &base)
}

/// Each entry's `url` that names a file of the release (no scheme, a plain
/// file name) becomes `<base>/<file>`.
fn absolute_urls(text: &str, base: &str) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| format!("{FILE}: {e}"))?;
    for kind in ["image", "kernel"] {
        let Some(toml::Value::Array(entries)) = doc.get_mut(kind) else {
            continue;
        };
        for e in entries.iter_mut() {
            if let Some(toml::Value::String(u)) = e.get_mut("url") {
                if !u.contains("://") {
                    if !verify::plain_file_name(u) {
                        return Err(format!("{FILE} names {u:?}, not a file of the release"));
                    }
                    *u = release::join_url(base, u);
                }
            }
        }
    }
    toml::to_string(&doc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_become_urls_and_nothing_else_does() {
        let t = "[[kernel]]\nname = \"k\"\nurl = \"kernel-k.tar.zst\"\nsha256 = \"x\"\nsize = 1\n\n[[image]]\nname = \"i\"\nurl = \"https://elsewhere/i.tar.zst\"\nsha256 = \"y\"\nsize = 2\n";
        let out = absolute_urls(t, "http://h/r/v1.0.0").unwrap();
        assert!(
            out.contains("url = \"http://h/r/v1.0.0/kernel-k.tar.zst\""),
            "{out}"
        );
        assert!(
            out.contains("url = \"https://elsewhere/i.tar.zst\""),
            "{out}"
        );
        let bad = t.replace("kernel-k.tar.zst", "../k.tar.zst");
        assert!(absolute_urls(&bad, "http://h").is_err());
    }
}
