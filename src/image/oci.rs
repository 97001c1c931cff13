//! Pulling an image from an OCI registry (the distribution v2 API, through
//! the `oci-client` crate: anonymous, bearer-token and basic auth; Docker v2
//! and OCI manifests; an image index resolved to linux/amd64 — manifests
//! read by banger with a byte cap, blobs by the crate), and making
//! it a banger image: its layers applied in order ([`super::layers`]), the
//! agent added, an ext4 root and a work seed.
//!
//! The registry is untrusted: every blob is verified against its digest
//! (by `oci-client` while it streams) before it is renamed into the cache,
//! digests are checked for shape before they name a file, and the layers
//! are applied as hostile data.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// Pull failures, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0:?} is not an image reference (registry/repository[:tag|@digest], e.g. docker.io/library/alpine:3.20)")]
    BadReference(String),
    #[error("the registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("{0}")]
    Other(String),
}

/// A reference, parsed.
pub fn parse(reference: &str) -> Result<Reference, OciError> {
    reference
        .parse::<Reference>()
        .map_err(|_| OciError::BadReference(reference.to_string()))
}

/// Whether the registry host is a loopback address (plain HTTP is allowed
/// there, as Docker allows 127.0.0.0/8).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Basic auth for `registry` from `~/.docker/config.json`, when present.
fn docker_auth(home: Option<&Path>, registry: &str) -> RegistryAuth {
    use base64::Engine;
    let Some(home) = home else {
        return RegistryAuth::Anonymous;
    };
    let Ok(text) = std::fs::read_to_string(home.join(".docker/config.json")) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return RegistryAuth::Anonymous;
    };
    let auths = &v["auths"];
    let entry = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("https://{registry}/v1/"),
    ]
    .iter()
    .find_map(|k| {
        auths
            .get(k)
            .and_then(|e| e["auth"].as_str())
            .map(str::to_string)
    });
    let decoded = entry
        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
        None => RegistryAuth::Anonymous,
    }
}

/// `sha256:<64 hex>` as the file name `sha256-<hex>`, or an error (a
/// registry's digest never names a file unchecked).
pub fn blob_name(digest: &str) -> Result<String, OciError> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(format!("sha256-{hex}"))
        }
        _ => Err(OciError::Other(format!(
            "the registry sent a digest banger does not take: {digest:?} (sha256 only)"
        ))),
    }
}

/// One layer of a pulled image, in the blob cache.
#[derive(Debug, Clone)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub path: PathBuf,
}

/// What a pull fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The manifest's digest (of the platform's manifest).
    pub digest: String,
    pub layers: Vec<Layer>,
}

/// [`fetch_unbounded`] within [`PULL_DEADLINE`].
pub async fn fetch(
    reference: &str,
    insecure: bool,
    home: Option<&Path>,
    blobs: &Path,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Fetched, OciError> {
    tokio::time::timeout(
        PULL_DEADLINE,
        fetch_unbounded(reference, insecure, home, blobs, progress),
    )
    .await
    .unwrap_or_else(|_| {
        Err(OciError::Other(format!(
            "the pull of {reference} did not finish within {} minutes; try again, or a closer registry",
            PULL_DEADLINE.as_secs() / 60
        )))
    })
}

/// Fetches the manifest (an index resolved to linux/amd64) and every layer
/// into `blobs` (verified; cached by digest). `progress` hears each layer.
async fn fetch_unbounded(
    reference: &str,
    insecure: bool,
    home: Option<&Path>,
    blobs: &Path,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Fetched, OciError> {
    let r = parse(reference)?;
    let registry = r.resolve_registry().to_string();
    let config = ClientConfig {
        protocol: if insecure || is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        // A registry that stops answering is dropped, not waited on.
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    };
    let client = Client::new(config);
    let auth = docker_auth(home, &registry);
    let reg_err = |e: oci_client::errors::OciDistributionError| OciError::Registry {
        registry: registry.clone(),
        message: e.to_string(),
    };
    let scheme = if insecure || is_loopback(&registry) {
        "http"
    } else {
        "https"
    };
    let (manifest, digest) = pull_manifest(&client, &r, &auth, scheme).await?;
    std::fs::create_dir_all(blobs)
        .map_err(|e| OciError::Other(format!("creating {}: {e}", blobs.display())))?;
    check_layer_sizes(&manifest.layers, blobs)?;
    let mut layers = Vec::new();
    let n = manifest.layers.len();
    for (i, l) in manifest.layers.iter().enumerate() {
        let path = blobs.join(blob_name(&l.digest)?);
        if path.is_file() {
            progress(format!(
                "layer {}/{n}: {} (cached)",
                i + 1,
                short(&l.digest)
            ));
        } else {
            progress(format!(
                "layer {}/{n}: {} ({})",
                i + 1,
                short(&l.digest),
                crate::size::format_size(l.size.max(0) as u64)
            ));
            // Its own temporary file: two pulls sharing a layer never write
            // into one file.
            use rand::RngExt;
            let tmp = path.with_extension(format!("{:08x}.tmp", rand::rng().random::<u32>()));
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .await
                .map_err(|e| OciError::Other(format!("creating {}: {e}", tmp.display())))?;
            let mut capped = Capped {
                inner: f,
                left: l.size.max(0) as u64,
            };
            let pulled = client.pull_blob(&r, l, &mut capped).await;
            let synced = match &pulled {
                Ok(()) => capped.inner.sync_all().await,
                Err(_) => Ok(()),
            };
            if let Err(e) = pulled {
                let _ = std::fs::remove_file(&tmp);
                return Err(reg_err(e));
            }
            if let Err(e) = synced {
                let _ = std::fs::remove_file(&tmp);
                return Err(OciError::Other(format!("writing {}: {e}", tmp.display())));
            }
            std::fs::rename(&tmp, &path)
                .map_err(|e| OciError::Other(format!("placing {}: {e}", path.display())))?;
        }
        layers.push(Layer {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            path,
        });
    }
    Ok(Fetched { digest, layers })
}

/// The largest manifest or index banger reads (real ones are kilobytes).
pub const MAX_MANIFEST: usize = 4 << 20;

/// The image manifest for linux/amd64 and its digest, read by banger with
/// a byte cap ([`MAX_MANIFEST`]; `oci-client` reads a body whole) and
/// verified against the digest the reference pins or the registry names.
/// `client` authenticates first, which also serves the blob pulls after.
async fn pull_manifest(
    client: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    scheme: &str,
) -> Result<(oci_client::manifest::OciImageManifest, String), OciError> {
    use oci_client::manifest::OciManifest;
    let registry = r.resolve_registry().to_string();
    let reg_err = |message: String| OciError::Registry {
        registry: registry.clone(),
        message,
    };
    let token = client
        .auth(r, auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(|e| reg_err(e.to_string()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(format!("banger {}", crate::version::version()))
        .build()
        .map_err(|e| OciError::Other(format!("an HTTP client: {e}")))?;
    let mut reference = r.clone();
    for depth in 0..2 {
        let (body, digest) = get_manifest(&http, &reference, token.as_deref(), auth, scheme)
            .await
            .map_err(reg_err)?;
        let manifest: OciManifest = serde_json::from_slice(&body)
            .map_err(|e| reg_err(format!("its manifest is not one banger reads: {e}")))?;
        match manifest {
            OciManifest::Image(m) => return Ok((m, digest)),
            OciManifest::ImageIndex(index) if depth == 0 => {
                let Some(d) = oci_client::client::linux_amd64_resolver(&index.manifests) else {
                    return Err(reg_err(format!(
                        "{} has no linux/amd64 image; pick a reference built for it",
                        r.whole()
                    )));
                };
                reference = r.clone_with_digest(d);
            }
            OciManifest::ImageIndex(_) => break,
        }
    }
    Err(reg_err(format!(
        "{} resolves to an index within an index; banger reads one level",
        r.whole()
    )))
}

/// One manifest GET: the body (at most [`MAX_MANIFEST`]) and its digest.
async fn get_manifest(
    http: &reqwest::Client,
    r: &Reference,
    token: Option<&str>,
    auth: &RegistryAuth,
    scheme: &str,
) -> Result<(Vec<u8>, String), String> {
    use oci_client::manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
        OCI_IMAGE_MEDIA_TYPE,
    };
    let url = format!(
        "{scheme}://{}/v2/{}/manifests/{}{}",
        r.resolve_registry(),
        r.repository(),
        r.digest().or(r.tag()).unwrap_or("latest"),
        r.namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default()
    );
    let mut req = http.get(&url).header(
        reqwest::header::ACCEPT,
        [
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ]
        .join(", "),
    );
    req = match (token, auth) {
        (Some(t), _) => req.bearer_auth(t),
        (None, RegistryAuth::Basic(user, password)) => req.basic_auth(user, Some(password)),
        _ => req,
    };
    let mut res = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = res.status();
    let named = res
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
        if body.len() + chunk.len() > MAX_MANIFEST {
            return Err(format!(
                "its manifest at {url} is larger than {} MiB; banger refuses it (real manifests are kilobytes)",
                MAX_MANIFEST >> 20
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let text = crate::guest::text::shown(&String::from_utf8_lossy(&body), 300, false);
        return Err(format!("GET {url}: {status}: {text}"));
    }
    let digest = format!("sha256:{}", crate::digest::sha256_hex(&body));
    for want in [r.digest(), named.as_deref()].into_iter().flatten() {
        if want.starts_with("sha256:") && want != digest {
            return Err(format!(
                "the manifest at {url} has digest {digest}, not {want}: refusing it"
            ));
        }
    }
    Ok((body, digest))
}

/// How long a registry may take to accept a connection...
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// ...and to send the next bytes.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// The whole pull (manifest and every layer), whatever the registry does.
pub const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60 * 60);
/// The largest layer banger downloads, whatever a manifest announces.
pub const MAX_LAYER: u64 = 16 << 30;
/// The most layers of one image, and their sum.
pub const MAX_LAYERS: usize = 256;
pub const MAX_IMAGE: u64 = 64 << 30;

/// Refuses a manifest whose layers are too many, too large, or more than
/// the cache's disk has room for (counting what is not cached yet) —
/// before any download. A registry's own numbers are not a bound.
pub fn check_layer_sizes(
    layers: &[oci_client::manifest::OciDescriptor],
    blobs: &Path,
) -> Result<(), OciError> {
    if layers.len() > MAX_LAYERS {
        return Err(OciError::Other(format!(
            "the image has {} layers; banger takes at most {MAX_LAYERS}",
            layers.len()
        )));
    }
    let mut total: u64 = 0;
    let mut missing: u64 = 0;
    for l in layers {
        let size = u64::try_from(l.size).map_err(|_| {
            OciError::Other(format!("layer {} has a negative size", short(&l.digest)))
        })?;
        if size > MAX_LAYER {
            return Err(OciError::Other(format!(
                "layer {} is {} GiB; banger takes layers of at most {} GiB",
                short(&l.digest),
                size >> 30,
                MAX_LAYER >> 30
            )));
        }
        total = total.saturating_add(size);
        if !blobs.join(blob_name(&l.digest)?).is_file() {
            missing = missing.saturating_add(size);
        }
    }
    if total > MAX_IMAGE {
        return Err(OciError::Other(format!(
            "the image's layers add up to {} GiB; banger takes at most {} GiB",
            total >> 30,
            MAX_IMAGE >> 30
        )));
    }
    let free = crate::fsutil::free_bytes(blobs);
    if missing > free {
        return Err(OciError::Other(format!(
            "the layers to download need {} MiB and {} has {} MiB free; free some space (banger image prune) and retry",
            missing >> 20,
            blobs.display(),
            free >> 20
        )));
    }
    Ok(())
}

/// A blob writer that refuses more bytes than the manifest announced (a
/// registry cannot stream without end).
struct Capped {
    inner: tokio::fs::File,
    left: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the manifest announced",
            )));
        }
        let me = &mut *self;
        let r = std::pin::Pin::new(&mut me.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            me.left -= *n as u64;
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}

/// The staged root of a pulled image and its metadata: the layers in
/// order, then what banger adds (the agent, the mount points it uses).
pub fn assemble(fetched: &Fetched, root: &Path) -> Result<super::layers::Tree, OciError> {
    use super::layers;
    let mut tree = layers::Tree::default();
    for l in &fetched.layers {
        let f = std::fs::File::open(&l.path)
            .map_err(|e| OciError::Other(format!("{}: {e}", l.path.display())))?;
        let r = layers::decoder(&l.media_type, std::io::BufReader::new(f))
            .map_err(|e| OciError::Other(e.0))?;
        layers::apply(r, root, &mut tree)
            .map_err(|e| OciError::Other(format!("layer {}: {}", short(&l.digest), e.0)))?;
    }
    // What banger adds, as one more layer.
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, p, &[][..])
    };
    let io = |e: std::io::Error| OciError::Other(e.to_string());
    for (p, m) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("usr", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
    ] {
        if !root.join(p).exists() {
            dir(&mut b, p, m).map_err(io)?;
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(super::recipe::AGENT.len() as u64);
    b.append_data(
        &mut h,
        crate::kernel::initramfs::AGENT_PATH.trim_start_matches('/'),
        super::recipe::AGENT,
    )
    .map_err(io)?;
    let extra = b.into_inner().map_err(io)?;
    layers::apply(&extra[..], root, &mut tree).map_err(|e| OciError::Other(e.0))?;
    Ok(tree)
}

/// A name for the image from its reference: `alpine:3.20` → `alpine-3.20`.
pub fn default_name(r: &Reference) -> String {
    let repo = r.repository().rsplit('/').next().unwrap_or("image");
    let tag = r.tag().unwrap_or("latest");
    let raw = format!("{repo}-{tag}");
    // The VM-name grammar: lowercase letters, digits, single '-'.
    let mut s = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if !(c == '-' && s.ends_with('-')) {
            s.push(c);
        }
    }
    s.truncate(crate::names::MAX_NAME_LEN);
    s.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry on loopback whose manifest is `body` (endless when
    /// `None`) with `digest` as its Docker-Content-Digest.
    async fn registry(body: Option<&'static [u8]>, digest: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut req = vec![0u8; 4096];
                    let n = s.read(&mut req).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&req[..n]).into_owned();
                    if head.starts_with("GET /v2/ ") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await;
                        return;
                    }
                    let hdr = format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {digest}\r\nConnection: close\r\n\r\n");
                    if s.write_all(hdr.as_bytes()).await.is_err() {
                        return;
                    }
                    match body {
                        Some(b) => {
                            let _ = s.write_all(b).await;
                        }
                        None => {
                            let chunk = vec![b' '; 64 << 10];
                            while s.write_all(&chunk).await.is_ok() {}
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_manifest_without_end_or_with_another_digest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let pull = |addr: String| {
            let blobs = d.path().to_path_buf();
            async move {
                tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    fetch(&format!("{addr}/big:latest"), true, None, &blobs, &|_| {}),
                )
                .await
                .expect("the pull ends by itself")
                .map(|_| ())
                .unwrap_err()
                .to_string()
            }
        };
        let e = pull(registry(None, "sha256:00").await).await;
        assert!(e.contains("larger than 4 MiB"), "{e}");
        let manifest: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aa","size":2},"layers":[]}"#;
        let wrong = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let e = pull(registry(Some(manifest), wrong).await).await;
        assert!(e.contains("refusing it") && e.contains(wrong), "{e}");
    }

    #[test]
    fn a_manifest_announcing_too_much_is_refused_before_any_download() {
        let d = tempfile::tempdir().unwrap();
        let layer = |size: i64, n: u8| oci_client::manifest::OciDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size,
            ..Default::default()
        };
        check_layer_sizes(&[layer(1 << 20, 1)], d.path()).unwrap();
        for (layers, why) in [
            (vec![layer((MAX_LAYER + 1) as i64, 1)], "layers of at most"),
            (vec![layer(-1, 1)], "negative size"),
            (
                (0..5)
                    .map(|n| layer((15u64 << 30) as i64, n))
                    .collect::<Vec<_>>(),
                "add up to",
            ),
            (
                (0..=MAX_LAYERS)
                    .map(|n| layer(1, n as u8))
                    .collect::<Vec<_>>(),
                "layers;",
            ),
        ] {
            let e = check_layer_sizes(&layers, d.path())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn references_loopback_and_digests() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(parse("not a reference!").is_err());
        let r = parse("127.0.0.1:5000/banger/tiny:v1").unwrap();
        assert_eq!(default_name(&r), "tiny-v1");
        let r = parse("docker.io/library/alpine:3.20").unwrap();
        assert_eq!(default_name(&r), "alpine-3-20");
        crate::image::validate_image_name(&default_name(&r)).unwrap();
        assert_eq!(
            blob_name(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            format!("sha256-{}", "a".repeat(64))
        );
        for bad in [
            "sha256:../../etc",
            "md5:abc",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(blob_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_config_gives_basic_auth() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".docker")).unwrap();
        std::fs::write(
            d.path().join(".docker/config.json"),
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        assert!(matches!(
            docker_auth(Some(d.path()), "127.0.0.1:5000"),
            RegistryAuth::Basic(u, p) if u == "user" && p == "pass"
        ));
        assert!(matches!(
            docker_auth(Some(d.path()), "other:5000"),
            RegistryAuth::Anonymous
        ));
    }
}
