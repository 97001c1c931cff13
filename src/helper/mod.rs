//! `bangerd-root`: performs typed privileged operations for exactly one owner
//! uid. Its own small actor tree:
//!
//! ```text
//! HelperSupervisor
//! └── NetActor      bridges and taps, one operation at a time
//! ```
//!
//! It never runs a shell and never takes a command line from a request.

pub mod net_actor;
pub mod supervisor;
pub mod vmm_ops;

use std::os::fd::RawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use ractor::Actor;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Notify};

use crate::host::net::NetOps;
use crate::host::process::{report_ready, LockFile};
use crate::image::build::{build_rootfs, BuildEnv};
use crate::protocol::conn::{Handler, Peer};
use crate::protocol::helper::{NoEvent, PrivReply, PrivRequest};
use crate::protocol::{Call, RpcError};
use crate::supervise::Slot;
use net_actor::NetMsg;

/// How the helper was started.
pub struct HelperOptions {
    /// The only uid whose daemon we serve.
    pub owner_uid: u32,
    /// Directory for our socket and lock (the owner's banger runtime dir).
    pub runtime_dir: PathBuf,
    pub ready_fd: Option<RawFd>,
    pub net: Arc<dyn NetOps>,
}

/// Why the helper could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HelperError(pub String);

/// Runs the helper until a `Shutdown` request or SIGTERM/SIGINT.
pub async fn run(opts: HelperOptions) -> Result<(), HelperError> {
    let ready_fd = opts.ready_fd;
    match start(opts).await {
        Ok(Some(r)) => {
            report_ready(ready_fd, "ready");
            r.serve().await;
            Ok(())
        }
        Ok(None) => {
            report_ready(ready_fd, "already-running");
            Ok(())
        }
        Err(e) => {
            report_ready(ready_fd, &format!("error: {e}"));
            Err(e)
        }
    }
}

struct Running {
    build: BuildEnv,
    runtime_dir: PathBuf,
    listener: UnixListener,
    socket: PathBuf,
    owner_uid: u32,
    net: Arc<Slot<NetMsg>>,
    supervisor: ractor::ActorRef<supervisor::HelperSupervisorMsg>,
    shutdown: Arc<Notify>,
    _lock: LockFile,
}

async fn start(opts: HelperOptions) -> Result<Option<Running>, HelperError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(HelperError(
            "bangerd-root must run as root (it creates bridges and taps); start it with sudo"
                .into(),
        ));
    }
    let dir = &opts.runtime_dir;
    let err = |what: String, e: std::io::Error| HelperError(format!("{what}: {e}"));
    // The runtime directory belongs to the owner, who can change what is in
    // it at any time: nothing here may follow a symlink as root. A directory
    // we create is made 0700 and handed over without following links; one
    // that exists must be a real directory of the owner (or root).
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| err(format!("creating {}", parent.display()), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => std::os::unix::fs::lchown(dir, Some(opts.owner_uid), None)
            .map_err(|e| err(format!("chown {}", dir.display()), e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(format!("creating {}", dir.display()), e)),
    }
    {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(dir)
            .map_err(|e| err(format!("inspecting {}", dir.display()), e))?;
        if !md.is_dir() || (md.uid() != opts.owner_uid && md.uid() != 0) {
            return Err(HelperError(format!(
                "{} is not a directory of uid {}; refusing to use it",
                dir.display(),
                opts.owner_uid
            )));
        }
    }
    let Some(lock) = LockFile::try_acquire(&dir.join("bangerd-root.lock"))
        .map_err(|e| err("taking the helper lock".into(), e))?
    else {
        return Ok(None);
    };
    // Our private work area (one per helper instance, keyed by its runtime
    // dir); leftovers of a killed helper are removed now that we hold the lock.
    let mut build = BuildEnv::default_for(opts.owner_uid);
    build.work_root = build
        .work_root
        .join(&crate::digest::sha256_hex(dir.display().to_string().as_bytes())[..12]);
    if let Ok(rd) = std::fs::read_dir(&build.work_root) {
        for e in rd.flatten() {
            let mounts = crate::image::build::mounts_under(&e.path());
            if mounts.is_empty() {
                tracing::info!(path = %e.path().display(), "removing an interrupted build");
                let _ = crate::fsutil::remove_all(&e.path());
            } else {
                tracing::error!(path = %e.path().display(), ?mounts, "interrupted build still has mounts; leaving it");
            }
        }
    }
    let socket = dir.join("bangerd-root.sock");
    let _ = std::fs::remove_file(&socket);
    // Created 0600 by the umask (no chmod by path afterwards), then handed
    // to the owner with lchown (a symlink swapped in is not followed).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&socket);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| err(format!("binding {}", socket.display()), e))?;
    std::os::unix::fs::lchown(&socket, Some(opts.owner_uid), None)
        .map_err(|e| err(format!("chown {}", socket.display()), e))?;
    let net = Arc::new(Slot::default());
    let (supervisor, _) = Actor::spawn(
        None,
        supervisor::HelperSupervisor {
            net_ops: opts.net.clone(),
            owner_uid: opts.owner_uid,
            net_slot: net.clone(),
        },
        (),
    )
    .await
    .map_err(|e| HelperError(format!("starting the helper actors: {e}")))?;
    tracing::info!(socket = %socket.display(), owner_uid = opts.owner_uid, "bangerd-root ready");
    Ok(Some(Running {
        build,
        runtime_dir: dir.clone(),
        listener,
        socket,
        owner_uid: opts.owner_uid,
        net,
        supervisor,
        shutdown: Arc::new(Notify::new()),
        _lock: lock,
    }))
}

#[derive(Clone)]
struct PrivHandler {
    build: BuildEnv,
    runtime_dir: PathBuf,
    owner_gid: u32,
    owner_uid: u32,
    net: Arc<Slot<NetMsg>>,
    shutdown: Arc<Notify>,
}

impl Handler<PrivRequest, NoEvent, PrivReply> for PrivHandler {
    async fn handle(
        &self,
        _peer: Peer,
        call: Call<PrivRequest>,
        _events: mpsc::Sender<NoEvent>,
        _inputs: crate::protocol::conn::Inputs,
    ) -> Result<PrivReply, RpcError> {
        let method = call.request.method();
        let res = match call.request {
            PrivRequest::Ping => Ok(PrivReply::Pong {
                pid: std::process::id(),
                version: crate::version::VERSION.into(),
                owner_uid: self.owner_uid,
            }),
            PrivRequest::Shutdown => {
                self.shutdown.notify_one();
                Ok(PrivReply::Done)
            }
            PrivRequest::BuildRootfs(spec) => {
                /// Flags the build as cancelled when the request is dropped
                /// (the daemon went away).
                struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);
                impl Drop for CancelOnDrop {
                    fn drop(&mut self) {
                        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let _guard = CancelOnDrop(cancel.clone());
                let env = self.build.clone();
                tracing::info!(op_id = %call.op_id, build = %spec.build_id, recipe = %spec.recipe, "build requested");
                match tokio::task::spawn_blocking(move || build_rootfs(&env, &spec, &cancel)).await
                {
                    Ok(r) => r.map(PrivReply::Built).map_err(RpcError::from),
                    Err(e) => Err(RpcError::failed(format!("build task failed: {e}"))),
                }
            }
            PrivRequest::LaunchVmm(spec) => {
                let (owner, gid, rt) = (self.owner_uid, self.owner_gid, self.runtime_dir.clone());
                tracing::info!(op_id = %call.op_id, vm_id = %spec.vm_id, kind = spec.kind.as_str(), "launching VMM");
                tokio::task::spawn_blocking(move || vmm_ops::launch(&spec, owner, gid, &rt))
                    .await?
                    .map(|pid| PrivReply::Launched { pid })
            }
            PrivRequest::SignalVmm { pid, signal } => {
                tracing::info!(op_id = %call.op_id, pid, %signal, "signalling VMM");
                vmm_ops::signal(pid, signal, self.owner_uid, &self.runtime_dir)
                    .map(|_| PrivReply::Done)
            }
            PrivRequest::ListVmms => {
                let (owner, rt) = (self.owner_uid, self.runtime_dir.clone());
                Ok(PrivReply::Vmms(
                    tokio::task::spawn_blocking(move || vmm_ops::list(owner, &rt)).await?,
                ))
            }
            req @ (PrivRequest::EnsureBridge { .. }
            | PrivRequest::CreateTap { .. }
            | PrivRequest::DeleteTap { .. }
            | PrivRequest::ListTaps
            | PrivRequest::EnableNat { .. }
            | PrivRequest::DisableNat { .. }) => {
                let net = self
                    .net
                    .get()
                    .ok_or_else(|| RpcError::failed("the network actor is restarting; retry"))?;
                ractor::call_t!(net, |reply| NetMsg::Exec(Box::new(req), reply), 60_000)
                    .map_err(|e| RpcError::failed(format!("network actor: {e}")))?
            }
        };
        match &res {
            Ok(_) => tracing::info!(op_id = %call.op_id, method, "done"),
            Err(e) => {
                tracing::warn!(op_id = %call.op_id, method, "refused or failed: {}", e.message)
            }
        }
        res
    }
}

impl Running {
    async fn serve(self) {
        let owner = self.owner_uid;
        let owner_gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
            .ok()
            .flatten()
            .map(|u| u.gid.as_raw())
            .unwrap_or(owner);
        let handler = PrivHandler {
            build: self.build.clone(),
            runtime_dir: self.runtime_dir.clone(),
            owner_gid,
            owner_uid: owner,
            net: self.net.clone(),
            shutdown: self.shutdown.clone(),
        };
        crate::protocol::conn::serve_until_shutdown(
            self.listener,
            move |uid| uid == owner,
            handler,
            self.shutdown.clone(),
        )
        .await;
        tracing::info!("bangerd-root stopping");
        let _ = std::fs::remove_file(&self.socket);
        // Our work area is empty unless a build is still being torn down.
        let _ = std::fs::remove_dir(&self.build.work_root);
        self.supervisor.stop(Some("shutdown".into()));
    }
}
