//! `bangerd`: owns the state and orchestrates. Startup: take the lock, open
//! and migrate the store, build the [`Ctx`] and the actor tree, reconcile
//! with what runs, bind the 0600 socket, report ready. Each connection is
//! served by [`crate::protocol::conn`] with the [`handler::DaemonHandler`].
//!
//! `handler.rs` holds the one `match` over requests; requests about one VM
//! are routed to its actor in `vms.rs`, through the helpers of
//! `requests.rs`; everything else calls `ops` directly.

pub mod activity;
pub mod api;
pub mod handler;
pub mod instance;
pub mod reconcile;
pub mod requests;
pub mod run;
pub mod services;
pub mod vms;

use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::Actor;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::actors::helper_link::{HelperLauncher, HelperLinkMsg};
use crate::actors::supervisor::{DaemonSupervisor, HelperLinkSpec, SupervisorMsg};
use crate::actors::{ActorHelper, ActorJobs, ActorTaps, JobKind, Slots};
use crate::config::{Config, HostFacts};
use crate::fsutil::{IoContext, IoError};
use crate::host::process::{run_service, spawn_service, LockFile, Started};
use crate::ops::{Ctx, RealDrivers, Timeouts};
use crate::paths::{sibling_binary, Layout};
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
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("starting the actor system: {0}")]
    Actors(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Another daemon of this uid serves this network namespace.
    #[error("{0}")]
    Instance(String),
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
    run_service(opts.ready_fd, start(opts), Running::serve).await
}

struct Running {
    listener: UnixListener,
    socket: PathBuf,
    /// The HTTP API's socket (`api.sock`, next to `socket`).
    api: UnixListener,
    api_socket: PathBuf,
    ctx: Arc<Ctx>,
    slots: Arc<Slots>,
    supervisor: ractor::ActorRef<SupervisorMsg>,
    stop_helper: bool,
    started: Instant,
    _lock: LockFile,
}

/// The daemon's context, its seams backed by the actors in `slots`.
pub fn context(layout: Layout, config: Config, store: Arc<Store>, slots: &Arc<Slots>) -> Arc<Ctx> {
    Arc::new(Ctx {
        vault: Arc::new(crate::ops::egress::secrets::Vault::new(&layout.state_dir)),
        timeouts: Timeouts {
            unresponsive: config.unresponsive_after,
            ..Timeouts::for_host()
        },
        store,
        layout,
        config,
        helper: Arc::new(ActorHelper(slots.clone())),
        taps: Arc::new(ActorTaps(slots.clone())),
        images: Arc::new(ActorJobs(slots.clone(), JobKind::Images)),
        kernels: Arc::new(ActorJobs(slots.clone(), JobKind::Kernels)),
        drivers: Arc::new(RealDrivers),
        guests: Default::default(),
        warming: Default::default(),
        tap_ledger: Default::default(),
        egress: Default::default(),
    })
}

async fn start(opts: DaemonOptions) -> Result<Option<Running>, DaemonError> {
    let layout = opts.layout;
    crate::paths::ensure_runtime_dir(&layout).ctx("creating", &layout.runtime_dir)?;
    std::fs::create_dir_all(&layout.state_dir).ctx("creating", &layout.state_dir)?;
    let Some(lock) =
        LockFile::try_acquire(&layout.daemon_lock()).ctx("locking", &layout.daemon_lock())?
    else {
        tracing::info!("another bangerd holds the lock; exiting");
        return Ok(None);
    };
    // One daemon per owner per network namespace (`instance.rs`), claimed
    // before anything is reconciled: a second one would delete the first
    // one's taps as orphans.
    let uid = nix::unistd::geteuid().as_raw();
    instance::claim(uid, Duration::from_secs(5))
        .map_err(DaemonError::Instance)?
        .serve(uid, &layout.state_dir);
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
    let slots = Arc::new(Slots::default());
    let ctx = context(layout, config, store, &slots);
    crate::ops::snapshots::sweep(&ctx);
    for p in crate::ops::images::sweep_cache(&ctx) {
        tracing::info!(path = %p.display(), "removed leftovers of an interrupted pull");
    }
    let (supervisor, _) = Actor::spawn(
        None,
        DaemonSupervisor {
            ctx: ctx.clone(),
            slots: slots.clone(),
            helper,
        },
        (),
    )
    .await
    .map_err(|e| DaemonError::Actors(e.to_string()))?;

    // Remove what no VM owns any more before anyone can ask for a new VM.
    reconcile::orphans(&ctx).await;

    // We hold the lock, so a socket file left here is stale.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).ctx("binding", &socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .ctx("chmod 0600", &socket)?;
    let api_socket = ctx.layout.api_socket();
    let _ = std::fs::remove_file(&api_socket);
    let api = UnixListener::bind(&api_socket).ctx("binding", &api_socket)?;
    std::fs::set_permissions(&api_socket, std::fs::Permissions::from_mode(0o600))
        .ctx("chmod 0600", &api_socket)?;
    tracing::info!(socket = %socket.display(), api = %api_socket.display(), version = crate::version::version(), "bangerd ready");
    Ok(Some(Running {
        listener,
        socket,
        api,
        api_socket,
        ctx,
        slots,
        supervisor,
        stop_helper,
        started: Instant::now(),
        _lock: lock,
    }))
}

impl Running {
    async fn serve(self) {
        let owner = nix::unistd::geteuid().as_raw();
        let shutdown = Arc::new(Notify::new());
        let handler = handler::DaemonHandler {
            ctx: self.ctx.clone(),
            slots: self.slots.clone(),
            started: self.started,
            shutdown: shutdown.clone(),
            socket: self.socket.clone(),
            web: Arc::new(api::Web::new(self.ctx.config.api_listen)),
            activity: Default::default(),
        };
        if self.ctx.config.api_listen.is_some() {
            if let Err(e) = handler.web.ensure(&handler).await {
                tracing::warn!("{}", e.message);
            }
        }
        let api_task = tokio::spawn(api::serve(self.api, owner, handler.clone()));
        // Guest-written logs are kept bounded while we serve.
        let capper = tokio::spawn(crate::ops::logs::run(
            self.ctx.clone(),
            std::time::Duration::from_secs(5),
        ));
        crate::protocol::conn::serve_until_shutdown(
            self.listener,
            move |uid| uid == owner || uid == 0,
            handler,
            shutdown,
        )
        .await;
        capper.abort();
        api_task.abort();
        let _ = std::fs::remove_file(&self.api_socket);
        tracing::info!("bangerd stopping");
        crate::actors::dns_server::unroute(&self.ctx).await;
        let _ = std::fs::remove_file(&self.socket);
        // Warm taps are ours alone: give them back before the helper goes.
        if let Some(pool) = self.slots.taps.get() {
            let _ = ractor::call_t!(pool, crate::actors::tap_pool::TapPoolMsg::Drain, 10_000);
        }
        if self.stop_helper {
            stop_helper(&self.slots).await;
        }
        self.supervisor.stop(Some("shutdown".into()));
    }
}

async fn stop_helper(slots: &Slots) {
    let Some(link) = slots.helper.get() else {
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
