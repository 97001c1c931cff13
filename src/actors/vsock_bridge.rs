//! `VsockBridge`: supervises the per-VM `vhost-device-vsock` process
//! (`host::vsock_bridge`) of a QEMU guest. A child of the VmActor; the
//! process runs in its own session (it outlives the daemon and is adopted
//! again after a restart) and is restarted if it dies while the VM runs.
//! Starting and stopping run on tasks that report back.

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::host::vsock_bridge as bridge;
use crate::paths::VmPaths;
use crate::supervise::Backoff;

/// Messages to a [`VsockBridge`].
pub enum VsockMsg {
    /// The pid once the process runs (at once when it does already); an
    /// error when it could not be started.
    Pid(RpcReplyPort<Result<u32, String>>),
    /// Ends the process, then the actor; answers once it is gone.
    Stop(RpcReplyPort<()>),
    /// Internal: a start finished.
    Started(Result<u32, String>),
    /// Internal: the process `pid` exited.
    Exited(u32),
    /// Internal: start it (again).
    Spawn,
}

/// Which VM's bridge, and the binary to run.
pub struct VsockBridge {
    pub paths: VmPaths,
    pub binary: PathBuf,
}

/// The process (once it runs), its start in flight, and who waits for it.
pub struct VsockState {
    pid: Option<u32>,
    starting: bool,
    /// Set once a start failed before any process ran: waiters hear it.
    failed: Option<String>,
    waiters: Vec<RpcReplyPort<Result<u32, String>>>,
    backoff: Backoff,
    stopping: bool,
}

impl VsockBridge {
    fn spawn(&self, myself: &ActorRef<VsockMsg>, state: &mut VsockState) {
        if state.starting || state.stopping || state.pid.is_some() {
            return;
        }
        state.starting = true;
        let (binary, paths, me) = (self.binary.clone(), self.paths.clone(), myself.clone());
        tokio::task::spawn_blocking(move || {
            let exit_to = me.clone();
            let r = bridge::spawn(&binary, &paths, move |pid| {
                let _ = exit_to.cast(VsockMsg::Exited(pid));
            });
            let _ = me.cast(VsockMsg::Started(r));
        });
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
        let mut state = VsockState {
            pid: None,
            starting: false,
            failed: None,
            waiters: Vec::new(),
            backoff: Backoff::default(),
            stopping: false,
        };
        match adopt.filter(|p| bridge::is_ours(*p, &self.paths)) {
            Some(pid) => {
                state.pid = Some(pid);
                let me = myself.clone();
                tokio::spawn(async move {
                    crate::host::process::wait_exit_forever(pid).await;
                    let _ = me.cast(VsockMsg::Exited(pid));
                });
            }
            None => {
                let _ = myself.cast(VsockMsg::Spawn);
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<VsockMsg>,
        msg: VsockMsg,
        state: &mut VsockState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            VsockMsg::Pid(r) => match (state.pid, &state.failed) {
                (Some(pid), _) => {
                    let _ = r.send(Ok(pid));
                }
                (None, Some(e)) => {
                    let _ = r.send(Err(e.clone()));
                }
                (None, None) => state.waiters.push(r),
            },
            VsockMsg::Spawn => self.spawn(&myself, state),
            VsockMsg::Started(r) => {
                state.starting = false;
                match r {
                    Ok(pid) if state.stopping => {
                        tokio::spawn(bridge::stop(pid));
                    }
                    Ok(pid) => {
                        state.pid = Some(pid);
                        state.failed = None;
                        for w in state.waiters.drain(..) {
                            let _ = w.send(Ok(pid));
                        }
                    }
                    Err(e) if !state.waiters.is_empty() => {
                        // The first start: the VM's boot hears why.
                        for w in state.waiters.drain(..) {
                            let _ = w.send(Err(e.clone()));
                        }
                        state.failed = Some(e);
                    }
                    Err(e) => {
                        let d = state.backoff.next_delay();
                        tracing::error!("restarting vhost-device-vsock: {e}; again in {d:?}");
                        myself.send_after(d, || VsockMsg::Spawn);
                    }
                }
            }
            VsockMsg::Exited(pid) => {
                if state.stopping || state.pid != Some(pid) {
                    return Ok(());
                }
                state.pid = None;
                let d = state.backoff.next_delay();
                tracing::warn!(dir = %self.paths.run.display(), "vhost-device-vsock exited; restarting in {d:?}");
                myself.send_after(d, || VsockMsg::Spawn);
            }
            VsockMsg::Stop(r) => {
                state.stopping = true;
                let pid = state.pid.take();
                let paths = self.paths.clone();
                let me = myself.clone();
                tokio::spawn(async move {
                    if let Some(pid) = pid {
                        bridge::stop(pid).await;
                    }
                    let _ = std::fs::remove_file(paths.vhost_socket());
                    let _ = std::fs::remove_file(paths.vsock_socket());
                    let _ = r.send(());
                    me.stop(Some("stopped".into()));
                });
            }
        }
        Ok(())
    }
}
