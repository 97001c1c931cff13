//! Putting a verified release in place: unpack its three binaries into a
//! staging directory beside the installed ones (same file system, so a
//! rename is atomic), swap them in keeping each old one as
//! `<name>.previous`, and put those back on rollback.
//!
//! The tarball holds `banger-<version>-x86_64-linux/bin/{banger,bangerd,
//! bangerd-root}` (plus completions and docs the updater ignores). Only
//! regular files at exactly those paths are taken; nothing in the tarball
//! names a path on the host.

use std::io::Read;
use std::path::{Component, Path};

use super::BINARIES;

/// Largest binary taken from a tarball.
const BINARY_MAX: u64 = 256 << 20;

/// The tarball's top directory for a version.
pub fn top_dir(version: &str) -> String {
    format!("banger-{version}-{}", super::ARCH)
}

/// Unpacks the three binaries of `tarball` (zstd tar) into `stage`.
pub fn unpack(tarball: &Path, stage: &Path, version: &str) -> Result<(), String> {
    let f = std::fs::File::open(tarball).map_err(|e| format!("opening the download: {e}"))?;
    let z = zstd::stream::read::Decoder::new(f).map_err(|e| format!("the tarball: {e}"))?;
    let mut ar = tar::Archive::new(z);
    let top = top_dir(version);
    let mut got: Vec<&str> = Vec::new();
    let entries = ar
        .entries()
        .map_err(|e| format!("reading the tarball: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the tarball: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("a tarball path: {e}"))?
            .into_owned();
        let parts: Vec<&str> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => Some(""),
            })
            .collect();
        let Some(name) = BINARIES
            .into_iter()
            .find(|b| parts.as_slice() == [top.as_str(), "bin", b])
        else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            return Err(format!(
                "{} in the tarball is not a regular file",
                path.display()
            ));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > BINARY_MAX {
            return Err(format!(
                "{} in the tarball is larger than {BINARY_MAX} bytes",
                path.display()
            ));
        }
        if got.contains(&name) {
            return Err(format!("the tarball holds {name} twice"));
        }
        write_new(&stage.join(name), &mut (&mut entry).take(BINARY_MAX))?;
        got.push(name);
    }
    let missing: Vec<&str> = BINARIES.into_iter().filter(|b| !got.contains(b)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "the tarball has no {top}/bin/{}; it is not a banger release",
            missing.join(", ")
        ));
    }
    Ok(())
}

fn write_new(dst: &Path, src: &mut dyn Read) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(|e| format!("creating {}: {e}", dst.display()))?;
    std::io::copy(src, &mut f).map_err(|e| format!("writing {}: {e}", dst.display()))?;
    f.flush()
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", dst.display()))
}

/// Runs each staged binary with `--version`: it must start on this host
/// and name `version`.
pub fn check_binaries(stage: &Path, version: &str) -> Result<(), String> {
    for b in BINARIES {
        let out = crate::host::process::run_bounded(
            std::process::Command::new(stage.join(b))
                .arg("--version")
                .stdin(std::process::Stdio::null()),
            std::time::Duration::from_secs(30),
            64 << 10,
        )
        .map_err(|e| format!("the new {b} does not run here: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let says = text.split_whitespace().nth(1).unwrap_or("");
        if !out.status.success() || says != version {
            return Err(format!(
                "the new {b} --version says {:?}, not {version}; the release is broken",
                text.trim()
            ));
        }
    }
    Ok(())
}

fn previous(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.previous"))
}

/// `dst` becomes a second name of `src`'s file, replacing what `dst` was,
/// atomically (a link beside it, then a rename over it).
fn link_over(src: &Path, dst: &Path) -> std::io::Result<()> {
    let tmp = dst.with_file_name(format!(
        ".{}.tmp",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(src, &tmp)?;
    std::fs::rename(&tmp, dst)
}

/// Puts the staged binaries in `dir`, each old one kept as
/// `<name>.previous`. All three or none: when a rename fails, the ones
/// already swapped are put back.
pub fn swap(dir: &Path, stage: &Path) -> Result<(), String> {
    for b in BINARIES {
        let cur = dir.join(b);
        if cur.exists() {
            link_over(&cur, &previous(dir, b))
                .map_err(|e| format!("keeping {} as {b}.previous: {e}", cur.display()))?;
        }
    }
    for (i, b) in BINARIES.into_iter().enumerate() {
        if let Err(e) = std::fs::rename(stage.join(b), dir.join(b)) {
            for done in &BINARIES[..i] {
                let _ = link_over(&previous(dir, done), &dir.join(done));
            }
            return Err(format!("installing {b} into {}: {e}", dir.display()));
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Puts each `<name>.previous` back as `<name>` (kept as `.previous` too).
pub fn restore_previous(dir: &Path) -> Result<(), String> {
    for b in BINARIES {
        let prev = previous(dir, b);
        if prev.exists() {
            link_over(&prev, &dir.join(b))
                .map_err(|e| format!("putting {} back: {e}", prev.display()))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, entries: &[(&str, &[u8])]) -> std::path::PathBuf {
        let p = dir.join("r.tar.zst");
        let z = zstd::stream::write::Encoder::new(std::fs::File::create(&p).unwrap(), 3).unwrap();
        let mut b = tar::Builder::new(z);
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        p
    }

    #[test]
    fn only_the_three_binaries_at_their_paths_are_unpacked() {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(
            d.path(),
            &[
                ("banger-v1.0.0-x86_64-linux/bin/banger", b"1"),
                ("banger-v1.0.0-x86_64-linux/bin/bangerd", b"2"),
                ("banger-v1.0.0-x86_64-linux/bin/bangerd-root", b"3"),
                ("banger-v1.0.0-x86_64-linux/bin/other", b"4"),
                ("banger-v1.0.0-x86_64-linux/README.md", b"5"),
            ],
        );
        let stage = d.path().join("stage");
        std::fs::create_dir(&stage).unwrap();
        unpack(&t, &stage, "v1.0.0").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&stage)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["banger", "bangerd", "bangerd-root"]);
        assert_eq!(std::fs::read(stage.join("bangerd")).unwrap(), b"2");
    }

    #[test]
    fn a_tarball_of_another_version_or_missing_a_binary_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(
            d.path(),
            &[
                ("banger-v1.0.0-x86_64-linux/bin/banger", b"1"),
                ("banger-v1.0.0-x86_64-linux/bin/bangerd", b"2"),
            ],
        );
        let stage = d.path().join("stage");
        std::fs::create_dir(&stage).unwrap();
        let e = unpack(&t, &stage, "v1.0.0").unwrap_err();
        assert!(
            e.contains("no banger-v1.0.0-x86_64-linux/bin/bangerd-root"),
            "{e}"
        );
        let stage2 = d.path().join("stage2");
        std::fs::create_dir(&stage2).unwrap();
        let e = unpack(&t, &stage2, "v2.0.0").unwrap_err();
        assert!(e.contains("not a banger release"), "{e}");
    }

    #[test]
    fn a_swap_keeps_the_old_binaries_and_a_restore_puts_them_back() {
        let d = tempfile::tempdir().unwrap();
        let (dir, stage) = (d.path().join("bin"), d.path().join("stage"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&stage).unwrap();
        for b in BINARIES {
            std::fs::write(dir.join(b), format!("old {b}")).unwrap();
            std::fs::write(stage.join(b), format!("new {b}")).unwrap();
        }
        swap(&dir, &stage).unwrap();
        for b in BINARIES {
            assert_eq!(
                std::fs::read_to_string(dir.join(b)).unwrap(),
                format!("new {b}")
            );
            assert_eq!(
                std::fs::read_to_string(previous(&dir, b)).unwrap(),
                format!("old {b}")
            );
        }
        restore_previous(&dir).unwrap();
        for b in BINARIES {
            assert_eq!(
                std::fs::read_to_string(dir.join(b)).unwrap(),
                format!("old {b}")
            );
        }
    }

    #[test]
    fn a_failed_swap_leaves_the_old_binaries_in_place() {
        let d = tempfile::tempdir().unwrap();
        let (dir, stage) = (d.path().join("bin"), d.path().join("stage"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&stage).unwrap();
        for b in BINARIES {
            std::fs::write(dir.join(b), format!("old {b}")).unwrap();
        }
        // bangerd-root is missing from the stage: the third rename fails.
        std::fs::write(stage.join("banger"), "new").unwrap();
        std::fs::write(stage.join("bangerd"), "new").unwrap();
        let e = swap(&dir, &stage).unwrap_err();
        assert!(e.contains("installing bangerd-root"), "{e}");
        for b in BINARIES {
            assert_eq!(
                std::fs::read_to_string(dir.join(b)).unwrap(),
                format!("old {b}")
            );
        }
    }
}
