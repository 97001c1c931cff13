//! Downloads of catalog bundles and release tarballs: streamed into a temporary file, hashed
//! while they stream, capped at the size the catalog names, and renamed to
//! their content address (`sha256-<hex>.tar.zst`) only when the sha256
//! matches. Nothing unverified ever carries the final name.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The cached file of a verified bundle with this sha256.
pub fn cached_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("sha256-{sha256}.tar.zst"))
}

/// Fetches `url` into `dir` unless a verified copy is there; its path.
/// `log` gets progress lines.
pub async fn fetch_verified(
    url: &str,
    sha256: &str,
    max_bytes: u64,
    dir: &Path,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<PathBuf, String> {
    let dst = cached_path(dir, sha256);
    if dst.is_file() {
        log(format!("using the cached download of {url}"));
        return Ok(dst);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))?;
    // A whole-download deadline too: a server that drips a byte a minute
    // never trips the read timeout. Ten minutes plus 256 KiB/s of its size.
    let deadline = Duration::from_secs(600 + max_bytes / (256 << 10));
    match tokio::time::timeout(
        deadline,
        fetch_into(&client, url, sha256, max_bytes, dir, &dst, log),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "downloading {url} took longer than {}s; refused (nothing was kept)",
            deadline.as_secs()
        )),
    }
}

async fn fetch_into(
    client: &reqwest::Client,
    url: &str,
    sha256: &str,
    max_bytes: u64,
    dir: &Path,
    dst: &Path,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<PathBuf, String> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("downloading {url}: {e}"))?;
    if let Some(len) = resp.content_length().filter(|&l| l > max_bytes) {
        return Err(format!(
            "{url} is {len} bytes, more than the {max_bytes} expected; the catalog or release is out of date"
        ));
    }
    // Removed on every early return: nothing partial stays behind.
    let stage = crate::fsutil::TempDir::new_in(dir, "download")
        .map_err(|e| format!("a temporary directory in {}: {e}", dir.display()))?;
    let part = stage.path().join("bundle");
    let out =
        std::fs::File::create(&part).map_err(|e| format!("creating {}: {e}", part.display()))?;
    let mut file = std::io::BufWriter::new(&out);
    let mut h = Sha256::new();
    let (mut got, mut next_log) = (0u64, 64u64 << 20);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("downloading {url}: {e}"))?
    {
        got += chunk.len() as u64;
        if got > max_bytes {
            return Err(format!(
                "{url} sent more than the {max_bytes} bytes expected; refused"
            ));
        }
        h.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| format!("writing the download: {e}"))?;
        if got >= next_log {
            log(format!(
                "{} of {}",
                crate::size::format_size(got),
                crate::size::format_size(max_bytes)
            ));
            next_log += 64 << 20;
        }
    }
    file.flush()
        .map_err(|e| format!("writing the download: {e}"))?;
    drop(file);
    let actual = crate::digest::hex(&h.finalize());
    if actual != sha256 {
        return Err(format!(
            "{url} has sha256 {actual}, not the pinned {sha256}: refused (nothing was kept)"
        ));
    }
    out.sync_all()
        .map_err(|e| format!("syncing the download: {e}"))?;
    std::fs::rename(&part, dst)
        .map_err(|e| format!("storing the download as {}: {e}", dst.display()))?;
    log(format!("{} verified", crate::size::format_size(got)));
    Ok(dst.to_path_buf())
}
