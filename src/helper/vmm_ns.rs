//! The VMM's own mount namespace: the owner's home (and `/home`, `/root`)
//! and banger's runtime directory covered by empty tmpfs mounts, with only
//! banger's own directories the VMM needs bound back at their paths (of the
//! runtime directory, only the VM's own `vms/<id>`). A VMM escape, running
//! as the owner, then does not see the owner's keys, repositories or
//! sockets (`bangerd.sock`, `bangerd-root.sock`: through them it could
//! drive banger as the owner).
//!
//! Everything is computed before `fork` ([`plan`]); the child only makes
//! syscalls on prepared C strings and stack buffers ([`MountPlan::apply`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Directories never covered, whatever the owner's home is.
const NEVER: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt", "/proc", "/run", "/sbin",
    "/srv", "/sys", "/tmp", "/usr", "/var",
];

/// One directory bound back into a covered one.
struct Keep {
    target: CString,
    /// Directories to make (in order) inside the tmpfs before binding.
    mkdirs: Vec<CString>,
}

/// The most directories bound back (they are banger's few roots).
const MAX_KEEP: usize = 8;

/// What the child does: cover, then bind back.
pub struct MountPlan {
    cover: Vec<CString>,
    keep: Vec<Keep>,
}

/// The directories to cover: `/home`, `/root` and the owner's home when it
/// is elsewhere (existing ones only, never a system directory).
pub fn covered(owner_home: Option<&Path>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vec!["/home".into(), "/root".into()];
    if let Some(h) = owner_home {
        let inside = v.iter().any(|c| h.starts_with(c));
        let system = NEVER.iter().any(|n| h == Path::new(n));
        if h.is_absolute() && !inside && !system && h.components().count() > 1 {
            v.push(h.to_path_buf());
        }
    }
    v.into_iter().filter(|p| p.is_dir()).collect()
}

/// The directory of banger's own that holds `p`: its nearest ancestor
/// named `banger` (the state, cache or runtime root), else its parent.
pub fn banger_root(p: &Path) -> Option<PathBuf> {
    p.ancestors()
        .skip(1)
        .find(|a| a.file_name().is_some_and(|n| n == "banger"))
        .or_else(|| p.parent())
        .map(Path::to_path_buf)
}

/// What covers banger's runtime directory `rt`: the owner's whole runtime
/// directory when `rt` is in one (`/run/user/<uid>/banger`: its session
/// bus and other sockets are the owner's too), else `rt` itself.
fn runtime_cover(rt: &Path) -> &Path {
    match rt.parent() {
        Some(p) if p.parent() == Some(Path::new("/run/user")) => p,
        _ => rt,
    }
}

/// The plan for a VMM that uses `paths`: covered directories, and the
/// banger directories under them bound back. `runtime` is banger's runtime
/// directory and the VM's own directory in it: the first is covered too,
/// and of it only the second is bound back.
pub fn plan(
    paths: &[&Path],
    owner_home: Option<&Path>,
    runtime: Option<(&Path, &Path)>,
) -> std::io::Result<MountPlan> {
    let mut cover = covered(owner_home);
    if let Some((rt, _)) = runtime {
        let rt = runtime_cover(rt);
        let system = NEVER.iter().any(|n| rt == Path::new(n));
        if rt.is_dir() && !system && !cover.iter().any(|c| rt.starts_with(c)) {
            cover.push(rt.to_path_buf());
        }
    }
    let mut keep_dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        let root = match runtime {
            Some((rt, own)) if p.starts_with(rt) && own.starts_with(rt) => Some(own.to_path_buf()),
            _ => banger_root(p),
        };
        let Some(root) = root else { continue };
        if cover.iter().any(|c| root.starts_with(c) && root != *c)
            && !keep_dirs.iter().any(|k| root.starts_with(k))
        {
            keep_dirs.retain(|k| !k.starts_with(&root));
            keep_dirs.push(root);
        }
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other(format!("{} has a NUL byte", p.display())))
    };
    if keep_dirs.len() > MAX_KEEP {
        return Err(std::io::Error::other(format!(
            "the VMM's files are in {} directories of banger's (at most {MAX_KEEP})",
            keep_dirs.len()
        )));
    }
    let mut keep = Vec::new();
    for dir in keep_dirs {
        let top = cover
            .iter()
            .find(|c| dir.starts_with(c))
            .expect("under a cover");
        let mut mkdirs = Vec::new();
        let mut at = top.clone();
        for part in dir.strip_prefix(top).expect("under it").components() {
            at.push(part);
            mkdirs.push(c(&at)?);
        }
        keep.push(Keep {
            target: c(&dir)?,
            mkdirs,
        });
    }
    Ok(MountPlan {
        cover: cover.iter().map(|p| c(p)).collect::<Result<_, _>>()?,
        keep,
    })
}

impl MountPlan {
    /// In the child, as root, before the switch to the owner: a private
    /// mount namespace (host mounts still propagate in, none out), the
    /// covers, the binds.
    ///
    /// # Safety
    /// Called between fork and exec: only syscalls on prepared data.
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        let err = || Err(std::io::Error::last_os_error());
        if libc::unshare(libc::CLONE_NEWNS) < 0 {
            return err();
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) < 0
        {
            return err();
        }
        // Each kept directory is opened here, in the new namespace (a bind
        // from another namespace's mount is refused), before it is covered;
        // never through a final symbolic link.
        let mut fds = [-1i32; MAX_KEEP];
        for (k, fd) in self.keep.iter().zip(fds.iter_mut()) {
            *fd = libc::open(
                k.target.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            if *fd < 0 {
                return err();
            }
        }
        let tmpfs = c"tmpfs";
        let opts = c"mode=0755,size=1m";
        for dir in &self.cover {
            if libc::mount(
                tmpfs.as_ptr(),
                dir.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr() as *const libc::c_void,
            ) < 0
            {
                return err();
            }
        }
        for (k, &fd) in self.keep.iter().zip(fds.iter()) {
            for d in &k.mkdirs {
                if libc::mkdir(d.as_ptr(), 0o755) < 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                {
                    return err();
                }
            }
            let mut source = [0u8; 32];
            fd_path(fd, &mut source);
            if libc::mount(
                source.as_ptr() as *const libc::c_char,
                k.target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) < 0
            {
                return err();
            }
            libc::close(fd);
        }
        Ok(())
    }
}

/// `/proc/self/fd/<fd>` and a NUL into `buf`, without allocating (it runs
/// between fork and exec).
fn fd_path(fd: i32, buf: &mut [u8; 32]) {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_homes_and_binds_back_only_bangers_directories() {
        assert_eq!(
            banger_root(Path::new("/home/u/.local/state/banger/vms/0123/root.qcow2")),
            Some(PathBuf::from("/home/u/.local/state/banger"))
        );
        assert_eq!(
            banger_root(Path::new("/srv/vm/disk.raw")),
            Some(PathBuf::from("/srv/vm"))
        );
        // A home that is a system directory is never covered.
        for h in ["/", "/var", "/usr"] {
            assert!(
                !covered(Some(Path::new(h))).contains(&PathBuf::from(h)),
                "{h}"
            );
        }
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("owner");
        let state = home.join(".local/state/banger");
        std::fs::create_dir_all(state.join("vms/x")).unwrap();
        assert!(covered(Some(&home)).contains(&home));
        let disk = state.join("vms/x/root.qcow2");
        let kernel = state.join("kernels/k/vmlinux");
        let outside = Path::new("/var/cache/banger/kernels/k/vmlinux");
        let p = plan(&[&disk, &kernel, outside], Some(&home), None).unwrap();
        assert_eq!(p.keep.len(), 1, "one bind: the state root");
        assert_eq!(p.keep[0].target.to_bytes(), state.as_os_str().as_bytes());
        let mut b = [0u8; 32];
        fd_path(1234, &mut b);
        assert_eq!(&b[..19], b"/proc/self/fd/1234\0");
        fd_path(0, &mut b);
        assert_eq!(&b[..16], b"/proc/self/fd/0\0");
        let made: Vec<&[u8]> = p.keep[0].mkdirs.iter().map(|c| c.to_bytes()).collect();
        assert_eq!(
            made.first().copied(),
            Some(home.join(".local").as_os_str().as_bytes())
        );
        assert_eq!(made.last().copied(), Some(state.as_os_str().as_bytes()));

        // The runtime directory is covered (its sockets hidden) and only
        // the VM's own directory in it bound back.
        let rt = d.path().join("run/banger");
        let own = rt.join("vms/0123456789abcdef");
        std::fs::create_dir_all(&own).unwrap();
        let qmp = own.join("qmp.sock");
        let p = plan(&[&disk, &qmp], Some(&home), Some((&rt, &own))).unwrap();
        let covers: Vec<&[u8]> = p.cover.iter().map(|c| c.to_bytes()).collect();
        assert!(covers.contains(&rt.as_os_str().as_bytes()), "{covers:?}");
        let kept: Vec<&[u8]> = p.keep.iter().map(|k| k.target.to_bytes()).collect();
        assert_eq!(
            kept,
            vec![state.as_os_str().as_bytes(), own.as_os_str().as_bytes()]
        );
        assert_eq!(
            runtime_cover(Path::new("/run/user/1000/banger")),
            Path::new("/run/user/1000"),
            "the owner's session bus is hidden too"
        );
        assert_eq!(
            runtime_cover(Path::new("/run/banger")),
            Path::new("/run/banger")
        );
        // Under a covered home, the runtime directory is not covered twice.
        let rt2 = home.join("run/banger");
        let own2 = rt2.join("vms/0123456789abcdef");
        std::fs::create_dir_all(&own2).unwrap();
        let p = plan(&[&own2.join("qmp.sock")], Some(&home), Some((&rt2, &own2))).unwrap();
        assert_eq!(p.cover.len(), covered(Some(&home)).len());
        assert_eq!(p.keep[0].target.to_bytes(), own2.as_os_str().as_bytes());
    }
}
