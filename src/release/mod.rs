//! Releases: what `scripts/release.sh` publishes and `banger update`
//! installs. Under the release URL (config `[update] url`):
//!
//! ```text
//! <url>/latest                                   the newest version, one line (a hint, unsigned)
//! <url>/<version>/SHA256SUMS                     "<sha256>  <file>" per artifact
//! <url>/<version>/SHA256SUMS.sig                 base64 of an ECDSA P-256 (SHA-256) DER signature of SHA256SUMS
//! <url>/<version>/banger-<version>-x86_64-linux.tar.zst
//! ```
//!
//! Nothing is trusted before the signature over `SHA256SUMS` verifies with
//! the key built into this binary, and no file before its sha256 matches
//! the signed line. `latest` only says which version to look at: a served
//! older release is a downgrade, refused unless asked for.

pub mod install;
pub mod semver;
pub mod verify;

/// Architecture in release file names.
pub const ARCH: &str = "x86_64-linux";
/// The three binaries a release installs, all or none.
pub const BINARIES: [&str; 3] = ["banger", "bangerd", "bangerd-root"];

/// The tarball's file name for a version.
pub fn tarball_name(version: &str) -> String {
    format!("banger-{version}-{ARCH}.tar.zst")
}

/// `<url>/<rest>` with exactly one slash between.
pub fn join_url(base: &str, rest: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), rest)
}

/// Largest `latest`, `SHA256SUMS` or signature file accepted.
pub const SMALL_FILE_MAX: usize = 64 << 10;
/// Largest release tarball accepted.
pub const TARBALL_MAX: u64 = 512 << 20;

/// GETs a small file (`latest`, `SHA256SUMS`, its signature), bounded in
/// size and time.
pub async fn fetch_small(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let get = async {
        let mut resp = client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching {url}: {e}"))?;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
        {
            if body.len() + chunk.len() > SMALL_FILE_MAX {
                return Err(format!(
                    "{url} is larger than {SMALL_FILE_MAX} bytes; that is not a release file"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), get)
        .await
        .map_err(|_| format!("fetching {url} took longer than 60 s"))?
}

/// `SHA256SUMS` and `SHA256SUMS.sig` of the release at `base`
/// (`<url>/<version>`), as fetched: [`verify::verify_sums`] decides.
pub async fn fetch_sums(
    client: &reqwest::Client,
    base: &str,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let sums = fetch_small(client, &join_url(base, "SHA256SUMS")).await?;
    let sig = fetch_small(client, &join_url(base, "SHA256SUMS.sig")).await?;
    Ok((sums, sig))
}

/// An HTTP client for release downloads.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(format!("banger-update {}", crate::version::version()))
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))
}

/// Downloads the tarball at `url` into `dir`, kept only when its sha256 is
/// `sha256` (the signed one); its path.
pub async fn fetch_tarball(
    url: &str,
    sha256: &str,
    dir: &std::path::Path,
    log: &(dyn Fn(String) + Send + Sync),
) -> Result<std::path::PathBuf, String> {
    crate::image::download::fetch_verified(url, sha256, TARBALL_MAX, dir, log).await
}
