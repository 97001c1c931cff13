//! Catalogs: named images and kernels with pinned sources. The built-in one
//! is embedded; a user or team adds entries in `<config dir>/catalog.toml`
//! (bundle URLs with their sha256). `image pull <name>` and `kernel pull
//! <name>` look names up here; downloads are verified before anything is
//! published.
//!
//! ```toml
//! [[image]]
//! name = "team-base"
//! description = "our CI image"
//! url = "https://files.example.com/team-base.tar.zst"   # from `banger image export`
//! sha256 = "<64 hex digits>"
//! size = 123456789            # bytes of the bundle (downloads are capped at it)
//! kernel = "debian-cloud"     # optional
//!
//! [[kernel]]
//! name = "team-kernel"
//! url = "https://files.example.com/kernel.tar.zst"      # vmlinux|vmlinuz [+ initrd] [+ lib/modules/<ver>]
//! sha256 = "<64 hex digits>"
//! size = 12345678
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The user catalog's file name inside the config directory.
pub const USER_FILE: &str = "catalog.toml";

/// Largest bundle a user entry may name (its `size` is the real cap).
pub const MAX_BUNDLE_BYTES: u64 = 64 << 30;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// Built here from a recipe (`image build`).
    Recipe { recipe: String },
    /// An OCI image pinned by digest.
    Oci { reference: String },
    /// A `.tar.zst` image bundle (`image export`) at a URL, pinned by sha256.
    Bundle { url: String, sha256: String },
}

/// Where a kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelSource {
    /// Debian's cloud kernel through this host's apt (signature-checked).
    Apt,
    /// A `.tar.zst` of a kernel directory at a URL, pinned by sha256.
    Bundle { url: String, sha256: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub name: String,
    pub description: String,
    pub source: ImageSource,
    /// Approximate download (OCI: compressed layers) in bytes; 0 = unknown.
    pub size: u64,
    pub arch: String,
    /// The kernel it boots with.
    pub kernel: String,
    /// "built-in" or the catalog file.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEntry {
    pub name: String,
    pub description: String,
    pub source: KernelSource,
    pub size: u64,
    pub arch: String,
    pub origin: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub images: Vec<ImageEntry>,
    pub kernels: Vec<KernelEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the catalog {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the catalog {path} is not valid: {message}; see `banger image catalog --help` for its format")]
    Invalid { path: PathBuf, message: String },
}

const BUILTIN: &str = "built-in";

/// The embedded catalog. OCI entries are pinned by the digest of their
/// multi-arch index (banger picks linux/amd64 from it).
pub fn builtin() -> Catalog {
    let image = |name: &str, description: &str, source: ImageSource, size: u64| ImageEntry {
        name: name.into(),
        description: description.into(),
        source,
        size,
        arch: "x86_64".into(),
        kernel: crate::image::recipe::DEFAULT_KERNEL.into(),
        origin: BUILTIN.into(),
    };
    Catalog {
        images: vec![
            image(
                "debian-bookworm",
                "Debian 12 with systemd, OpenSSH and the agent, built here with mmdebstrap",
                ImageSource::Recipe {
                    recipe: "debian-bookworm".into(),
                },
                0,
            ),
            image(
                "debian-bookworm-sandbox",
                "debian-bookworm plus Docker (engine, docker compose) and mise, built here",
                ImageSource::Recipe {
                    recipe: "debian-bookworm-sandbox".into(),
                },
                0,
            ),
            image(
                "debian-bookworm-slim",
                "Docker's debian:bookworm-slim (no init, no sshd: use vm run / vm exec)",
                ImageSource::Oci {
                    reference: "docker.io/library/debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251".into(),
                },
                29 << 20,
            ),
            image(
                "alpine-3-20",
                "Docker's alpine:3.20 (busybox, no sshd: use vm run / vm exec)",
                ImageSource::Oci {
                    reference: "docker.io/library/alpine:3.20@sha256:d9e853e87e55526f6b2917df91a2115c36dd7c696a35be12163d44e6e2a4b6bc".into(),
                },
                4 << 20,
            ),
        ],
        kernels: vec![KernelEntry {
            name: "debian-cloud".into(),
            description: "Debian 12's cloud kernel (linux-image-cloud-amd64) through this host's apt"
                .into(),
            source: KernelSource::Apt,
            size: 0,
            arch: "x86_64".into(),
            origin: BUILTIN.into(),
        }],
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    image: Vec<RawEntry>,
    #[serde(default)]
    kernel: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    description: String,
    url: String,
    sha256: String,
    size: u64,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    kernel: Option<String>,
}

/// The built-in catalog plus the user's `<config_dir>/catalog.toml` (absent
/// is fine). A user entry may not reuse a built-in name.
pub fn load(config_dir: &Path) -> Result<Catalog, CatalogError> {
    let mut c = builtin();
    let path = config_dir.join(USER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(c),
        Err(source) => return Err(CatalogError::Read { path, source }),
    };
    let user = parse_user(&text, &path)?;
    for e in &user.images {
        if c.image(&e.name).is_some() {
            return Err(invalid(
                &path,
                format!(
                    "image {:?} is already a built-in entry; pick another name",
                    e.name
                ),
            ));
        }
    }
    for e in &user.kernels {
        if c.kernel(&e.name).is_some() {
            return Err(invalid(
                &path,
                format!(
                    "kernel {:?} is already a built-in entry; pick another name",
                    e.name
                ),
            ));
        }
    }
    c.images.extend(user.images);
    c.kernels.extend(user.kernels);
    Ok(c)
}

fn invalid(path: &Path, message: String) -> CatalogError {
    CatalogError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

/// Parses a user catalog file's text (`path` names it in errors).
pub fn parse_user(text: &str, path: &Path) -> Result<Catalog, CatalogError> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| invalid(path, e.to_string().trim().to_string()))?;
    let origin = path.display().to_string();
    let check = |kind: &str, e: &RawEntry| -> Result<(), CatalogError> {
        let what = format!("{kind} {:?}", e.name);
        crate::names::validate_vm_name(&e.name).map_err(|err| {
            invalid(
                path,
                format!("{what}: {}", err.to_string().replace("VM name", "name")),
            )
        })?;
        if !(e.sha256.len() == 64
            && e.sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        {
            return Err(invalid(
                path,
                format!("{what}: sha256 must be 64 lowercase hex digits"),
            ));
        }
        if !(e.url.starts_with("https://") || e.url.starts_with("http://")) {
            return Err(invalid(
                path,
                format!("{what}: url must be http:// or https:// (the sha256 pins its content)"),
            ));
        }
        if e.size == 0 || e.size > MAX_BUNDLE_BYTES {
            return Err(invalid(
                path,
                format!(
                    "{what}: size must be the bundle's size in bytes (1 to {MAX_BUNDLE_BYTES})"
                ),
            ));
        }
        if let Some(k) = &e.kernel {
            crate::names::validate_vm_name(k).map_err(|err| {
                invalid(
                    path,
                    format!(
                        "{what}: kernel: {}",
                        err.to_string().replace("VM name", "name")
                    ),
                )
            })?;
        }
        if e.arch.as_deref().is_some_and(|a| a != "x86_64") {
            return Err(invalid(
                path,
                format!("{what}: arch must be x86_64 (the only one banger runs)"),
            ));
        }
        Ok(())
    };
    let mut c = Catalog::default();
    for e in raw.image {
        check("image", &e)?;
        if c.image(&e.name).is_some() {
            return Err(invalid(path, format!("image {:?} is listed twice", e.name)));
        }
        c.images.push(ImageEntry {
            description: e.description,
            source: ImageSource::Bundle {
                url: e.url,
                sha256: e.sha256,
            },
            size: e.size,
            arch: "x86_64".into(),
            kernel: e
                .kernel
                .unwrap_or_else(|| crate::image::recipe::DEFAULT_KERNEL.into()),
            origin: origin.clone(),
            name: e.name,
        });
    }
    for e in raw.kernel {
        check("kernel", &e)?;
        if e.kernel.is_some() {
            return Err(invalid(
                path,
                format!("kernel {:?}: `kernel` is a key of image entries", e.name),
            ));
        }
        if c.kernel(&e.name).is_some() {
            return Err(invalid(
                path,
                format!("kernel {:?} is listed twice", e.name),
            ));
        }
        c.kernels.push(KernelEntry {
            description: e.description,
            source: KernelSource::Bundle {
                url: e.url,
                sha256: e.sha256,
            },
            size: e.size,
            arch: "x86_64".into(),
            origin: origin.clone(),
            name: e.name,
        });
    }
    Ok(c)
}

impl Catalog {
    /// `other`'s entries replace this one's of the same name (or join it).
    pub fn overlay(&mut self, other: Catalog) {
        for e in other.images {
            self.images.retain(|x| x.name != e.name);
            self.images.push(e);
        }
        for e in other.kernels {
            self.kernels.retain(|x| x.name != e.name);
            self.kernels.push(e);
        }
    }

    pub fn image(&self, name: &str) -> Option<&ImageEntry> {
        self.images.iter().find(|e| e.name == name)
    }
    pub fn kernel(&self, name: &str) -> Option<&KernelEntry> {
        self.kernels.iter().find(|e| e.name == name)
    }
}

impl ImageSource {
    /// One line for tables: what the source is.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Recipe { recipe } => format!("recipe {recipe}"),
            ImageSource::Oci { reference } => format!("oci {reference}"),
            ImageSource::Bundle { url, .. } => format!("bundle {url}"),
        }
    }
}

impl KernelSource {
    pub fn describe(&self) -> String {
        match self {
            KernelSource::Apt => "apt linux-image-cloud-amd64".into(),
            KernelSource::Bundle { url, .. } => format!("bundle {url}"),
        }
    }
}

/// Names for shell completion: the catalog's images (or kernels), best
/// effort (an unreadable user file gives the built-in names).
pub fn completion_names(config_dir: Option<&Path>, kernels: bool) -> Vec<String> {
    let c = config_dir
        .and_then(|d| load(d).ok())
        .unwrap_or_else(builtin);
    if kernels {
        c.kernels.into_iter().map(|e| e.name).collect()
    } else {
        c.images.into_iter().map(|e| e.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn builtin_oci_entries_are_pinned_by_digest_and_names_are_valid() {
        let c = builtin();
        for e in &c.images {
            crate::names::validate_vm_name(&e.name).unwrap();
            if let ImageSource::Oci { reference } = &e.source {
                let (_, digest) = reference.split_once("@sha256:").expect("pinned");
                assert_eq!(digest.len(), 64, "{reference}");
                crate::image::oci::parse(reference).unwrap();
            }
        }
        assert!(c.kernel("debian-cloud").is_some());
    }

    #[test]
    fn user_entries_are_checked_and_named_in_errors() {
        let p = Path::new("/x/catalog.toml");
        let ok = format!(
            "[[image]]\nname = \"team\"\nurl = \"http://127.0.0.1:1/t.tar.zst\"\nsha256 = \"{SHA}\"\nsize = 10\n\n[[kernel]]\nname = \"k\"\nurl = \"https://h/k.tar.zst\"\nsha256 = \"{SHA}\"\nsize = 5\n"
        );
        let c = parse_user(&ok, p).unwrap();
        assert_eq!(c.images[0].kernel, "debian-cloud");
        assert_eq!(c.images[0].origin, "/x/catalog.toml");
        assert!(matches!(c.kernels[0].source, KernelSource::Bundle { .. }));
        for (bad, says) in [
            (ok.replace(SHA, "abc"), "sha256 must be"),
            (ok.replace("http://127", "ftp://127"), "url must be"),
            (ok.replace("size = 10", "size = 0"), "size must be"),
            (ok.replace("name = \"team\"", "name = \"../x\""), "image \"../x\""),
            (ok.replace("size = 10", "size = 10\nmirror = 1"), "unknown field"),
            (ok.replace("size = 10", "size = 10\nkernel = \"../k\""), "kernel: name"),
            (format!("{ok}\n[[image]]\nname = \"team\"\nurl = \"http://a/b\"\nsha256 = \"{SHA}\"\nsize = 1\n"), "listed twice"),
        ] {
            let e = parse_user(&bad, p).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("/x/catalog.toml"), "{says}: {e}");
        }
    }

    #[test]
    fn a_user_entry_cannot_shadow_a_builtin_one() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(USER_FILE),
            format!("[[image]]\nname = \"alpine-3-20\"\nurl = \"http://a/b\"\nsha256 = \"{SHA}\"\nsize = 1\n"),
        )
        .unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("already a built-in"), "{e}");
        std::fs::remove_file(d.path().join(USER_FILE)).unwrap();
        assert_eq!(load(d.path()).unwrap(), builtin());
    }
}
