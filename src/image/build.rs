//! Building a root filesystem from a recipe (runs in `bangerd-root`).
//!
//! mmdebstrap bootstraps the recipe's packages into a private work directory
//! (in its own process group and mount namespace, so a kill leaves no mounts
//! behind); hooks add banger's files and units; `/root` is split off into the
//! work seed; `mkfs.ext4 -d` makes both images; the files are handed over
//! into the owner's directory through a verified directory fd. Dropping the
//! build at any point kills the process group and removes the work.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::recipe::{self, OverlayEntry, Recipe};
use crate::protocol::helper::{BuiltRootfs, RootfsSpec};

/// Where the helper works and caches.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// Private, root-owned work area (one directory per build).
    pub work_root: PathBuf,
    /// Root-owned cache of downloaded packages.
    pub package_cache: PathBuf,
    pub owner_uid: u32,
}

/// Where bangerd-root builds (one subdirectory per helper instance).
pub const WORK_ROOT: &str = "/var/lib/banger-root/work";

impl BuildEnv {
    pub fn default_for(owner_uid: u32) -> BuildEnv {
        BuildEnv {
            // Under a root-owned parent (never /var/tmp: anyone could
            // plant the directory there first).
            work_root: WORK_ROOT.into(),
            package_cache: "/var/cache/banger-root/debs".into(),
            owner_uid,
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

fn failed(what: &str, e: impl std::fmt::Display) -> BuildError {
    BuildError::Failed(format!("{what}: {e}"))
}

fn valid_token(s: &str, max: usize, extra: &str) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// Opens `dir` as a directory without following a final symlink and checks
/// that `owner` owns it.
fn open_owned_dir(dir: &Path, owner: u32) -> Result<OwnedFd, BuildError> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    if !dir.is_absolute() {
        return Err(BuildError::Refused(format!(
            "{} is not an absolute path",
            dir.display()
        )));
    }
    let fd = open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|e| {
        BuildError::Refused(format!(
            "cannot open output directory {}: {e}",
            dir.display()
        ))
    })?;
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| failed("fstat", e))?;
    if st.st_uid != owner {
        return Err(BuildError::Refused(format!(
            "output directory {} is owned by uid {}, not the owner uid {owner}",
            dir.display(),
            st.st_uid
        )));
    }
    Ok(fd)
}

/// Whether a file under a caller-supplied tree may be read into an image:
/// owned by the owner, or world-readable.
fn readable_by_owner(md: &std::fs::Metadata, owner: u32) -> bool {
    md.uid() == owner || md.mode() & 0o004 != 0
}

/// Builds the overlay tarball: recipe files plus kernel modules.
fn write_overlay(
    tar_path: &Path,
    modules: Option<(&Path, &str)>,
    owner: u32,
) -> Result<(), BuildError> {
    let f = std::fs::File::create(tar_path).map_err(|e| failed("creating overlay", e))?;
    let mut t = tar::Builder::new(std::io::BufWriter::new(f));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    let io = |e: std::io::Error| failed("writing overlay", e);
    for e in recipe::overlay() {
        match e {
            OverlayEntry::Dir { path, mode } => {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                t.append_data(&mut h, path, std::io::empty()).map_err(io)?;
            }
            OverlayEntry::File { path, mode, data } => {
                let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
                t.append_data(&mut h, path, &data[..]).map_err(io)?;
            }
        }
    }
    if let Some((dir, version)) = modules {
        let base = PathBuf::from("usr/lib/modules").join(version);
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rel = d.strip_prefix(dir).unwrap_or(Path::new(""));
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            t.append_data(&mut h, base.join(rel), std::io::empty())
                .map_err(io)?;
            for ent in std::fs::read_dir(&d).map_err(io)? {
                let ent = ent.map_err(io)?;
                let md = std::fs::symlink_metadata(ent.path()).map_err(io)?;
                let rel = ent
                    .path()
                    .strip_prefix(dir)
                    .unwrap_or(&ent.path())
                    .to_path_buf();
                if md.is_dir() {
                    stack.push(ent.path());
                } else if md.is_file() {
                    // We are root reading the owner's tree: open without
                    // following a symlink swapped in since the lstat, and
                    // judge the file actually opened.
                    use std::os::unix::fs::OpenOptionsExt;
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(ent.path())
                        .map_err(io)?;
                    let md = f.metadata().map_err(io)?;
                    if !md.is_file() || !readable_by_owner(&md, owner) {
                        return Err(BuildError::Refused(format!(
                            "{} is neither the owner's nor world-readable",
                            ent.path().display()
                        )));
                    }
                    let mut h = header(tar::EntryType::Regular, md.mode() & 0o755, md.len());
                    t.append_data(&mut h, base.join(rel), f).map_err(io)?;
                }
                // Symlinks in a module tree (build/, source/) are skipped.
            }
        }
    }
    t.into_inner()
        .map_err(io)?
        .into_inner()
        .map_err(|e| failed("writing overlay", e.into_error()))?;
    Ok(())
}

/// Kills a process group and waits (bounded) until no live member remains.
fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_alive(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any non-zombie process is in process group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 3 && f[0] != "Z" && f[0] != "X" && f[2] == pgid.to_string()
    })
}

/// Mount points at or below `dir` in our mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m == &d || m.starts_with(&format!("{d}/")))
        .collect()
}

/// The work directory of one build; on drop, kills what still runs in it and
/// removes it (never while something is mounted below it).
struct Work {
    dir: PathBuf,
    pgid: Option<i32>,
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(pg) = self.pgid.take() {
            kill_group(pg);
        }
        let mounts = mounts_under(&self.dir);
        if !mounts.is_empty() {
            tracing::error!(dir = %self.dir.display(), ?mounts, "not removing a build directory with mounts below it");
            return;
        }
        if let Err(e) = crate::fsutil::remove_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "removing build directory: {e}");
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            total += md.len().div_ceil(4096) * 4096 + 256;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

const MIB: u64 = 1 << 20;

fn round_mib(bytes: u64, multiple: u64) -> u64 {
    bytes.div_ceil(multiple * MIB) * multiple
}

fn mkfs(dir: &Path, image: &Path, size_mib: u64, label: &str) -> Result<(), BuildError> {
    let mkfs = crate::host::system_tool("mkfs.ext4").ok_or_else(|| {
        BuildError::Failed("mkfs.ext4 is not installed; install e2fsprogs".into())
    })?;
    let out = std::process::Command::new(mkfs)
        .args(["-F", "-q", "-m", "1", "-L", label, "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| failed("running mkfs.ext4", e))?;
    if !out.status.success() {
        return Err(BuildError::Failed(format!(
            "mkfs.ext4 for {label} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Moves (or copies, across filesystems) `src` into the directory `dir_fd`
/// as `name`, owned by `owner`.
fn hand_over(src: &Path, dir_fd: &OwnedFd, name: &str, owner: u32) -> Result<(), BuildError> {
    use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
    use nix::sys::stat::Mode;
    nix::unistd::chown(src, Some(nix::unistd::Uid::from_raw(owner)), None)
        .map_err(|e| failed("chown", e))?;
    match renameat(AT_FDCWD, src, dir_fd.as_fd(), name) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EXDEV) => {
            let fd = openat(
                dir_fd.as_fd(),
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(|e| failed(&format!("creating {name} in the output directory"), e))?;
            nix::unistd::fchown(&fd, Some(nix::unistd::Uid::from_raw(owner)), None)
                .map_err(|e| failed("fchown", e))?;
            let mut out = std::fs::File::from(fd);
            let mut input = std::fs::File::open(src).map_err(|e| failed("reopening", e))?;
            std::io::copy(&mut input, &mut out).map_err(|e| failed("copying", e))?;
            out.sync_all().map_err(|e| failed("fsync", e))?;
            Ok(())
        }
        Err(e) => Err(failed(
            &format!("moving {name} into the output directory"),
            e,
        )),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Validates a spec and resolves its recipe.
pub fn check_spec(spec: &RootfsSpec) -> Result<&'static Recipe, BuildError> {
    if !valid_token(&spec.build_id, 40, "-") {
        return Err(BuildError::Refused(format!(
            "bad build id {:?}",
            spec.build_id
        )));
    }
    let r = recipe::find(&spec.recipe).ok_or_else(|| {
        BuildError::Refused(format!(
            "unknown recipe {:?}; known: {}",
            spec.recipe,
            recipe::names()
        ))
    })?;
    if let Some(v) = &spec.kernel_version {
        if !valid_token(v, 64, "._+-") {
            return Err(BuildError::Refused(format!("bad kernel version {v:?}")));
        }
    }
    if spec.kernel_modules.is_some() != spec.kernel_version.is_some() {
        return Err(BuildError::Refused(
            "kernel modules and kernel version go together".into(),
        ));
    }
    Ok(r)
}

/// Runs a whole build. Blocking; call on a blocking thread. Dropping the
/// returned future's task is handled by the [`Work`] guard inside.
pub fn build_rootfs(
    env: &BuildEnv,
    spec: &RootfsSpec,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<BuiltRootfs, BuildError> {
    let recipe = check_spec(spec)?;
    let out_fd = open_owned_dir(&spec.out_dir, env.owner_uid)?;
    if let Some(m) = &spec.kernel_modules {
        let md = std::fs::symlink_metadata(m)
            .map_err(|e| BuildError::Refused(format!("{}: {e}", m.display())))?;
        if !md.is_dir() || !readable_by_owner(&md, env.owner_uid) {
            return Err(BuildError::Refused(format!(
                "{} is not a directory the owner can read",
                m.display()
            )));
        }
    }
    crate::fsutil::root_private_dir(&env.work_root)
        .map_err(|e| failed("creating the work area", e))?;
    let dir = env.work_root.join(&spec.build_id);
    if dir.exists() {
        return Err(BuildError::Refused(format!(
            "a build {} is already in progress",
            spec.build_id
        )));
    }
    std::fs::create_dir(&dir).map_err(|e| failed("creating the build directory", e))?;
    let mut work = Work {
        dir: dir.clone(),
        pgid: None,
    };
    let root = dir.join("root");
    let overlay = dir.join("overlay.tar");
    let debs_out = dir.join("debs-out");
    std::fs::create_dir_all(&debs_out).map_err(|e| failed("mkdir", e))?;
    write_overlay(
        &overlay,
        spec.kernel_modules
            .as_deref()
            .zip(spec.kernel_version.as_deref()),
        env.owner_uid,
    )?;

    let mmdebstrap = crate::host::system_tool("mmdebstrap").ok_or_else(|| {
        BuildError::Failed(
            "mmdebstrap is not installed; install it (apt-get install mmdebstrap)".into(),
        )
    })?;
    let mut cmd = std::process::Command::new(mmdebstrap);
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", recipe.packages().join(",")))
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives");
    if spec.package_cache && env.package_cache.is_dir() {
        cmd.arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            env.package_cache.display()
        ));
    }
    cmd.arg(format!("--customize-hook=tar-in {} /", overlay.display()));
    if let Some(v) = &spec.kernel_version {
        cmd.arg(format!("--customize-hook=chroot \"$1\" depmod -a {v}"));
    }
    cmd.arg(format!(
        "--customize-hook=chroot \"$1\" systemctl enable --quiet {}",
        recipe::ENABLE_UNITS.join(" ")
    ))
    .arg(format!(
        "--customize-hook=chroot \"$1\" systemctl mask --quiet {}",
        recipe::MASK_UNITS.join(" ")
    ))
    .arg("--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*")
    .arg(format!(
        "--customize-hook=sync-out /var/cache/apt/archives {}",
        debs_out.display()
    ))
    .arg(recipe.suite)
    .arg(&root);
    let log_path = dir.join("mmdebstrap.log");
    let log = std::fs::File::create(&log_path).map_err(|e| failed("log", e))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| failed("log", e))?)
        .stderr(log)
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: setpgid/unshare/mount are async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) < 0 || libc::unshare(libc::CLONE_NEWNS) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    tracing::info!(build = %spec.build_id, recipe = recipe.name, "running mmdebstrap");
    let mut child = cmd.spawn().map_err(|e| failed("starting mmdebstrap", e))?;
    work.pgid = Some(child.id() as i32);
    let status = loop {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BuildError::Failed("build cancelled".into()));
        }
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(failed("waiting for mmdebstrap", e)),
        }
    };
    if group_alive(child.id() as i32) {
        kill_group(child.id() as i32);
    }
    work.pgid = None;
    if !status.success() {
        return Err(BuildError::Failed(format!(
            "mmdebstrap failed ({status}); last lines of its log:\n{}",
            tail(&log_path, 15)
        )));
    }
    let bootstrap_ms = started.elapsed().as_millis() as u64;

    // Keep new packages for next time (each file appears atomically).
    if spec.package_cache && std::fs::create_dir_all(&env.package_cache).is_ok() {
        if let Ok(rd) = std::fs::read_dir(&debs_out) {
            for e in rd.flatten() {
                let to = env.package_cache.join(e.file_name());
                if e.path().extension().is_some_and(|x| x == "deb") && !to.exists() {
                    let _ = std::fs::rename(e.path(), &to);
                }
            }
        }
    }

    let started = Instant::now();
    let seed = dir.join("seed");
    std::fs::create_dir(&seed).map_err(|e| failed("mkdir seed", e))?;
    for e in std::fs::read_dir(root.join("root"))
        .map_err(|e| failed("reading /root", e))?
        .flatten()
    {
        std::fs::rename(e.path(), seed.join(e.file_name()))
            .map_err(|e| failed("moving /root", e))?;
    }
    let out = dir.join("out");
    std::fs::create_dir(&out).map_err(|e| failed("mkdir out", e))?;
    let (rootfs, work_seed) = (out.join("rootfs.ext4"), out.join("work-seed.ext4"));
    let seed_mib = round_mib(dir_bytes(&seed) * 2 + 32 * MIB, 16).max(64);
    mkfs(&seed, &work_seed, seed_mib, "banger-work")?;
    let content = dir_bytes(&root);
    let root_mib = round_mib(content + content / 2 + 512 * MIB, 64);
    mkfs(&root, &rootfs, root_mib, "banger-root")?;
    hand_over(&rootfs, &out_fd, "rootfs.ext4", env.owner_uid)?;
    hand_over(&work_seed, &out_fd, "work-seed.ext4", env.owner_uid)?;
    let assemble_ms = started.elapsed().as_millis() as u64;
    drop(work);
    let _ = out_fd.as_raw_fd();
    Ok(BuiltRootfs {
        rootfs: spec.out_dir.join("rootfs.ext4"),
        work_seed: spec.out_dir.join("work-seed.ext4"),
        bootstrap_ms,
        assemble_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(out: &Path) -> RootfsSpec {
        RootfsSpec {
            build_id: "t1".into(),
            recipe: "debian-bookworm".into(),
            kernel_modules: None,
            kernel_version: None,
            out_dir: out.to_path_buf(),
            package_cache: false,
        }
    }

    #[test]
    fn specs_are_validated_before_anything_runs() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(d.path());
        s.recipe = "arch".into();
        assert!(
            matches!(check_spec(&s), Err(BuildError::Refused(m)) if m.contains("unknown recipe"))
        );
        let mut s = spec(d.path());
        s.build_id = "../x".into();
        assert!(check_spec(&s).is_err());
        let mut s = spec(d.path());
        s.kernel_version = Some("6.1; rm -rf /".into());
        s.kernel_modules = Some("/tmp".into());
        assert!(check_spec(&s).is_err());
    }

    #[test]
    fn output_dir_must_belong_to_the_owner() {
        let d = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert!(open_owned_dir(d.path(), me).is_ok());
        assert!(matches!(
            open_owned_dir(d.path(), me + 1),
            Err(BuildError::Refused(_))
        ));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        assert!(
            matches!(open_owned_dir(&link, me), Err(BuildError::Refused(_))),
            "symlinks are not followed"
        );
        assert!(open_owned_dir(Path::new("relative"), me).is_err());
    }

    #[test]
    fn overlay_holds_the_agent_and_modules() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("mods/kernel");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("virtio.ko"), b"ko").unwrap();
        let tar_path = d.path().join("o.tar");
        let me = nix::unistd::geteuid().as_raw();
        write_overlay(&tar_path, Some((&d.path().join("mods"), "6.1.0-9")), me).unwrap();
        let mut a = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n == "usr/local/bin/banger-agent"),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| n == "usr/lib/modules/6.1.0-9/kernel/virtio.ko"),
            "{names:?}"
        );
    }
}
