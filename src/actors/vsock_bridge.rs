//! `VsockBridge`: the per-VM `vhost-device-vsock` process that gives a QEMU
//! guest the same hybrid vsock Unix socket Firecracker exposes. A child of
//! the VmActor; the process runs in its own session (it outlives the daemon
//! and is adopted again after a restart) and is restarted if it dies while
//! the VM runs.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Backoff;
use crate::paths::VmPaths;

/// Messages to a [`VsockBridge`].
pub enum VsockMsg {
    /// The current pid.
    Pid(RpcReplyPort<Option<u32>>),
    /// Kills the process and stops the actor.
    Stop(RpcReplyPort<()>),
    /// Internal: the process `pid` exited.
    Exited(u32),
    /// Internal: start it again.
    Respawn,
}

/// The actor.
pub struct VsockBridge {
    pub paths: VmPaths,
    pub binary: PathBuf,
}

/// Its state.
pub struct VsockState {
    pid: Option<u32>,
    backoff: Backoff,
    stopping: bool,
}

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

impl VsockBridge {
    async fn spawn(&self, me: &ActorRef<VsockMsg>) -> Result<u32, String> {
        let (vhost, uds) = (self.paths.vhost_socket(), self.paths.vsock_socket());
        let _ = std::fs::remove_file(&vhost);
        let _ = std::fs::remove_file(&uds);
        std::fs::create_dir_all(&self.paths.run).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.paths.vsock_log())
            .map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&self.binary);
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
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        let pid = child.id();
        let me = me.clone();
        // Our child while we live: reap it and report its exit.
        std::thread::spawn(move || {
            let _ = child.wait();
            let _ = me.cast(VsockMsg::Exited(pid));
        });
        // Ready when its vhost-user socket exists.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !vhost.exists() {
            if std::time::Instant::now() > deadline || !crate::host::process::pid_alive(pid) {
                // Not left behind half-started.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(format!(
                    "vhost-device-vsock did not create {} (see {})",
                    vhost.display(),
                    self.paths.vsock_log().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(pid)
    }
}

impl Actor for VsockBridge {
    type Msg = VsockMsg;
    type State = VsockState;
    /// A running process to adopt (after a daemon restart).
    type Arguments = Option<u32>;

    async fn pre_start(
        &self,
        myself: ActorRef<VsockMsg>,
        adopt: Option<u32>,
    ) -> Result<VsockState, ActorProcessingErr> {
        let pid = match adopt.filter(|p| is_ours(*p, &self.paths)) {
            Some(pid) => {
                let me = myself.clone();
                tokio::spawn(async move {
                    crate::host::process::wait_exit_forever(pid).await;
                    let _ = me.cast(VsockMsg::Exited(pid));
                });
                pid
            }
            None => self.spawn(&myself).await?,
        };
        Ok(VsockState {
            pid: Some(pid),
            backoff: Backoff::new(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<VsockMsg>,
        msg: VsockMsg,
        state: &mut VsockState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VsockMsg::Pid(r) => {
                let _ = r.send(state.pid);
            }
            VsockMsg::Exited(pid) => {
                if state.stopping || state.pid != Some(pid) {
                    return Ok(());
                }
                state.pid = None;
                let d = state.backoff.next_delay();
                tracing::warn!(dir = %self.paths.run.display(), "vhost-device-vsock exited; restarting in {d:?}");
                myself.send_after(d, || VsockMsg::Respawn);
            }
            VsockMsg::Respawn => {
                if state.stopping || state.pid.is_some() {
                    return Ok(());
                }
                match self.spawn(&myself).await {
                    Ok(pid) => state.pid = Some(pid),
                    Err(e) => {
                        let d = state.backoff.next_delay();
                        tracing::error!("restarting vhost-device-vsock: {e}; again in {d:?}");
                        myself.send_after(d, || VsockMsg::Respawn);
                    }
                }
            }
            VsockMsg::Stop(r) => {
                state.stopping = true;
                if let Some(pid) = state.pid.take() {
                    let p = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
                    if !crate::host::process::wait_exit(pid, Duration::from_secs(3)).await {
                        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                        crate::host::process::wait_exit(pid, Duration::from_secs(3)).await;
                    }
                }
                let _ = std::fs::remove_file(self.paths.vhost_socket());
                let _ = std::fs::remove_file(self.paths.vsock_socket());
                let _ = r.send(());
                myself.stop(Some("stopped".into()));
            }
        }
        Ok(())
    }
}
