//! The kernel's modules in a built root file system: collected from the
//! kernel's tree (bounded in bytes, entries and time), installed, and
//! indexed by depmod as an unprivileged uid.

use super::*;

/// Bounds on a kernel module tree read from the owner.
pub(super) const MODULES_MAX_BYTES: u64 = 4 << 30;

pub(super) const MODULES_MAX_ENTRIES: usize = 100_000;

/// How long reading the owner's module tree may take.
pub(super) const MODULES_TIMEOUT: Duration = Duration::from_secs(600);

/// A path from the owner's stream, as clean relative components: plain
/// UTF-8 names of at most 255 bytes, at most 32 deep; `None` for the root.
pub(super) fn clean_relative(p: &Path) -> Result<Option<PathBuf>, String> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => {
                let n = n
                    .to_str()
                    .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
                if n.len() > 255 || n.contains('\0') {
                    return Err(format!("bad name in {}", p.display()));
                }
                out.push(n);
            }
            _ => return Err(format!("{} is not a plain relative path", p.display())),
        }
    }
    if out.components().count() > 32 {
        return Err(format!("{} is nested too deep", p.display()));
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Copies the owner's module tree `src` into `dest` (a fresh directory that
/// only root can write). A `tar` child running as the owner (uid, primary
/// group, no supplementary groups) reads the tree, so the kernel decides
/// what the owner may read; root takes the stream as hostile data: only
/// directories and regular files with clean relative paths are created
/// (0755/0644, no symlinks, links, devices or set-id bits), each exactly as
/// long as its header says, within [`MODULES_MAX_BYTES`] and
/// [`MODULES_MAX_ENTRIES`]. Returns the bytes copied.
pub fn collect_modules(
    src: &Path,
    owner: u32,
    owner_gid: u32,
    dest: &Path,
) -> Result<u64, BuildError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    if !src.is_absolute() {
        return Err(BuildError::Refused(format!(
            "the module directory {} is not an absolute path",
            src.display()
        )));
    }
    let tar = crate::host::system_tool("tar")
        .ok_or_else(|| BuildError::Failed("tar is not installed; install tar".into()))?;
    let mut cmd = std::process::Command::new(tar);
    // ustar: no extension headers, so every path is in its own header.
    cmd.args([
        "--create",
        "--file=-",
        "--format=ustar",
        "--one-file-system",
    ])
    .arg("--directory")
    .arg(src)
    .arg(".")
    .env_clear()
    .env("LC_ALL", "C")
    .current_dir("/")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    if nix::unistd::geteuid().is_root() {
        // std drops supplementary groups when root switches uid.
        cmd.uid(owner).gid(owner_gid);
    }
    crate::host::process::die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| failed("reading the module tree", e))?;
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.take(64 << 10).read_to_end(&mut v);
        String::from_utf8_lossy(&v).trim().to_string()
    });
    // Kill the reader at the deadline (the stream below then ends).
    let watchdog = std::thread::spawn(move || {
        if !crate::host::process::wait_exit_blocking(pid, MODULES_TIMEOUT) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    // The pipe is dropped when extraction returns: a writer that keeps
    // going after the archive's end gets EPIPE.
    let copied = extract_modules(child.stdout.take().expect("piped"), dest);
    if copied.is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = child.wait().map_err(|e| failed("waiting for tar", e))?;
    let _ = watchdog.join();
    let errors = errors.join().unwrap_or_default();
    let copied = copied?;
    if !status.success() {
        return Err(BuildError::Refused(format!(
            "cannot read the kernel modules in {} as uid {owner}: {}",
            src.display(),
            if errors.is_empty() {
                status.to_string()
            } else {
                errors
            }
        )));
    }
    Ok(copied)
}

/// The root side of [`collect_modules`]: parses the owner's ustar stream.
pub(super) fn extract_modules(stream: impl std::io::Read, dest: &Path) -> Result<u64, BuildError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let bad = |m: String| BuildError::Refused(format!("the kernel module tree: {m}"));
    let io = |e: std::io::Error| failed("copying the kernel modules", e);
    let mut archive = tar::Archive::new(stream);
    let entries = archive.entries().map_err(io)?;
    // Raw: no GNU long-name or PAX processing; such headers are refused.
    let entries = entries.raw(true);
    let (mut total, mut count) = (0u64, 0usize);
    let mkdirs = |d: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(d)
    };
    for e in entries {
        let mut e = e.map_err(io)?;
        count += 1;
        if count > MODULES_MAX_ENTRIES {
            return Err(bad(format!("more than {MODULES_MAX_ENTRIES} entries")));
        }
        let kind = e.header().entry_type();
        let path = e.path().map_err(io)?.into_owned();
        let rel = clean_relative(&path).map_err(bad)?;
        match kind {
            tar::EntryType::Directory => {
                if let Some(rel) = rel {
                    mkdirs(&dest.join(rel)).map_err(io)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let rel = rel.ok_or_else(|| bad("a file without a name".into()))?;
                let size = e.header().size().map_err(io)?;
                total = total.saturating_add(size);
                if total > MODULES_MAX_BYTES {
                    return Err(bad(format!(
                        "more than {} GiB of files",
                        MODULES_MAX_BYTES >> 30
                    )));
                }
                let to = dest.join(&rel);
                if let Some(parent) = to.parent() {
                    mkdirs(parent).map_err(io)?;
                }
                let exec = e.header().mode().unwrap_or(0) & 0o111 != 0;
                // create_new: O_EXCL, which never follows a link (and
                // nothing but directories and files exists below dest).
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if exec { 0o755 } else { 0o644 })
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&to)
                    .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                let n = std::io::copy(&mut e, &mut f).map_err(io)?;
                if n != size {
                    return Err(bad(format!(
                        "{} ended after {n} of {size} bytes",
                        rel.display()
                    )));
                }
            }
            // Symlinks (build/, source/), hard links, devices and fifos are
            // not modules.
            tar::EntryType::Symlink
            | tar::EntryType::Link
            | tar::EntryType::Char
            | tar::EntryType::Block
            | tar::EntryType::Fifo => {}
            other => {
                return Err(bad(format!(
                    "unexpected entry type {other:?} at {}",
                    path.display()
                )))
            }
        }
    }
    Ok(total)
}

/// Installs the collected modules as `/usr/lib/modules/<version>` of the
/// bootstrapped tree and runs `depmod` there as an id of its own in the chroot
/// (bookworm's depmod has no `--outdir`, so the module directory is lent to
/// that id for the run): the owner's bytes are parsed by an unprivileged
/// process only. Afterwards the tree is taken back ([`normalize_tree`]):
/// whatever that process did, only root-owned directories and plain files
/// remain.
pub(super) fn install_modules(root: &Path, staged: &Path, version: &str) -> Result<(), BuildError> {
    use std::os::unix::fs::DirBuilderExt;
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> BuildError {
        move |e| failed(what, e)
    }
    let lib = root.join("usr/lib/modules");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&lib)
        .map_err(io("creating /usr/lib/modules"))?;
    let target = lib.join(version);
    let _ = std::fs::remove_dir(&target); // an empty one from a package
    std::fs::rename(staged, &target).map_err(io("installing the modules"))?;
    std::os::unix::fs::lchown(&target, Some(DEPMOD_ID), Some(DEPMOD_ID))
        .map_err(io("lending the module directory to depmod"))?;
    let chroot = crate::host::system_tool("chroot")
        .ok_or_else(|| BuildError::Failed("chroot is not installed; install coreutils".into()))?;
    let mut cmd = depmod_command(&chroot, root, version, depmod_namespaces());
    let ran = crate::host::process::run_bounded(&mut cmd, Duration::from_secs(600), 64 << 10);
    // Nothing it started outlives it, and the tree is root's again before
    // any error is looked at.
    kill_processes_in(root);
    normalize_tree(&target).map_err(io("taking the module tree back"))?;
    let ran = ran.map_err(|e| failed("running depmod", e))?;
    if !ran.status.success() {
        return Err(BuildError::Failed(format!(
            "depmod failed ({}): {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr).trim()
        )));
    }
    Ok(())
}

/// Makes everything below and at `dir` root's: directories 0755, regular
/// files 0644 or 0755 (no set-id bits, a single link), anything else
/// (symlinks, fifos, devices, sockets, hard-linked files) removed. Never
/// follows a link.
pub(super) fn normalize_tree(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d)?;
        if !md.is_dir() {
            std::fs::remove_file(&d)?;
            continue;
        }
        std::os::unix::fs::lchown(&d, Some(0), Some(0))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let md = std::fs::symlink_metadata(&p)?;
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() && md.nlink() == 1 {
                std::os::unix::fs::lchown(&p, Some(0), Some(0))?;
                let mode = if md.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// `unshare(1)` when it can give depmod namespaces of its own here: its
/// own pids (it sees and signals nothing of the host's), no network, no
/// host IPC, its own host name. Where the helper may not make them (its
/// systemd unit allows only mount namespaces) depmod runs without, inside
/// the unit's sandbox (its own IPC and host name there too), under the
/// seccomp filter that refuses it any network socket either way, as an
/// id that owns no process but itself. Probed once.
pub(super) fn depmod_namespaces() -> Option<&'static Path> {
    static USABLE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    USABLE
        .get_or_init(|| {
            let unshare = crate::host::system_tool("unshare")?;
            let t = crate::host::system_tool("true")?;
            let ok = crate::host::process::run_bounded(
                std::process::Command::new(&unshare)
                    .args(UNSHARE_ARGS)
                    .arg(t),
                Duration::from_secs(10),
                4 << 10,
            )
            .is_ok_and(|o| o.status.success());
            if !ok {
                tracing::info!("depmod runs without namespaces of its own here (none may be made)");
            }
            ok.then_some(unshare)
        })
        .as_deref()
}

/// New pid (depmod its init; killed with `unshare`), network, IPC and UTS
/// namespaces.
const UNSHARE_ARGS: [&str; 7] = [
    "--pid",
    "--fork",
    "--kill-child",
    "--net",
    "--ipc",
    "--uts",
    "--",
];

/// `chroot` running the tree's depmod as [`DEPMOD_ID`], with no
/// supplementary groups and a clean environment, inside namespaces of its
/// own when `unshare` is given.
pub(super) fn depmod_command(
    chroot: &Path,
    root: &Path,
    version: &str,
    unshare: Option<&Path>,
) -> std::process::Command {
    let mut cmd = match unshare {
        Some(u) => {
            let mut c = std::process::Command::new(u);
            c.args(UNSHARE_ARGS).arg(chroot);
            c
        }
        None => std::process::Command::new(chroot),
    };
    cmd.arg(format!("--userspec={DEPMOD_ID}:{DEPMOD_ID}"))
        .arg("--groups=")
        .arg(root)
        .args(["/usr/sbin/depmod", "-a"])
        .arg(version)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    // No network even where no namespace may be made (under the unit).
    crate::host::seccomp::deny_network(&mut cmd);
    cmd
}

/// The uid and gid `depmod` runs as over the owner's modules: an id no
/// account uses (not the shared `nobody`, whose other processes it could
/// signal and whose files it could write), so a subverted depmod owns
/// nothing and can signal nothing but itself.
pub(super) const DEPMOD_ID: u32 = 2_147_483_000;
