//! Stamps version, commit and build time into the binaries, and builds the
//! statically linked guest agent that `bangerd` embeds into images.
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Builds `agent/` as a static executable (glibc, `+crt-static`) in its own
/// target directory and returns its path. The explicit `--target` keeps the
/// flag off build scripts and proc macros.
fn build_static_agent() -> PathBuf {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.clone());
    let agent_target = target_root.join("agent-static");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--bin",
        "banger-agent",
        "--target",
        triple,
    ])
    .arg("--manifest-path")
    .arg(manifest.join("agent/Cargo.toml"))
    .arg("--target-dir")
    .arg(&agent_target)
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Ctarget-feature=+crt-static\x1f-Cstrip=symbols",
    )
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_BUILD_RUSTFLAGS")
    .env_remove("CARGO_TARGET_DIR")
    .env_remove("CARGO_BUILD_TARGET")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let status = cmd.status().expect("running cargo for the agent");
    assert!(status.success(), "building the static banger-agent failed");
    let bin = agent_target.join(triple).join("release/banger-agent");
    for dir in ["agent/src", "agent/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", manifest.join(dir).display());
    }
    bin
}

fn main() {
    let agent = build_static_agent();
    println!("cargo:rustc-env=BANGER_AGENT_BIN={}", agent.display());
    let version = git(&["describe", "--tags", "--exact-match", "--match", "v*"])
        .unwrap_or_else(|| "dev".to_string());
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=BANGER_VERSION={version}");
    println!("cargo:rustc-env=BANGER_COMMIT={commit}");
    println!("cargo:rustc-env=BANGER_BUILD_EPOCH={epoch}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        // Only files that exist: cargo takes a missing one as changed and
        // would rerun this (and relink every binary) on every build.
        let watch = |p: String| {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        };
        watch(format!("{git_dir}/HEAD"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(format!("{git_dir}/{r}"));
        }
        watch(format!("{git_dir}/packed-refs"));
    }
}
