//! Build identity: commit and build time stamped by `build.rs`; the
//! version by `build.rs` (a `v*` tag on the built commit, else `dev`) unless
//! `scripts/release.sh` stamped a release version into the binary since.

use std::sync::OnceLock;

/// The version `build.rs` saw: the exact `v*` tag of the commit, or `dev`.
const BUILD_VERSION: &str = env!("BANGER_VERSION");
/// Size of the release stamp.
pub const STAMP_LEN: usize = 64;
/// ELF section that holds the release stamp.
pub const STAMP_SECTION: &str = ".banger_release";

/// The release stamp: zeros as built; `scripts/release.sh` writes the
/// release's version into this section of the finished binary (`objcopy
/// --update-section`), so one build becomes a release without rebuilding
/// and every binary of a release names the same version.
#[used]
#[link_section = ".banger_release"]
static STAMP: [u8; STAMP_LEN] = [0; STAMP_LEN];
static RESOLVED: OnceLock<String> = OnceLock::new();

/// Release version (`v0.1.0`), or `dev` for a build that is not a release.
pub fn version() -> &'static str {
    RESOLVED.get_or_init(|| {
        // A volatile read: the compiler must not fold the zeros it built.
        let bytes = unsafe { std::ptr::read_volatile(&STAMP) };
        stamped(&bytes).unwrap_or_else(|| BUILD_VERSION.to_string())
    })
}

/// The version in a stamp: printable ASCII up to the first NUL, or None.
fn stamped(bytes: &[u8; STAMP_LEN]) -> Option<String> {
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(STAMP_LEN);
    let v = &bytes[..n];
    (!v.is_empty() && v.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(v).into_owned())
}
/// Full commit hash, or `unknown` outside a git checkout.
pub const COMMIT: &str = env!("BANGER_COMMIT");
const BUILD_EPOCH: &str = env!("BANGER_BUILD_EPOCH");

/// Build time as RFC 3339 (UTC, seconds precision).
pub fn built_at() -> String {
    let secs: u64 = BUILD_EPOCH.parse().unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Short commit: first 8 characters, or the whole string when shorter (`unknown`).
pub fn short_commit() -> &'static str {
    if COMMIT.len() > 8 && COMMIT.chars().all(|c| c.is_ascii_hexdigit()) {
        &COMMIT[..8]
    } else {
        COMMIT
    }
}

/// One-line summary: `<program> <version> (commit <short>, built <RFC3339>)`.
pub fn version_line(program: &str) -> String {
    format!(
        "{program} {} (commit {}, built {})",
        version(),
        short_commit(),
        built_at()
    )
}

/// Multi-line form printed by `banger version` (which adds the protocol).
pub fn version_block(program: &str) -> String {
    format!(
        "{program} {}\ncommit {COMMIT}\nbuilt {}",
        version(),
        built_at()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_has_the_documented_shape() {
        let line = version_line("banger");
        assert!(
            line.starts_with(&format!("banger {} (commit ", version())),
            "{line}"
        );
        assert!(line.ends_with("Z)"), "{line}");
        assert!(!line.contains('\n'));
        let built = line.rsplit("built ").next().unwrap().trim_end_matches(')');
        humantime::parse_rfc3339(built).expect("build time is RFC 3339");
    }

    #[test]
    fn a_stamp_names_a_version_only_when_it_is_printable() {
        let mut b = [0u8; STAMP_LEN];
        assert_eq!(stamped(&b), None, "an unstamped binary");
        b[..6].copy_from_slice(b"v0.2.0");
        assert_eq!(stamped(&b).as_deref(), Some("v0.2.0"));
        b[2] = b'\n';
        assert_eq!(stamped(&b), None, "a control byte");
        let full = [b'x'; STAMP_LEN];
        assert_eq!(stamped(&full).map(|s| s.len()), Some(STAMP_LEN));
    }
}
