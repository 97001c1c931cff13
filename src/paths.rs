//! Where banger keeps things.
//!
//! User mode follows XDG: config in `$XDG_CONFIG_HOME/banger`, state in
//! `$XDG_STATE_HOME/banger`, cache in `$XDG_CACHE_HOME/banger`, sockets in
//! `$XDG_RUNTIME_DIR/banger`. System mode (a `banger system install`, marked by
//! `/etc/banger/install.toml` or `BANGER_SYSTEM=1`) uses `/etc/banger`,
//! `/var/lib/banger`, `/var/cache/banger` and `/run/banger`.
//!
//! The layout is computed once from an [`Env`] snapshot and passed down; no code
//! below the binaries reads these environment variables itself.

use std::path::{Path, PathBuf};

/// The serial drain monitor's socket in a VM's runtime directory.
pub const SERIAL_SOCKET: &str = "serial.sock";

/// The environment a layout is derived from (a snapshot, so tests can build one).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
    pub xdg_cache_home: Option<PathBuf>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub system: bool,
    pub uid: u32,
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Env {
        let system = match std::env::var("BANGER_SYSTEM").ok().as_deref() {
            Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            _ => Path::new(INSTALL_MARKER).exists(),
        };
        Env {
            home: env_path("HOME"),
            xdg_config_home: env_path("XDG_CONFIG_HOME"),
            xdg_state_home: env_path("XDG_STATE_HOME"),
            xdg_cache_home: env_path("XDG_CACHE_HOME"),
            xdg_runtime_dir: env_path("XDG_RUNTIME_DIR"),
            system,
            uid: nix::unistd::getuid().as_raw(),
        }
    }
}

/// Present on hosts where `banger system install` ran.
pub const INSTALL_MARKER: &str = "/etc/banger/install.toml";

/// Every path banger uses, resolved for one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub system: bool,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Layout {
    /// Resolves the layout for `env`.
    pub fn resolve(env: &Env) -> Layout {
        if env.system {
            return Layout {
                system: true,
                config_dir: "/etc/banger".into(),
                state_dir: "/var/lib/banger".into(),
                cache_dir: "/var/cache/banger".into(),
                runtime_dir: "/run/banger".into(),
            };
        }
        let home = env.home.clone().unwrap_or_else(|| PathBuf::from("/root"));
        let base = |x: &Option<PathBuf>, rel: &str| x.clone().unwrap_or_else(|| home.join(rel));
        let runtime_base = env.xdg_runtime_dir.clone().unwrap_or_else(|| {
            let run_user = PathBuf::from(format!("/run/user/{}", env.uid));
            if run_user.is_dir() {
                run_user
            } else {
                std::env::temp_dir().join(format!("banger-runtime-{}", env.uid))
            }
        });
        Layout {
            system: false,
            config_dir: base(&env.xdg_config_home, ".config").join("banger"),
            state_dir: base(&env.xdg_state_home, ".local/state").join("banger"),
            cache_dir: base(&env.xdg_cache_home, ".cache").join("banger"),
            runtime_dir: runtime_base.join("banger"),
        }
    }

    /// The layout of this process's environment.
    pub fn from_process() -> Layout {
        Layout::resolve(&Env::from_process())
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }
    pub fn daemon_socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }
    /// The HTTP API's socket (`docs/api/openapi.json`).
    pub fn api_socket(&self) -> PathBuf {
        self.runtime_dir.join("api.sock")
    }
    pub fn helper_socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd-root.sock")
    }
    pub fn daemon_lock(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.lock")
    }
    pub fn helper_lock(&self) -> PathBuf {
        self.runtime_dir.join("bangerd-root.lock")
    }
    pub fn store_file(&self) -> PathBuf {
        self.state_dir.join("state.redb")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }
    pub fn helper_log(&self) -> PathBuf {
        self.state_dir.join("bangerd-root.log")
    }
    /// Files of one VM.
    pub fn vm(&self, id: &str) -> VmPaths {
        VmPaths {
            state: self.state_dir.join("vms").join(id),
            run: self.runtime_dir.join("vms").join(id),
        }
    }
    /// banger's own SSH key, known_hosts and ssh_config.
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir.join("ssh")
    }
}

/// Where one VM's disks, logs and sockets live: disks and logs in the state
/// directory, sockets in the runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub state: PathBuf,
    pub run: PathBuf,
}

impl VmPaths {
    /// The image rootfs, linked (or copied) for this VM: the qcow2 backing file.
    pub fn base_disk(&self) -> PathBuf {
        self.state.join("base.ext4")
    }
    /// QEMU's copy-on-write root disk over [`VmPaths::base_disk`].
    pub fn root_qcow2(&self) -> PathBuf {
        self.state.join("root.qcow2")
    }
    /// A raw root disk (Firecracker: reflink or sparse copy of the image).
    pub fn root_raw(&self) -> PathBuf {
        self.state.join("root.ext4")
    }
    pub fn work_disk(&self) -> PathBuf {
        self.state.join("work.ext4")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.state.join("serial.log")
    }
    /// QEMU: the monitor the serial console is drained over (beside
    /// its QMP socket, as `vmm::serial::socket_beside` names it).
    pub fn serial_socket(&self) -> PathBuf {
        self.run.join(SERIAL_SOCKET)
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.state.join("vmm.log")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.run.join("qmp.sock")
    }
    pub fn api_socket(&self) -> PathBuf {
        self.run.join("fc.sock")
    }
    /// QEMU: the Unix socket of the agent's virtio-serial port.
    pub fn agent_socket(&self) -> PathBuf {
        self.run.join("agent.sock")
    }
    /// Firecracker: the hybrid vsock socket (`CONNECT <port>`).
    pub fn vsock_socket(&self) -> PathBuf {
        self.run.join("vsock.sock")
    }
}

/// Creates `dir` (its parents as needed) and checks the directory itself:
/// a real directory (never a symlink), owned by us, mode 0700 (fixed when
/// it is not). Anything else is refused with what to do: a directory
/// someone else made, or a link to one, would hand them our sockets.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if md.file_type().is_symlink() || !md.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory (a symlink or a file): remove it and retry",
            dir.display()
        )));
    }
    if md.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}, not to you (uid {me}): someone may have made it to intercept banger's sockets; remove it and retry",
            dir.display(),
            md.uid()
        )));
    }
    if md.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates the runtime directory; the `/tmp/banger-runtime-<uid>` fallback
/// (no `XDG_RUNTIME_DIR`, no `/run/user/<uid>`) lies in a directory anyone
/// can write, so it is verified as strictly as the directory itself.
pub fn ensure_runtime_dir(layout: &Layout) -> std::io::Result<()> {
    if let Some(base) = layout.runtime_dir.parent() {
        let fallback = base
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("banger-runtime-"));
        if fallback {
            ensure_private_dir(base)?;
        }
    }
    ensure_private_dir(&layout.runtime_dir)
}

/// The directory of the running executable; sibling binaries live there.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Finds a sibling binary (`bangerd`, `bangerd-root`) next to the running one,
/// falling back to `$PATH`.
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Some(dir) = exe_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
        // `cargo test` runs from target/<profile>/deps; binaries sit one level up.
        if let Some(parent) = dir.parent() {
            let p = parent.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_are_ours_real_and_0700() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("a/b/banger");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // Ours but too open: fixed.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // A symlink planted where the directory goes: refused, not followed.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("remove it"), "{e}");
        // Someone else's directory (the /tmp fallback pre-created by
        // another user): refused.
        if nix::unistd::geteuid().is_root() {
            let theirs = d.path().join("banger-runtime-0");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::lchown(&theirs, Some(4242), Some(4242)).unwrap();
            let layout = Layout {
                system: false,
                config_dir: d.path().into(),
                state_dir: d.path().into(),
                cache_dir: d.path().into(),
                runtime_dir: theirs.join("banger"),
            };
            let e = ensure_runtime_dir(&layout).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 4242"), "{e}");
            assert!(!theirs.join("banger").exists(), "nothing was made inside");
        }
    }

    #[test]
    fn xdg_overrides_home() {
        let env = Env {
            home: Some("/home/u".into()),
            xdg_config_home: Some("/x/config".into()),
            xdg_runtime_dir: Some("/x/run".into()),
            uid: 1000,
            ..Env::default()
        };
        let l = Layout::resolve(&env);
        assert_eq!(l.config_dir, PathBuf::from("/x/config/banger"));
        assert_eq!(l.state_dir, PathBuf::from("/home/u/.local/state/banger"));
        assert_eq!(
            l.daemon_socket(),
            PathBuf::from("/x/run/banger/bangerd.sock")
        );
    }

    #[test]
    fn system_mode_uses_fixed_paths() {
        let l = Layout::resolve(&Env {
            system: true,
            ..Env::default()
        });
        assert_eq!(l.daemon_socket(), PathBuf::from("/run/banger/bangerd.sock"));
        assert_eq!(l.config_file(), PathBuf::from("/etc/banger/config.toml"));
        assert_eq!(l.store_file(), PathBuf::from("/var/lib/banger/state.redb"));
    }
}
