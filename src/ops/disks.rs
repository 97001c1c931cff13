//! Per-VM disks. The root disk is copy-on-write of the image: for QEMU a
//! qcow2 overlay over the image file hard-linked into the VM's directory
//! (instant, and independent of later image rebuilds: image files are never
//! modified in place); for Firecracker, which needs raw disks, a reflink
//! where the filesystem supports it, else a sparse copy. (dm-snapshot is not
//! used: the development hosts have no device-mapper to build it against.)
//! The work disk is a copy of the image's work seed, grown to the requested
//! size.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::domain::VmmKind;
use crate::fsutil::{IoContext, IoError};
use crate::paths::VmPaths;
use crate::vmm::DiskFormat;

/// A per-VM disk could not be made: the file and what was done to it, or
/// the tool and what it said.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{tool} is not installed; install {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{0}")]
    Tool(String),
    /// What was asked cannot be done (shrinking, no room): nothing changed.
    #[error("{0}")]
    Refused(String),
}

fn tool(name: &'static str, package: &'static str) -> Result<PathBuf, DiskError> {
    crate::host::system_tool(name).ok_or(DiskError::MissingTool {
        tool: name,
        package,
    })
}

fn run(cmd: &mut Command) -> Result<(), DiskError> {
    // Disk tools are quick; a wedged one (a hung filesystem) must not hold
    // the VM's operation forever.
    let out = crate::host::process::run_bounded(
        cmd.env("LC_ALL", "C"),
        std::time::Duration::from_secs(600),
        1 << 20,
    )
    .map_err(|e| DiskError::Tool(format!("{}: {e}", cmd.get_program().to_string_lossy())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool(format!(
            "{} failed: {}",
            cmd.get_program().to_string_lossy(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Clones `src` to `dst` with FICLONE (reflink); false when unsupported.
pub fn reflink(src: &Path, dst: &Path) -> std::io::Result<bool> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    let s = std::fs::File::open(src)?;
    let d = std::fs::File::create(dst)?;
    // SAFETY: FICLONE takes the source fd as its argument.
    let rc = unsafe { libc::ioctl(d.as_raw_fd(), FICLONE, s.as_raw_fd()) };
    if rc == 0 {
        d.sync_all()?;
        Ok(true)
    } else {
        drop(d);
        let _ = std::fs::remove_file(dst);
        Ok(false)
    }
}

/// The root disk of a VM and its format (it exists after [`prepare_root`]).
pub fn root_disk(paths: &VmPaths, kind: VmmKind) -> (PathBuf, DiskFormat) {
    match kind {
        VmmKind::Qemu => (paths.root_qcow2(), DiskFormat::Qcow2),
        VmmKind::Firecracker => (paths.root_raw(), DiskFormat::Raw),
    }
}

/// Makes the root disk; returns how (`qcow2 overlay`, `reflink`, `sparse copy`).
pub fn prepare_root(
    image_rootfs: &Path,
    paths: &VmPaths,
    kind: VmmKind,
) -> Result<&'static str, DiskError> {
    std::fs::create_dir_all(&paths.state).ctx("creating", &paths.state)?;
    match kind {
        VmmKind::Qemu => {
            let base = paths.base_disk();
            let _ = std::fs::remove_file(&base);
            crate::fsutil::link_or_copy(image_rootfs, &base)
                .ctx("placing the base image at", &base)?;
            let overlay = paths.root_qcow2();
            let _ = std::fs::remove_file(&overlay);
            let tmp = tmp_name(&overlay);
            let _ = std::fs::remove_file(&tmp);
            run(Command::new(tool("qemu-img", "qemu-utils")?)
                .args([
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "raw",
                    "-b",
                    "base.ext4",
                ])
                .arg(&tmp)
                .current_dir(&paths.state))?;
            publish(&tmp, &overlay)?;
            Ok("qcow2 overlay")
        }
        VmmKind::Firecracker => {
            let dst = paths.root_raw();
            let tmp = tmp_name(&dst);
            let how = if reflink(image_rootfs, &tmp).ctx("cloning the image to", &tmp)? {
                "reflink"
            } else {
                crate::fsutil::copy_synced(image_rootfs, &tmp)
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })
                    .ctx("copying the image to", &tmp)?;
                "sparse copy"
            };
            publish(&tmp, &dst)?;
            Ok(how)
        }
    }
}

/// A restored clone's disks: a qcow2 overlay backed by `snapshot_root`
/// (the snapshot's frozen overlay) and a sparse copy of `snapshot_work`,
/// each built under `.tmp` and renamed into place.
pub fn prepare_clone(
    snapshot_root: &Path,
    snapshot_work: &Path,
    paths: &VmPaths,
) -> Result<(), DiskError> {
    std::fs::create_dir_all(&paths.state).ctx("creating", &paths.state)?;
    let root = paths.root_qcow2();
    let tmp = tmp_name(&root);
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = run(Command::new(tool("qemu-img", "qemu-utils")?)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(snapshot_root)
        .arg(&tmp))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    publish(&tmp, &root)?;
    let work = paths.work_disk();
    let wtmp = tmp_name(&work);
    crate::fsutil::copy_synced(snapshot_work, &wtmp)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&wtmp);
        })
        .ctx("copying the work disk to", &wtmp)?;
    publish(&wtmp, &work)
}

/// `<path>.tmp`: where a disk is built before it gets its name.
fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Renames a finished disk into place (a disk under its real name is
/// always whole: an interrupted creation leaves only a `.tmp`, redone next
/// time).
fn publish(tmp: &Path, dst: &Path) -> Result<(), DiskError> {
    std::fs::rename(tmp, dst)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(tmp);
        })
        .ctx("renaming into place", tmp)?;
    Ok(())
}

/// Makes the work disk from the seed, grown to `bytes`.
pub fn prepare_work(seed: &Path, paths: &VmPaths, bytes: u64) -> Result<(), DiskError> {
    let final_path = paths.work_disk();
    let work = tmp_name(&final_path);
    let _ = std::fs::remove_file(&work);
    let r = grow_work(seed, &work, bytes);
    match r {
        Ok(()) => publish(&work, &final_path),
        Err(e) => {
            let _ = std::fs::remove_file(&work);
            Err(e)
        }
    }
}

fn grow_work(seed: &Path, work: &Path, bytes: u64) -> Result<(), DiskError> {
    crate::fsutil::copy_synced(seed, work).ctx("copying the work seed to", work)?;
    let seed_len = std::fs::metadata(work)
        .ctx("reading the size of", work)?
        .len();
    if bytes > seed_len {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(work)
            .ctx("opening", work)?;
        f.set_len(bytes).ctx("growing the work disk", work)?;
        drop(f);
        // e2fsck exits 1 when it fixed something: that is fine here.
        let _ = check_fs(work);
        resize_fs(work)?;
    }
    Ok(())
}

/// `e2fsck -f -p`: whether the file system is whole (0: clean, 1: fixed,
/// 2: fixed, reboot advised; 4 and up: errors left).
fn check_fs(disk: &Path) -> Result<bool, DiskError> {
    let out = crate::host::process::run_bounded(
        Command::new(tool("e2fsck", "e2fsprogs")?)
            .args(["-f", "-p"])
            .arg(disk),
        std::time::Duration::from_secs(600),
        1 << 20,
    )
    .map_err(|e| DiskError::Tool(format!("e2fsck: {e}")))?;
    Ok(out.status.code().is_some_and(|c| c < 4))
}

/// Grows the ext4 file system on `disk` to the file's size.
fn resize_fs(disk: &Path) -> Result<(), DiskError> {
    run(Command::new(tool("resize2fs", "e2fsprogs")?)
        .arg("-f")
        .arg(disk))
}

/// Grows a stopped VM's work disk to `bytes` in place (never shrinks):
/// checked first, then the file and its file system grown. Needs the
/// growth free on the disk's file system (the guest may fill it).
pub fn grow_existing_work(paths: &VmPaths, bytes: u64, free: Option<u64>) -> Result<(), DiskError> {
    let work = paths.work_disk();
    let have = std::fs::metadata(&work)
        .ctx("reading the size of", &work)?
        .len();
    let size = crate::size::format_size;
    if bytes < have {
        return Err(DiskError::Refused(format!(
            "the work disk is {}; it only grows (asked {})",
            size(have),
            size(bytes)
        )));
    }
    if let Some(f) = free.filter(|f| *f < bytes - have) {
        return Err(DiskError::Refused(format!(
            "growing the work disk from {} to {} needs {} free in {}; {} is free: free some space or ask for less",
            size(have),
            size(bytes),
            size(bytes - have),
            paths.state.display(),
            size(f)
        )));
    }
    if !check_fs(&work)? {
        return Err(DiskError::Refused(format!(
            "the work disk {} has errors e2fsck could not fix; nothing was changed",
            work.display()
        )));
    }
    if bytes > have {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&work)
            .ctx("opening", &work)?;
        f.set_len(bytes).ctx("growing the work disk", &work)?;
        f.sync_all().ctx("syncing", &work)?;
    }
    // Also at the same size: a file grown by an attempt whose resize2fs
    // failed gets its file system grown now.
    resize_fs(&work)
}

/// Whether the disks exist already (a VM that was started before).
pub fn exist(paths: &VmPaths, kind: VmmKind) -> bool {
    root_disk(paths, kind).0.exists() && paths.work_disk().exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block count `dumpe2fs -h` reports.
    fn blocks(disk: &Path) -> u64 {
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Block count:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_stopped_vms_work_disk_grows_its_file_system_and_never_shrinks() {
        let d = tempfile::tempdir().unwrap();
        let paths = VmPaths {
            state: d.path().to_path_buf(),
            run: d.path().join("run"),
        };
        let work = paths.work_disk();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-b", "4096"])
            .arg(&work)
            .arg("16M")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert_eq!(blocks(&work), 4096);
        let e = grow_existing_work(&paths, 8 << 20, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only grows"), "{e}");
        let e = grow_existing_work(&paths, 64 << 20, Some(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 48M") || e.contains("needs 48.0M"), "{e}");
        assert_eq!(
            std::fs::metadata(&work).unwrap().len(),
            16 << 20,
            "nothing changed"
        );
        grow_existing_work(&paths, 64 << 20, Some(1 << 30)).unwrap();
        assert_eq!(std::fs::metadata(&work).unwrap().len(), 64 << 20);
        assert_eq!(blocks(&work), 16384, "the file system grew with the file");
        // A file grown by an attempt whose resize failed: the same size
        // again grows the file system.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&work)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        grow_existing_work(&paths, 96 << 20, None).unwrap();
        assert_eq!(blocks(&work), 24576);
    }

    #[test]
    fn reflink_falls_back_cleanly_where_unsupported() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a");
        std::fs::write(&src, b"data").unwrap();
        let dst = d.path().join("b");
        match reflink(&src, &dst).unwrap() {
            true => assert_eq!(std::fs::read(&dst).unwrap(), b"data"),
            false => assert!(!dst.exists(), "a failed reflink leaves no file"),
        }
    }
}
