//! The VMM's own mount namespace: the owner's home (and `/home`, `/root`)
//! and banger's runtime directory covered by empty tmpfs mounts, with only
//! the directories the VMM needs bound back at their paths: the VM's own
//! (its disks, logs and sockets) read-write, the kernel's and its disks'
//! backing files' read-only. A VMM escape, running as the owner, then does
//! not see the owner's keys, repositories or sockets (`bangerd.sock`,
//! `bangerd-root.sock`: through them it could drive banger as the owner),
//! nor banger's store, SSH key or other VMs' disks.
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
    read_only: bool,
}

/// The most directories bound back: the VM's own two, the kernel's and a
/// snapshot chain's (`vmm_ops::MAX_READS`).
const MAX_KEEP: usize = 24;

/// What the child does: cover, then bind back.
pub struct MountPlan {
    cover: Vec<CString>,
    keep: Vec<Keep>,
    /// Whose rights the bound directories are opened with (uid, gid).
    owner: (u32, u32),
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

/// What covers banger's runtime directory `rt`: the owner's whole runtime
/// directory when `rt` is in one (`/run/user/<uid>/banger`: its session
/// bus and other sockets are the owner's too), else `rt` itself.
fn runtime_cover(rt: &Path) -> &Path {
    match rt.parent() {
        Some(p) if p.parent() == Some(Path::new("/run/user")) => p,
        _ => rt,
    }
}

/// The directories of `dirs` (read-only when flagged) that lie under a
/// cover, without one inside another (the outer is kept, read-only only
/// when all it holds were). Under the runtime cover only `own` is kept.
fn kept(
    dirs: &[(&Path, bool)],
    cover: &[PathBuf],
    runtime: Option<(&Path, &Path)>,
) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    for &(d, ro) in dirs {
        let d = match runtime {
            Some((_, own)) if d.starts_with(own) => own,
            Some((rt, _)) if d.starts_with(runtime_cover(rt)) => continue,
            _ => d,
        };
        if !cover.iter().any(|c| d.starts_with(c) && d != c) {
            continue;
        }
        if let Some(k) = out.iter_mut().find(|(k, _)| d.starts_with(k)) {
            k.1 &= ro;
            continue;
        }
        let mut ro = ro;
        out.retain(|(k, kro)| {
            let inside = k.starts_with(d);
            ro &= !inside || *kro;
            !inside
        });
        out.push((d.to_path_buf(), ro));
    }
    out
}

/// The plan for a VMM that uses the directories `dirs` (`true`: only
/// reads): the covered directories, and those of `dirs` under them bound
/// back, opened with the `owner`'s rights (uid, gid). `runtime` is
/// banger's runtime directory and the VM's own directory in it: the first
/// is covered too, and of it only the second is bound back.
pub fn plan(
    dirs: &[(&Path, bool)],
    owner_home: Option<&Path>,
    runtime: Option<(&Path, &Path)>,
    owner: (u32, u32),
) -> std::io::Result<MountPlan> {
    let mut cover = covered(owner_home);
    if let Some((rt, _)) = runtime {
        let rt = runtime_cover(rt);
        let system = NEVER.iter().any(|n| rt == Path::new(n));
        if rt.is_dir() && !system && !cover.iter().any(|c| rt.starts_with(c)) {
            cover.push(rt.to_path_buf());
        }
    }
    let keep_dirs = kept(dirs, &cover, runtime);
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other(format!("{} has a NUL byte", p.display())))
    };
    if keep_dirs.len() > MAX_KEEP {
        return Err(std::io::Error::other(format!(
            "the VMM's files are in {} directories (at most {MAX_KEEP})",
            keep_dirs.len()
        )));
    }
    let mut keep = Vec::new();
    for (dir, read_only) in keep_dirs {
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
            read_only,
        });
    }
    Ok(MountPlan {
        cover: cover.iter().map(|p| c(p)).collect::<Result<_, _>>()?,
        keep,
        owner,
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
        // never through a final symbolic link, and with the owner's rights:
        // root's would reach past a directory the owner may not search.
        let (uid, gid) = self.owner;
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        if libc::setfsuid(uid) as u32 != uid || libc::setfsgid(gid) as u32 != gid {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
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
        libc::setfsuid(0);
        libc::setfsgid(0);
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
        // The mount points are made 0755 whatever the helper's umask (the
        // system unit's is 0077: the owner's VMM could not search them).
        let umask = libc::umask(0o022);
        for (k, &fd) in self.keep.iter().zip(fds.iter()) {
            for d in &k.mkdirs {
                if libc::mkdir(d.as_ptr(), 0o755) < 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                {
                    libc::umask(umask);
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
            let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            if k.read_only
                && libc::mount(
                    std::ptr::null(),
                    k.target.as_ptr(),
                    std::ptr::null(),
                    ro | libc::MS_NOSUID | libc::MS_NODEV,
                    std::ptr::null(),
                ) < 0
            {
                return err();
            }
        }
        libc::umask(umask);
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

    fn targets(p: &MountPlan) -> Vec<(&[u8], bool)> {
        p.keep
            .iter()
            .map(|k| (k.target.to_bytes(), k.read_only))
            .collect()
    }

    #[test]
    fn covers_homes_and_binds_back_only_the_vms_own_directories() {
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
        let vm = state.join("vms/x");
        std::fs::create_dir_all(&vm).unwrap();
        assert!(covered(Some(&home)).contains(&home));
        let kernel = state.join("kernels/k");
        let snap = state.join("snapshots/s");
        let outside = Path::new("/var/cache/banger/kernels/k");
        let dirs = [
            (vm.as_path(), false),
            (kernel.as_path(), true),
            (outside, true),
            (snap.as_path(), true),
            (vm.as_path(), true),
        ];
        let p = plan(&dirs, Some(&home), None, (1000, 1000)).unwrap();
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert_eq!(
            targets(&p),
            vec![
                (b(&vm).as_slice(), false),
                (b(&kernel).as_slice(), true),
                (b(&snap).as_slice(), true)
            ],
            "the VM's own directory, the kernel's and the snapshot's; never the state root"
        );
        assert_eq!(p.owner, (1000, 1000));
        let made: Vec<&[u8]> = p.keep[0].mkdirs.iter().map(|c| c.to_bytes()).collect();
        assert_eq!(
            made.first().copied(),
            Some(b(&home.join(".local")).as_slice())
        );
        assert_eq!(made.last().copied(), Some(b(&vm).as_slice()));
        // One inside another: the outer is bound, read-only only if both were.
        let inner = vm.join("sub");
        let p = plan(&[(&inner, false), (&vm, true)], Some(&home), None, (0, 0)).unwrap();
        assert_eq!(targets(&p), vec![(b(&vm).as_slice(), false)]);

        let mut buf = [0u8; 32];
        fd_path(1234, &mut buf);
        assert_eq!(&buf[..19], b"/proc/self/fd/1234\0");
        fd_path(0, &mut buf);
        assert_eq!(&buf[..16], b"/proc/self/fd/0\0");

        // The runtime directory is covered (its sockets hidden) and only
        // the VM's own directory in it bound back.
        let rt = d.path().join("run/banger");
        let own = rt.join("vms/0123456789abcdef");
        std::fs::create_dir_all(&own).unwrap();
        let other = rt.join("vms/fedcba9876543210");
        let p = plan(
            &[(&vm, false), (&own, false), (&other, true), (&rt, true)],
            Some(&home),
            Some((&rt, &own)),
            (0, 0),
        )
        .unwrap();
        let covers: Vec<&[u8]> = p.cover.iter().map(|c| c.to_bytes()).collect();
        assert!(covers.contains(&b(&rt).as_slice()), "{covers:?}");
        assert_eq!(
            targets(&p),
            vec![(b(&vm).as_slice(), false), (b(&own).as_slice(), false)]
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
        let p = plan(&[(&own2, false)], Some(&home), Some((&rt2, &own2)), (0, 0)).unwrap();
        assert_eq!(p.cover.len(), covered(Some(&home)).len());
        assert_eq!(targets(&p), vec![(b(&own2).as_slice(), false)]);
    }
}
