//! `bangerd`: owns the state and orchestrates. Startup: take the lock, open
//! and migrate the store, start the actor tree, bind the 0600 socket, report
//! ready. Each connection is served by [`crate::protocol::conn`] with the
//! [`handler::DaemonHandler`].

pub mod handler;
pub mod images;
pub mod kernels;
pub mod reconcile;
pub mod vms;
pub mod workspaces;

use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::Actor;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::actors::helper_link::{HelperLauncher, HelperLinkMsg};
use crate::actors::supervisor::{DaemonSupervisor, HelperLinkSpec};
use crate::actors::Services;
use crate::config::{Config, HostFacts};
use crate::host::process::{report_ready, spawn_service, LockFile, Started};
use crate::paths::{ensure_private_dir, sibling_binary, Layout};
use crate::store::Store;

/// How the daemon was started.
pub struct DaemonOptions {
    pub layout: Layout,
    /// Pipe to report readiness on (set when the CLI started us).
    pub ready_fd: Option<RawFd>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Starts `bangerd-root` as a detached service (user mode, as root).
pub struct SpawnHelper {
    pub layout: Layout,
    pub owner_uid: u32,
}

impl HelperLauncher for SpawnHelper {
    fn launch(&self) -> Result<(), String> {
        let program = sibling_binary("bangerd-root");
        let args = vec![
            "--owner-uid".to_string(),
            self.owner_uid.to_string(),
            "--runtime-dir".to_string(),
            self.layout.runtime_dir.display().to_string(),
        ];
        match spawn_service(
            &program,
            &args,
            &self.layout.helper_log(),
            Duration::from_secs(15),
        )? {
            Started::Ready(pid) => {
                tracing::info!(pid, "started bangerd-root");
                Ok(())
            }
            Started::AlreadyRunning => Ok(()),
        }
    }
}

/// What to say when the helper is absent and we may not start it.
pub fn helper_hint(layout: &Layout, owner_uid: u32) -> String {
    if layout.system {
        "It runs as the bangerd-root systemd service: sudo systemctl start bangerd-root".into()
    } else {
        format!(
            "bangerd runs as uid {owner_uid} and cannot start it. Grant it with: sudo {} --owner-uid {owner_uid} --runtime-dir {}",
            sibling_binary("bangerd-root").display(),
            layout.runtime_dir.display()
        )
    }
}

/// Runs the daemon until it is asked to stop (request or SIGTERM/SIGINT).
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let ready_fd = opts.ready_fd;
    match start(opts).await {
        Ok(Some(running)) => {
            report_ready(ready_fd, "ready");
            running.serve().await;
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
    listener: UnixListener,
    socket: PathBuf,
    services: Arc<Services>,
    supervisor: ractor::ActorRef<crate::actors::supervisor::SupervisorMsg>,
    shutdown: Arc<Notify>,
    stop_helper: bool,
    started: Instant,
    _lock: LockFile,
}

async fn start(opts: DaemonOptions) -> Result<Option<Running>, DaemonError> {
    let layout = opts.layout;
    let setup = |what: &str, e: std::io::Error| DaemonError::Setup(format!("{what}: {e}"));
    ensure_private_dir(&layout.runtime_dir)
        .map_err(|e| setup(&format!("creating {}", layout.runtime_dir.display()), e))?;
    std::fs::create_dir_all(&layout.state_dir)
        .map_err(|e| setup(&format!("creating {}", layout.state_dir.display()), e))?;
    let Some(lock) = LockFile::try_acquire(&layout.daemon_lock())
        .map_err(|e| setup(&format!("locking {}", layout.daemon_lock().display()), e))?
    else {
        tracing::info!("another bangerd holds the lock; exiting");
        return Ok(None);
    };
    let config = Config::load(&layout.config_file(), HostFacts::probe())?;
    let store = Arc::new(Store::open(&layout.store_file())?);
    let owner_uid = nix::unistd::geteuid().as_raw();
    let launcher: Option<Arc<dyn HelperLauncher>> = if !layout.system && owner_uid == 0 {
        Some(Arc::new(SpawnHelper {
            layout: layout.clone(),
            owner_uid,
        }))
    } else {
        None
    };
    let stop_helper = launcher.is_some();
    let helper = HelperLinkSpec {
        socket: layout.helper_socket(),
        launcher,
        absent_hint: helper_hint(&layout, owner_uid),
    };
    // Work interrupted by a crash leaves only `.tmp-*` entries; nothing
    // unrecorded is ever visible.
    for dir in [
        layout.state_dir.join("images"),
        layout.state_dir.join("kernels"),
    ] {
        for p in crate::fsutil::sweep_temp(&dir) {
            tracing::info!(path = %p.display(), "removed leftovers of interrupted work");
        }
    }
    let socket = layout.daemon_socket();
    let services = Services::new(store, layout, config);
    let (supervisor, _) = Actor::spawn(
        None,
        DaemonSupervisor {
            services: services.clone(),
            helper,
        },
        (),
    )
    .await
    .map_err(|e| DaemonError::Setup(format!("starting the actor system: {e}")))?;

    // Remove what no VM owns any more before anyone can ask for a new VM.
    reconcile::orphans(&services).await;

    // We hold the lock, so a socket file left here is stale.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| setup(&format!("binding {}", socket.display()), e))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| setup(&format!("chmod {}", socket.display()), e))?;
    tracing::info!(socket = %socket.display(), version = crate::version::VERSION, "bangerd ready");
    Ok(Some(Running {
        listener,
        socket,
        services,
        supervisor,
        shutdown: Arc::new(Notify::new()),
        stop_helper,
        started: Instant::now(),
        _lock: lock,
    }))
}

impl Running {
    async fn serve(self) {
        let owner = nix::unistd::geteuid().as_raw();
        let handler = handler::DaemonHandler {
            services: self.services.clone(),
            started: self.started,
            shutdown: self.shutdown.clone(),
            socket: self.socket.clone(),
        };
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut sigint =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let h = handler.clone();
                        tokio::spawn(crate::protocol::conn::serve_connection(
                            stream,
                            move |uid| uid == owner || uid == 0,
                            h,
                        ));
                    }
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = self.shutdown.notified() => break,
                _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
                _ = async { match sigint.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => break,
            }
        }
        tracing::info!("bangerd stopping");
        let _ = std::fs::remove_file(&self.socket);
        // Warm taps are ours alone: give them back before the helper goes.
        if let Some(pool) = self.services.taps.get() {
            let _ = ractor::call_t!(pool, crate::actors::tap_pool::TapPoolMsg::Drain, 10_000);
        }
        if self.stop_helper {
            self.stop_helper().await;
        }
        self.supervisor.stop(Some("shutdown".into()));
    }

    async fn stop_helper(&self) {
        let Some(link) = self.services.helper.get() else {
            return;
        };
        let pid = match ractor::call_t!(link, HelperLinkMsg::Status, 3000) {
            Ok(crate::protocol::cli::HelperState::Connected { pid, .. }) => pid,
            _ => return,
        };
        // The helper may close the connection before its answer is written;
        // its exit is what counts.
        if let Err(e) = ractor::call_t!(link, HelperLinkMsg::ShutdownHelper, 5000) {
            tracing::warn!("asking bangerd-root to stop: {e}");
        }
        if !crate::host::process::wait_exit(pid, Duration::from_secs(10)).await {
            tracing::warn!(pid, "bangerd-root did not exit after shutdown");
        }
    }
}
