//! The `vhost-device-vsock` process that gives a QEMU guest the same hybrid
//! vsock Unix socket Firecracker exposes: finding, starting, recognising and
//! ending it. Supervised by `actors::vsock_bridge`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::paths::VmPaths;

/// Finds `vhost-device-vsock`: `$PATH`, then cargo's bin directory.
pub fn find_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.extend(["/usr/local/bin", "/usr/bin", "/root/.cargo/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("vhost-device-vsock"))
        .find(|p| p.is_file())
}

/// Whether `pid` is this VM's vhost-device-vsock.
pub fn is_ours(pid: u32, paths: &VmPaths) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    crate::host::process::pid_alive(pid)
        && String::from_utf8_lossy(&raw).contains(&paths.vhost_socket().display().to_string())
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Ends the process: TERM, then KILL after 3 s; waits for it to be gone.
pub async fn stop(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    if !crate::host::process::wait_exit(pid, Duration::from_secs(3)).await {
        kill(pid).await;
    }
}

/// KILLs the process and waits (3 s at most) for it to be gone.
pub async fn kill(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    crate::host::process::wait_exit(pid, Duration::from_secs(3)).await;
}

/// Starts the bridge for `paths` in its own session (it outlives the
/// daemon) and waits until its vhost-user socket exists. A thread reaps it
/// and calls `on_exit` when it ends. Blocking: run it off the runtime.
pub fn spawn(
    binary: &std::path::Path,
    paths: &VmPaths,
    on_exit: impl FnOnce(u32) + Send + 'static,
) -> Result<u32, String> {
    let (vhost, uds) = (paths.vhost_socket(), paths.vsock_socket());
    let _ = std::fs::remove_file(&vhost);
    let _ = std::fs::remove_file(&uds);
    std::fs::create_dir_all(&paths.run)
        .map_err(|e| format!("creating {}: {e}", paths.run.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.vsock_log())
        .map_err(|e| format!("opening {}: {e}", paths.vsock_log().display()))?;
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("--vm")
        .arg(format!(
            "guest-cid=3,socket={},uds-path={}",
            vhost.display(),
            uds.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = child.wait();
        on_exit(pid);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vhost.exists() {
        if Instant::now() > deadline || !crate::host::process::pid_alive(pid) {
            // Not left behind half-started.
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(format!(
                "vhost-device-vsock did not create {} (see {})",
                vhost.display(),
                paths.vsock_log().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(pid)
}
