//! File helpers: synced writes, copies (sparse-aware), trees, atomic publish,
//! and [`IoError`], an I/O error that says what was being done to which path.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An I/O failure with the operation and the path it concerned, so a user
/// reads "creating /var/lib/x: Permission denied" instead of a bare errno.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct IoError {
    pub op: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn new(op: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError {
            op: op.into(),
            path: path.into(),
            source,
        }
    }

    /// Whether the underlying error is `kind`.
    pub fn is(&self, kind: std::io::ErrorKind) -> bool {
        self.source.kind() == kind
    }
}

/// Attaches the operation and path to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, op: &str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &str, path: &Path) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(op, path, e))
    }
}

/// Bytes free for unprivileged use on the filesystem of `path` (unknown:
/// as good as unlimited, the write itself will say).
pub fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
        .unwrap_or(u64::MAX)
}

/// Reads a whole file of at most `max` bytes; a longer one is an error
/// that says so (a manifest, a kernel, a module: never read unbounded).
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut v = Vec::new();
    f.take(max + 1).read_to_end(&mut v)?;
    if v.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(v)
}

/// Reads all of `r` up to `max` bytes; more is an error (a decompressor
/// fed a bomb stops there).
pub fn read_all_capped(mut r: impl std::io::Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    (&mut r).take(max + 1).read_to_end(&mut v)?;
    if v.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decompresses to more than {max} bytes"),
        ));
    }
    Ok(v)
}

/// A writer into memory that refuses to grow past a bound.
pub struct CappedVec {
    pub data: Vec<u8>,
    pub max: usize,
}

impl std::io::Write for CappedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.data.len() + buf.len() > self.max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("decompresses to more than {} bytes", self.max),
            ));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `data` to `path` and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The last `max` bytes of a file as text (lossy; empty when unreadable).
/// Never reads more than `max`, whatever the file's size.
pub fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// fsyncs a directory (so renames inside it are durable).
/// Where a file is written before it is renamed to `to`: its directory
/// and a hidden `.<name>.partial` in it.
pub fn partial_path(to: &Path) -> (PathBuf, PathBuf) {
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let tmp = parent.join(format!(
        ".{}.partial",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    (parent, tmp)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Copies a file, preserving holes, and fsyncs the copy. Only the data
/// regions are read (`SEEK_DATA`/`SEEK_HOLE`: a 2 GiB work disk holding a
/// few MiB copies in milliseconds), and runs of zero blocks inside them are
/// skipped too.
pub fn copy_synced(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut input = File::open(src)?;
    let len = input.metadata()?.len();
    let mut out = File::create(dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let fd = input.as_raw_fd();
    // SAFETY: lseek on a file we hold open.
    let seek =
        |pos: u64, whence: libc::c_int| unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
    let mut pos = 0u64;
    while pos < len {
        // The next data region [start, end); without SEEK_DATA, all of it.
        let start = seek(pos, libc::SEEK_DATA);
        let (start, end) = if start < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // Only holes from here on.
                Some(libc::ENXIO) => break,
                _ => (pos, len),
            }
        } else {
            let end = seek(start as u64, libc::SEEK_HOLE);
            (
                start as u64,
                if end < 0 { len } else { (end as u64).min(len) },
            )
        };
        input.seek(SeekFrom::Start(start))?;
        out.seek(SeekFrom::Start(start))?;
        let mut at = start;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let n = input.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().all(|&b| b == 0) {
                out.seek(SeekFrom::Current(n as i64))?;
            } else {
                out.write_all(&buf[..n])?;
            }
            at += n as u64;
        }
        pos = end.max(start + 1);
    }
    out.set_len(len)?;
    let mode = std::fs::metadata(src)?.permissions();
    std::fs::set_permissions(dst, mode)?;
    out.sync_all()
}

/// Hard-links `src` to `dst`, or copies it when linking is not possible
/// (another filesystem).
pub fn link_or_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(_) => copy_synced(src, dst),
    }
}

/// Copies a directory tree (files, dirs, symlinks).
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let ft = e.file_type()?;
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// Removes a path whether it is a file or a directory; absent is fine.
pub fn remove_all(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

/// Publishes a staged directory: fsyncs what is inside, renames it to `dst`
/// (which must not exist) and fsyncs the parent.
pub fn publish_dir(staged: &Path, dst: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(staged)? {
        let e = e?;
        if e.file_type()?.is_file() {
            File::open(e.path())?.sync_all()?;
        }
    }
    sync_dir(staged)?;
    if dst.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", dst.display()),
        ));
    }
    std::fs::rename(staged, dst)?;
    if let Some(parent) = dst.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Publishes `staged` at `dst`, replacing what is there: the old directory is
/// renamed aside first and removed after the new one is in place.
pub fn replace_dir(staged: &Path, dst: &Path) -> std::io::Result<()> {
    if !dst.exists() {
        return publish_dir(staged, dst);
    }
    let parent = dst.parent().unwrap_or(Path::new("."));
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = TempDir::new_in(parent, &format!("old-{name}"))?;
    std::fs::remove_dir(old.path())?;
    std::fs::rename(dst, old.path())?;
    if let Err(e) = publish_dir(staged, dst) {
        let _ = std::fs::rename(old.path(), dst);
        return Err(e);
    }
    drop(old);
    Ok(())
}

/// A directory removed on drop unless [`TempDir::keep`] was called.
pub struct TempDir {
    path: std::path::PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `<parent>/.tmp-<label>-<random>`.
    pub fn new_in(parent: &Path, label: &str) -> std::io::Result<TempDir> {
        use rand::RngExt;
        std::fs::create_dir_all(parent)?;
        let path = parent.join(format!(".tmp-{label}-{:08x}", rand::rng().random::<u32>()));
        std::fs::create_dir(&path)?;
        Ok(TempDir { path, keep: false })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Stops the directory from being removed on drop.
    pub fn keep(mut self) -> std::path::PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_all(&self.path);
        }
    }
}

/// Removes leftover `.tmp-*` entries in `dir` (from interrupted work).
pub fn sweep_temp(dir: &Path) -> Vec<std::path::PathBuf> {
    sweep_prefixed(dir, ".tmp-")
}

/// Removes leftover [`TempDir`]s made in `dir` with `label` only.
pub fn sweep_temp_of(dir: &Path, label: &str) -> Vec<std::path::PathBuf> {
    sweep_prefixed(dir, &format!(".tmp-{label}-"))
}

fn sweep_prefixed(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) && remove_all(&e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    }
    removed
}

/// Makes `dir` (and missing parents, 0700) and proves it is a real
/// directory owned by root and closed to others: where bangerd-root works,
/// nobody else may have planted or can change anything.
pub fn root_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let md = std::fs::symlink_metadata(dir)?;
    if !md.is_dir() || md.uid() != 0 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory owned by root; remove it and retry",
            dir.display()
        )));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Bytes `path` (a file or a whole tree, links not followed) occupies on
/// disk: allocated blocks, so sparse images count what they use.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += md.blocks() * 512;
        if md.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_are_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![1u8; 100]).unwrap();
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
        assert!(read_capped(&p, 99)
            .unwrap_err()
            .to_string()
            .contains("larger than 99"));
        assert!(read_all_capped(&[0u8; 10][..], 9).is_err());
        assert_eq!(read_all_capped(&[0u8; 10][..], 10).unwrap().len(), 10);
        let mut w = CappedVec {
            data: vec![],
            max: 4,
        };
        use std::io::Write;
        w.write_all(b"abcd").unwrap();
        assert!(w.write_all(b"e").is_err());
    }

    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn root_private_dir_refuses_planted_dirs_and_symlinks() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the tests run as root (scripts/test.sh)"
        );
        let t = tempfile::tempdir().unwrap();
        // Made fresh: 0700, root's.
        let fresh = t.path().join("a/b/work");
        root_private_dir(&fresh).unwrap();
        let md = std::fs::symlink_metadata(&fresh).unwrap();
        assert_eq!((md.uid(), md.mode() & 0o777), (0, 0o700));
        // Idempotent.
        root_private_dir(&fresh).unwrap();
        // Planted by another user: refused, left alone.
        let planted = t.path().join("planted");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let e = root_private_dir(&planted).unwrap_err();
        assert!(
            e.to_string().contains("not a directory owned by root"),
            "{e}"
        );
        // A symlink to a root directory: refused too.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(root_private_dir(&link).is_err());
    }

    #[test]
    fn sparse_copy_keeps_holes_and_content() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a");
        {
            let mut f = File::create(&src).unwrap();
            f.write_all(b"head").unwrap();
            f.seek(SeekFrom::Start(64 << 20)).unwrap();
            f.write_all(b"tail").unwrap();
        }
        let dst = d.path().join("b");
        copy_synced(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(
            std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20,
            "copy is sparse"
        );
        // Ending in a hole, and nothing but a hole.
        for (data, len) in [(&b"x"[..], 3u64 << 30), (&b""[..], 1 << 20)] {
            let f = File::create(&src).unwrap();
            (&f).write_all(data).unwrap();
            f.set_len(len).unwrap();
            drop(f);
            copy_synced(&src, &dst).unwrap();
            let m = std::fs::metadata(&dst).unwrap();
            assert_eq!(m.len(), len);
            assert!(m.blocks() * 512 < 1 << 20);
            let mut head = vec![0u8; 2];
            File::open(&dst).unwrap().read_exact(&mut head).unwrap();
            assert_eq!(&head[..data.len()], data);
        }
    }

    #[test]
    fn temp_dirs_vanish_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        let t = TempDir::new_in(d.path(), "x").unwrap();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());
        let t = TempDir::new_in(d.path(), "y").unwrap();
        std::fs::write(t.path().join("f"), b"1").unwrap();
        publish_dir(t.path(), &d.path().join("final")).unwrap();
        assert!(d.path().join("final/f").exists());
        let _ = t.keep();
        std::fs::create_dir(d.path().join(".tmp-stale")).unwrap();
        assert_eq!(sweep_temp(d.path()).len(), 1);
    }
}
