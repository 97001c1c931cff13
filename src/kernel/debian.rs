//! `kernel pull debian-cloud`: the Debian cloud kernel through the host's apt.
//!
//! `apt-get download` fetches the package (apt checks it against the signed
//! archive index); `dpkg-deb -x` unpacks it; the ELF vmlinux is extracted
//! from the bzImage; the modules are kept; an initramfs is generated from
//! busybox-static (also fetched with apt) and the virtio/vsock modules.
//! Downloaded packages are cached by name and version.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{initramfs, modules, BundlePaths, KernelError};
use crate::fsutil::IoContext;

/// The meta package whose dependency names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Where busybox comes from.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

fn tool(name: &str) -> Result<PathBuf, KernelError> {
    crate::host::system_tool(name).ok_or_else(|| {
        KernelError::Failed(format!(
            "{name} is not installed; `kernel pull debian-cloud` needs a Debian host with apt"
        ))
    })
}

fn run(cmd: &mut Command) -> Result<String, KernelError> {
    // apt downloads a kernel package: generous, but not unbounded.
    let out = crate::host::process::run_bounded(
        cmd.env("LC_ALL", "C"),
        std::time::Duration::from_secs(1800),
        16 << 20,
    )
    .map_err(|e| {
        KernelError::Failed(format!(
            "running {}: {e}",
            cmd.get_program().to_string_lossy()
        ))
    })?;
    if !out.status.success() {
        return Err(KernelError::Failed(format!(
            "{} failed: {}",
            cmd.get_program().to_string_lossy(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves what to fetch: `--version 6.1.0-56` → `linux-image-6.1.0-56-cloud-amd64`;
/// no version → the package the meta package currently depends on.
pub fn resolve_package(version: Option<&str>) -> Result<String, KernelError> {
    if let Some(v) = version {
        let ok = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
            && v.split('-').count() == 2;
        if !ok {
            return Err(KernelError::BadInput(format!(
                "kernel version {v:?} is not an ABI version like 6.1.0-56 (see `apt-cache search linux-image-.*-cloud-amd64`)"
            )));
        }
        return Ok(format!("linux-image-{v}-cloud-amd64"));
    }
    let out =
        run(Command::new(tool("apt-cache")?).args(["show", "--no-all-versions", META_PACKAGE]))
            .map_err(|e| {
                KernelError::Failed(format!("{e}; run `sudo apt-get update` and retry"))
            })?;
    parse_depends(&out).ok_or_else(|| {
        KernelError::Failed(format!(
            "apt-cache show {META_PACKAGE}: no linux-image dependency found"
        ))
    })
}

/// The `linux-image-*-cloud-amd64` package in a Depends line.
pub fn parse_depends(show: &str) -> Option<String> {
    let line = show.lines().find(|l| l.starts_with("Depends:"))?;
    line["Depends:".len()..]
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-cloud-amd64"))
        .map(str::to_string)
}

/// The candidate version apt would download for `package`.
fn candidate_version(package: &str) -> Result<String, KernelError> {
    let out = run(Command::new(tool("apt-cache")?).args(["show", "--no-all-versions", package]))
        .map_err(|e| {
            KernelError::BadInput(format!(
                "{e}; is {package} a real package? run `sudo apt-get update` and retry"
            ))
        })?;
    out.lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| KernelError::Failed(format!("apt-cache show {package}: no Version")))
}

/// Downloads `package` (its candidate version) into `cache`, reusing a copy
/// already there. Returns the .deb path and the version.
pub fn download(package: &str, cache: &Path) -> Result<(PathBuf, String), KernelError> {
    let version = candidate_version(package)?;
    let file = format!("{package}_{}_amd64.deb", version.replace(':', "%3a"));
    let target = cache.join(&file);
    if target.is_file() {
        return Ok((target, version));
    }
    std::fs::create_dir_all(cache).ctx("creating", cache)?;
    let tmp = crate::fsutil::TempDir::new_in(cache, "download")
        .ctx("creating a download directory in", cache)?;
    // apt drops privileges to _apt when it can; a world-accessible dir avoids a warning.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777));
    run(Command::new(tool("apt-get")?)
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(tmp.path()))?;
    let got = std::fs::read_dir(tmp.path())
        .ctx("reading", tmp.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            KernelError::Failed(format!("apt-get download {package} produced no .deb"))
        })?;
    std::fs::rename(&got, &target).ctx("storing the download as", &target)?;
    Ok((target, version))
}

/// The source string of a pull: the apt package and version, and the
/// initramfs revision (a newer banger pulls again when it changed).
pub fn source_of(package: &str, version: &str) -> String {
    format!(
        "apt:{package}={version};initramfs={}",
        super::initramfs::REVISION
    )
}

/// Whether a kernel pulled with `source` is what a pull of `package` would
/// give now.
pub fn up_to_date(source: &str, package: &str) -> bool {
    source.starts_with(&format!("apt:{package}="))
        && source.ends_with(&format!(";initramfs={}", super::initramfs::REVISION))
}

/// Unpacks a .deb into `dir`.
pub fn unpack(deb: &Path, dir: &Path) -> Result<(), KernelError> {
    std::fs::create_dir_all(dir).ctx("creating", dir)?;
    run(Command::new(tool("dpkg-deb")?).arg("-x").arg(deb).arg(dir)).map(drop)
}

/// What a pull produced in the stage directory.
pub struct Pulled {
    pub kernel_version: String,
    pub source: String,
}

/// Downloads, unpacks and stages a Debian cloud kernel into `stage`.
pub fn pull(
    package: &str,
    cache: &Path,
    stage: &Path,
    mut step: impl FnMut(&str, String),
) -> Result<Pulled, KernelError> {
    step(
        "download",
        format!("{package} and {BUSYBOX_PACKAGE} via apt"),
    );
    let (deb, version) = download(package, cache)?;
    let (bb_deb, _) = download(BUSYBOX_PACKAGE, cache)?;
    step(
        "unpack",
        format!("{}", deb.file_name().unwrap_or_default().to_string_lossy()),
    );
    let work = crate::fsutil::TempDir::new_in(stage, "unpack")
        .ctx("creating an unpack directory in", stage)?;
    let pkg = work.path().join("pkg");
    unpack(&deb, &pkg)?;
    let bb = work.path().join("busybox");
    unpack(&bb_deb, &bb)?;
    let vmlinuz = std::fs::read_dir(pkg.join("boot"))
        .ctx("reading", &pkg.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| KernelError::Failed(format!("{package} has no boot/vmlinuz-*")))?;
    let kver = vmlinuz
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    step(
        "vmlinux",
        "extracting the ELF kernel from the bzImage".into(),
    );
    let image = std::fs::read(&vmlinuz).ctx("reading", &vmlinuz)?;
    let vmlinux = super::bzimage::extract_vmlinux(&image)
        .map_err(|e| KernelError::Failed(format!("{}: {e}", vmlinuz.display())))?;
    let b = BundlePaths::new(stage);
    crate::fsutil::write_synced(&b.vmlinux(), &vmlinux).ctx("writing", &b.vmlinux())?;
    let mods_src = pkg.join("lib/modules").join(&kver);
    let mods_dst = b.modules().join(&kver);
    std::fs::create_dir_all(b.modules()).ctx("creating", &b.modules())?;
    std::fs::rename(&mods_src, &mods_dst).ctx("moving the modules to", &mods_dst)?;
    step("initramfs", "busybox + virtio/vsock modules".into());
    let (mods, builtin) = modules::resolve(&mods_dst, modules::BOOT_MODULES)
        .ctx("reading the modules in", &mods_dst)?;
    if !builtin.is_empty() {
        tracing::info!(
            ?builtin,
            "boot modules not found as files (assumed built in)"
        );
    }
    let busybox = std::fs::read(bb.join("bin/busybox"))
        .map_err(|e| KernelError::Failed(format!("busybox-static has no bin/busybox: {e}")))?;
    crate::fsutil::write_synced(&b.initrd(), &initramfs::build(&busybox, &mods))
        .ctx("writing", &b.initrd())?;
    Ok(Pulled {
        kernel_version: kver,
        source: source_of(package, &version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        let show = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: x\n";
        assert_eq!(
            parse_depends(show).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("Package: x\n"), None);
    }

    #[test]
    fn version_pins_are_validated() {
        assert_eq!(
            resolve_package(Some("6.1.0-56")).unwrap(),
            "linux-image-6.1.0-56-cloud-amd64"
        );
        for bad in ["", "6.1.0", "6.1.0-56; rm -rf /", "latest"] {
            assert!(
                matches!(resolve_package(Some(bad)), Err(KernelError::BadInput(_))),
                "{bad}"
            );
        }
    }
}
