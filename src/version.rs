//! Build identity stamped by `build.rs`.

/// Release version (`v0.1.0`), or `dev` for untagged builds.
pub const VERSION: &str = env!("BANGER_VERSION");
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
        "{program} {VERSION} (commit {}, built {})",
        short_commit(),
        built_at()
    )
}

/// Multi-line form printed by `banger version` (which adds the protocol).
pub fn version_block(program: &str) -> String {
    format!("{program} {VERSION}\ncommit {COMMIT}\nbuilt {}", built_at())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_has_the_documented_shape() {
        let line = version_line("banger");
        assert!(
            line.starts_with(&format!("banger {VERSION} (commit ")),
            "{line}"
        );
        assert!(line.ends_with("Z)"), "{line}");
        assert!(!line.contains('\n'));
        let built = line.rsplit("built ").next().unwrap().trim_end_matches(')');
        humantime::parse_rfc3339(built).expect("build time is RFC 3339");
    }
}
