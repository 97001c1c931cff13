//! Building a root filesystem from a recipe (runs in `bangerd-root`).
//!
//! mmdebstrap bootstraps the recipe's packages into a private work directory
//! (in its own process group and mount namespace, so a kill leaves no mounts
//! behind); hooks add banger's files and units; `/root` is split off into the
//! work seed; `mkfs.ext4 -d` makes both images; the files are handed over
//! into the owner's directory through a verified directory fd. Dropping the
//! build at any point kills the process group and removes the work.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::recipe::{self, OverlayEntry, Recipe};
pub use spec::{BuiltRootfs, RootfsSpec};

mod modules;
mod spec;

pub use modules::*;

/// Where the helper works and caches.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// Private, root-owned work area (one directory per build).
    pub work_root: PathBuf,
    /// Root-owned cache of downloaded packages.
    pub package_cache: PathBuf,
    pub owner_uid: u32,
    /// The owner's primary group: module trees are read as owner:group.
    pub owner_gid: u32,
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
            owner_gid: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner_uid))
                .ok()
                .flatten()
                .map(|u| u.gid.as_raw())
                .unwrap_or(owner_uid),
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

/// Builds the overlay tarball: the recipe's files (banger's own bytes only;
/// nothing of the owner's reaches the root-run `tar-in`).
fn write_overlay(tar_path: &Path, recipe: &Recipe) -> Result<(), BuildError> {
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
    for e in recipe.overlay() {
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
    t.into_inner()
        .map_err(io)?
        .into_inner()
        .map_err(|e| failed("writing overlay", e.into_error()))?;
    Ok(())
}

/// How long mmdebstrap may take (a slow mirror, a cold package cache).
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(40 * 60);

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

/// Kills (SIGKILL) every process whose root or working directory lies in
/// `dir` and waits, bounded, for them to go: what a killed helper's build
/// left behind (mmdebstrap dies with the helper; apt or dpkg in its chroot
/// would run on as root).
pub fn kill_processes_in(dir: &Path) {
    let inside = |pid: &str| {
        ["root", "cwd"].iter().any(|l| {
            std::fs::read_link(format!("/proc/{pid}/{l}")).is_ok_and(|p| p.starts_with(dir))
        })
    };
    let found = || -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|&pid| pid as u32 != std::process::id() && inside(&pid.to_string()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = found();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            tracing::warn!(pid, dir = %dir.display(), "killing a process left in an interrupted build");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            crate::host::process::wait_exit_blocking(pid as u32, Duration::from_secs(2));
        }
    }
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
    super::layers::tree_bytes(dir)
}

const MIB: u64 = 1 << 20;

fn round_mib(bytes: u64, multiple: u64) -> u64 {
    bytes.div_ceil(multiple * MIB) * multiple
}

fn mkfs(dir: &Path, image: &Path, size_mib: u64, label: &str) -> Result<(), BuildError> {
    super::mkfs_ext4(dir, image, size_mib, label, 0).map_err(BuildError::Failed)
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
    let s = crate::fsutil::read_tail(path, 64 << 10);
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
    std::fs::create_dir_all(&debs_out)
        .map_err(|e| failed(&format!("creating {}", debs_out.display()), e))?;
    write_overlay(&overlay, recipe)?;
    // The owner's modules are read (as the owner) before anything runs, and
    // installed only after mmdebstrap's hooks are done.
    let staged_modules = match &spec.kernel_modules {
        Some(m) => {
            let staged = dir.join("modules");
            std::fs::create_dir(&staged)
                .map_err(|e| failed(&format!("creating {}", staged.display()), e))?;
            let bytes = collect_modules(m, env.owner_uid, env.owner_gid, &staged)?;
            tracing::info!(build = %spec.build_id, bytes, "collected the kernel modules");
            Some(staged)
        }
        None => None,
    };

    let log_path = dir.join("mmdebstrap.log");
    let mut cmd = mmdebstrap(env, spec, recipe, &dir, &log_path)?;
    let started = Instant::now();
    tracing::info!(build = %spec.build_id, recipe = recipe.name, "running mmdebstrap");
    let mut child = cmd.spawn().map_err(|e| failed("starting mmdebstrap", e))?;
    work.pgid = Some(child.id() as i32);
    let status = wait_bootstrap(&mut child, cancel, started, &log_path)?;
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
    if let (Some(staged), Some(v)) = (&staged_modules, &spec.kernel_version) {
        install_modules(&root, staged, v)?;
    }
    let bootstrap_ms = started.elapsed().as_millis() as u64;

    keep_packages(env, spec, &debs_out);

    let started = Instant::now();
    assemble(env, &dir, &root, &out_fd)?;
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

/// The mmdebstrap run of a build: the recipe's packages, banger's overlay
/// and units, no host keys; its output to `log_path`; in its own process
/// group and mount namespace, dying with the helper.
fn mmdebstrap(
    env: &BuildEnv,
    spec: &RootfsSpec,
    recipe: &Recipe,
    dir: &Path,
    log_path: &Path,
) -> Result<std::process::Command, BuildError> {
    let mmdebstrap = crate::host::system_tool("mmdebstrap").ok_or_else(|| {
        BuildError::Failed(
            "mmdebstrap is not installed; install it (apt-get install mmdebstrap)".into(),
        )
    })?;
    if recipe.mise && crate::host::system_tool("curl").is_none() {
        return Err(BuildError::Failed(format!(
            "image {} fetches mise with the host's curl; install it (apt-get install curl)",
            recipe.name
        )));
    }
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
    cmd.arg(format!(
        "--customize-hook=tar-in {} /",
        dir.join("overlay.tar").display()
    ));
    cmd.arg(format!(
        "--customize-hook=chroot \"$1\" systemctl enable --quiet {}",
        recipe::ENABLE_UNITS.join(" ")
    ))
    .arg(format!(
        "--customize-hook=chroot \"$1\" systemctl mask --quiet {}",
        recipe::MASK_UNITS.join(" ")
    ))
    .arg("--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*");
    for hook in recipe.customize_hooks() {
        // The recipe's own constants (recipe.rs), never user input.
        cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd.arg(format!(
        "--customize-hook=sync-out /var/cache/apt/archives {}",
        dir.join("debs-out").display()
    ))
    .arg(recipe.suite)
    .arg(dir.join("root"));
    let log = std::fs::File::create(log_path)
        .map_err(|e| failed(&format!("creating {}", log_path.display()), e))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| failed("log", e))?)
        .stderr(log)
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: setpgid/unshare/mount are async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            // Dies with the helper (a SIGKILLed helper must not leave a
            // root bootstrap running); its children are killed by group.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0
                || libc::setpgid(0, 0) < 0
                || libc::unshare(libc::CLONE_NEWNS) < 0
            {
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
    Ok(cmd)
}

/// Waits for the bootstrap, polling `cancel`, within BOOTSTRAP_TIMEOUT.
fn wait_bootstrap(
    child: &mut std::process::Child,
    cancel: &std::sync::atomic::AtomicBool,
    started: Instant,
    log_path: &Path,
) -> Result<std::process::ExitStatus, BuildError> {
    Ok(loop {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BuildError::Failed("build cancelled".into()));
        }
        if started.elapsed() > BOOTSTRAP_TIMEOUT {
            return Err(BuildError::Failed(format!(
                "mmdebstrap did not finish within {BOOTSTRAP_TIMEOUT:?}; last lines of its log:\n{}",
                tail(log_path, 15)
            )));
        }
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(failed("waiting for mmdebstrap", e)),
        }
    })
}

/// Keeps the packages a build downloaded for the next one (each file
/// appears atomically).
fn keep_packages(env: &BuildEnv, spec: &RootfsSpec, debs_out: &Path) {
    if spec.package_cache && std::fs::create_dir_all(&env.package_cache).is_ok() {
        if let Ok(rd) = std::fs::read_dir(debs_out) {
            for e in rd.flatten() {
                let to = env.package_cache.join(e.file_name());
                if e.path().extension().is_some_and(|x| x == "deb") && !to.exists() {
                    let _ = std::fs::rename(e.path(), &to);
                }
            }
        }
    }
}

/// `/root` split off into the work seed, both file systems made and
/// handed over into the owner's directory.
fn assemble(env: &BuildEnv, dir: &Path, root: &Path, out_fd: &OwnedFd) -> Result<(), BuildError> {
    let seed = dir.join("seed");
    std::fs::create_dir(&seed).map_err(|e| failed(&format!("creating {}", seed.display()), e))?;
    for e in std::fs::read_dir(root.join("root"))
        .map_err(|e| failed("reading /root", e))?
        .flatten()
    {
        std::fs::rename(e.path(), seed.join(e.file_name()))
            .map_err(|e| failed("moving /root", e))?;
    }
    let out = dir.join("out");
    std::fs::create_dir(&out).map_err(|e| failed(&format!("creating {}", out.display()), e))?;
    let (rootfs, work_seed) = (out.join("rootfs.ext4"), out.join("work-seed.ext4"));
    let seed_mib = round_mib(dir_bytes(&seed) * 2 + 32 * MIB, 16).max(64);
    mkfs(&seed, &work_seed, seed_mib, "banger-work")?;
    let content = dir_bytes(root);
    let root_mib = round_mib(content + content / 2 + 512 * MIB, 64);
    mkfs(root, &rootfs, root_mib, "banger-root")?;
    hand_over(&rootfs, out_fd, "rootfs.ext4", env.owner_uid)?;
    hand_over(&work_seed, out_fd, "work-seed.ext4", env.owner_uid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn depmod_runs_as_an_id_of_its_own_not_the_shared_nobody() {
        let c = depmod_command(
            Path::new("/usr/sbin/chroot"),
            Path::new("/t"),
            "6.1.0",
            None,
        );
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], format!("--userspec={DEPMOD_ID}:{DEPMOD_ID}"));
        assert_eq!(args[1], "--groups=");
        assert_ne!(DEPMOD_ID, 65534, "not nobody");
        assert!(
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(DEPMOD_ID))
                .ok()
                .flatten()
                .is_none(),
            "no account uses it"
        );
        assert_eq!(c.get_envs().count(), 2, "a clean environment");
    }

    /// depmod (here a shell script in a minimal tree) is the first process
    /// of a pid namespace of its own: it sees and signals nothing else; and
    /// it may not make a network socket.
    #[test]
    fn depmod_is_the_first_process_of_a_pid_namespace_of_its_own() {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            depmod_namespaces().is_some(),
            "namespaces can be made here (as root, outside a restricting unit)"
        );
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        // bash and what it loads, copied in.
        let ldd = std::process::Command::new("ldd")
            .arg("/bin/bash")
            .output()
            .unwrap();
        let mut files = vec![PathBuf::from("/bin/bash")];
        files.extend(
            String::from_utf8_lossy(&ldd.stdout)
                .split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from),
        );
        for f in &files {
            let to = root.join(f.strip_prefix("/").unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(f, &to).unwrap();
        }
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        let script = root.join("usr/sbin/depmod");
        std::fs::write(
            &script,
            "#!/bin/bash\necho $$ > /usr/lib/modules/$2/seen\n\
             (exec 3<>/dev/tcp/127.0.0.1/9) 2>> /usr/lib/modules/$2/seen || true\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        for dir in [d.path(), root.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let staged = d.path().join("staged");
        std::fs::create_dir(&staged).unwrap();
        install_modules(&root, &staged, "6.1.0-test").unwrap();
        let seen = std::fs::read_to_string(root.join("usr/lib/modules/6.1.0-test/seen")).unwrap();
        assert_eq!(
            seen.lines().next(),
            Some("1"),
            "depmod is pid 1 of its own namespace"
        );
        assert!(seen.contains("Permission denied"), "{seen}");
    }

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
    fn overlay_holds_the_agent_and_nothing_of_the_owners() {
        let d = tempfile::tempdir().unwrap();
        let tar_path = d.path().join("o.tar");
        write_overlay(&tar_path, recipe::find("debian-bookworm").unwrap()).unwrap();
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
        assert!(!names.iter().any(|n| n.contains("modules")), "{names:?}");
    }

    const OWNER: u32 = 4242;
    const OTHER: u32 = 4343;

    /// A module tree owned by [`OWNER`] in a directory the owner can reach.
    fn owner_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests switch uids: run them as root (scripts/test.sh does)"
        );
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = d.path().join("mods");
        std::fs::create_dir_all(src.join("kernel")).unwrap();
        std::fs::write(src.join("kernel/a.ko"), vec![b'A'; 4096]).unwrap();
        std::fs::write(src.join("modules.order"), b"kernel/a.ko\n").unwrap();
        for p in ["", "kernel", "kernel/a.ko", "modules.order"] {
            std::os::unix::fs::lchown(src.join(p), Some(OWNER), Some(OWNER)).unwrap();
        }
        // The work side: a root-only directory, as in a build.
        let work = d.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dest = work.join("modules");
        std::fs::create_dir(&dest).unwrap();
        (d, src, dest)
    }

    /// Every path below `dir`, relative, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
                out.push(rel);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn modules_arrive_as_plain_files_and_directories() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, src, dest) = owner_tree();
        std::os::unix::fs::symlink("/etc", src.join("build")).unwrap();
        std::os::unix::fs::lchown(src.join("build"), Some(OWNER), Some(OWNER)).unwrap();
        let suid = src.join("kernel/suid.ko");
        std::fs::write(&suid, b"x").unwrap();
        std::os::unix::fs::lchown(&suid, Some(OWNER), Some(OWNER)).unwrap();
        std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let n = collect_modules(&src, OWNER, OWNER, &dest).unwrap();
        assert_eq!(n, 4096 + 12 + 1);
        assert_eq!(
            listing(&dest),
            ["kernel", "kernel/a.ko", "kernel/suid.ko", "modules.order"]
        );
        let md = std::fs::metadata(dest.join("kernel/suid.ko")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755, "no set-id bits");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.uid(), 0, "root owns what it installs");
    }

    #[test]
    fn a_module_grown_while_it_is_read_cannot_smuggle_in_entries() {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let (_d, src, dest) = owner_tree();
        let target = src.join("kernel/a.ko");
        // The owner's move: as soon as the file is opened, append a tar
        // header and body that would replace depmod in the image.
        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(8);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        evil.append_data(&mut h, "usr/sbin/depmod", &b"#!/bin/sh"[..8])
            .unwrap();
        let evil = evil.into_inner().unwrap();
        let ino = Inotify::init(InitFlags::empty()).unwrap();
        ino.add_watch(&target, AddWatchFlags::IN_OPEN).unwrap();
        let t = target.clone();
        let grower = std::thread::spawn(move || {
            let _ = ino.read_events().unwrap();
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&t).unwrap();
            f.write_all(&evil).unwrap();
        });
        let r = collect_modules(&src, OWNER, OWNER, &dest);
        grower.join().unwrap();
        assert!(
            std::fs::metadata(&target).unwrap().len() > 4096,
            "the file really grew"
        );
        // Whether tar noticed the change (an error) or not, nothing but the
        // owner's own module tree was created, and none of it outside dest.
        if r.is_ok() {
            assert_eq!(listing(&dest), ["kernel", "kernel/a.ko", "modules.order"]);
        }
        let work = dest.parent().unwrap();
        assert!(
            listing(work)
                .iter()
                .all(|p| p.starts_with("modules") && !p.contains("depmod")),
            "{:?}",
            listing(work)
        );
    }

    #[test]
    fn the_owners_own_rights_decide_what_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, src, dest) = owner_tree();
        // Another user's private directory holding a world-readable file,
        // like a 0700 home: root could read it, the owner cannot.
        let private = src.join("other");
        std::fs::create_dir(&private).unwrap();
        std::fs::write(private.join("secret.ko"), b"secret").unwrap();
        std::os::unix::fs::lchown(private.join("secret.ko"), Some(OTHER), Some(OTHER)).unwrap();
        std::os::unix::fs::lchown(&private, Some(OTHER), Some(OTHER)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = collect_modules(&src, OWNER, OWNER, &dest).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
        assert!(
            !listing(&dest).iter().any(|p| p.contains("secret")),
            "{:?}",
            listing(&dest)
        );
        // Relative paths are refused before anything runs.
        assert!(matches!(
            collect_modules(Path::new("mods"), OWNER, OWNER, &dest),
            Err(BuildError::Refused(_))
        ));
    }

    #[test]
    fn a_tree_lent_to_depmod_is_taken_back_whole() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (_d, _src, dest) = owner_tree();
        // What a subverted depmod (as its own id) could leave behind.
        std::fs::create_dir(dest.join("kernel")).unwrap();
        std::fs::write(dest.join("kernel/a.ko"), b"ko").unwrap();
        std::fs::write(dest.join("modules.dep"), b"dep").unwrap();
        std::os::unix::fs::lchown(dest.join("modules.dep"), Some(DEPMOD_ID), Some(DEPMOD_ID))
            .unwrap();
        std::fs::set_permissions(
            dest.join("modules.dep"),
            std::fs::Permissions::from_mode(0o4777),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dest.join("modules.alias")).unwrap();
        nix::unistd::mkfifo(&dest.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(dest.join("evil")).unwrap();
        std::os::unix::fs::lchown(dest.join("evil"), Some(DEPMOD_ID), Some(DEPMOD_ID)).unwrap();
        std::os::unix::fs::lchown(&dest, Some(DEPMOD_ID), Some(DEPMOD_ID)).unwrap();
        normalize_tree(&dest).unwrap();
        assert_eq!(
            listing(&dest),
            ["evil", "kernel", "kernel/a.ko", "modules.dep"]
        );
        for (p, want) in [
            ("", 0o755),
            ("evil", 0o755),
            ("kernel", 0o755),
            ("kernel/a.ko", 0o644),
            ("modules.dep", 0o755),
        ] {
            let md = std::fs::symlink_metadata(dest.join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (0, 0), "{p}");
            assert_eq!(md.mode() & 0o7777, want, "{p}: set-id bits go");
        }
        assert!(
            std::fs::read_link("/etc/shadow").is_err(),
            "nothing followed"
        );
    }

    #[test]
    fn hostile_module_streams_are_refused() {
        fn raw_entry(name: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.as_old_mut().linkflag = [kind];
            h.set_cksum();
            let mut v = h.as_bytes().to_vec();
            v.extend_from_slice(body);
            v.resize(v.len().div_ceil(512) * 512, 0);
            v
        }
        let d = tempfile::tempdir().unwrap();
        for (name, kind, why) in [
            (&b"../escape.ko"[..], b'0', "parent"),
            (b"/etc/passwd", b'0', "absolute"),
            (b"././@LongLink", b'L', "long name"),
            (b"pax", b'x', "pax header"),
        ] {
            let dest = d.path().join(why.replace(' ', "-"));
            std::fs::create_dir(&dest).unwrap();
            let mut stream = raw_entry(name, kind, b"data");
            stream.extend_from_slice(&[0u8; 1024]);
            let r = extract_modules(&stream[..], &dest);
            assert!(matches!(r, Err(BuildError::Refused(_))), "{why}: {r:?}");
            assert!(listing(&dest).is_empty(), "{why}");
        }
        assert!(!d.path().join("escape.ko").exists());
        // A body shorter than its header says is refused, not padded.
        let dest = d.path().join("short");
        std::fs::create_dir(&dest).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_path("a.ko").unwrap();
        h.set_size(4096);
        h.set_cksum();
        let stream = [h.as_bytes().to_vec(), vec![1u8; 100]].concat();
        assert!(extract_modules(&stream[..], &dest).is_err());
    }
}
