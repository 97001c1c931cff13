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
pub mod vmm_ns;
pub mod vmm_ops;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::sync::Arc;

use ractor::Actor;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Notify};

use crate::host::net::NetOps;
use crate::host::process::{run_service, LockFile};
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
    run_service(opts.ready_fd, start(opts), Running::serve).await
}

struct Running {
    build: BuildEnv,
    runtime_dir: PathBuf,
    dir_fd: OwnedFd,
    _net_owner: LockFile,
    listener: UnixListener,
    socket: PathBuf,
    owner_uid: u32,
    net: Arc<Slot<NetMsg>>,
    supervisor: ractor::ActorRef<supervisor::HelperSupervisorMsg>,
    shutdown: Arc<Notify>,
    cgroups: Option<Arc<crate::host::cgroup::Layout>>,
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
    // it at any time: it is opened once (never through a symlink), checked,
    // and everything in it is done relative to that descriptor.
    let dir_fd = open_runtime_dir(dir, opts.owner_uid)?;
    let net_owner = claim_network(opts.owner_uid)?;
    let lock_fd = nix::fcntl::openat(
        dir_fd.as_fd(),
        "bangerd-root.lock",
        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| err("opening the helper lock".into(), e.into()))?;
    let Some(lock) = LockFile::try_lock(std::fs::File::from(lock_fd))
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
            crate::image::build::kill_processes_in(&e.path());
            let mounts = crate::image::build::mounts_under(&e.path());
            if mounts.is_empty() {
                tracing::info!(path = %e.path().display(), "removing an interrupted build");
                let _ = crate::fsutil::remove_all(&e.path());
            } else {
                tracing::error!(path = %e.path().display(), ?mounts, "interrupted build still has mounts; leaving it");
            }
        }
    }
    let _ = nix::unistd::unlinkat(
        dir_fd.as_fd(),
        "bangerd-root.sock",
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    // Bound through the directory descriptor (the kernel resolves the fd
    // link to the directory we checked), created 0600 by the umask, handed
    // to the owner without following links.
    let bind_path = PathBuf::from(format!(
        "/proc/self/fd/{}/bangerd-root.sock",
        dir_fd.as_raw_fd()
    ));
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&bind_path);
    nix::sys::stat::umask(old);
    let socket = dir.join("bangerd-root.sock");
    let listener = bound.map_err(|e| err(format!("binding {}", socket.display()), e))?;
    nix::unistd::fchownat(
        dir_fd.as_fd(),
        "bangerd-root.sock",
        Some(nix::unistd::Uid::from_raw(opts.owner_uid)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| err(format!("chown {}", socket.display()), e.into()))?;
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
        dir_fd,
        _net_owner: net_owner,
        listener,
        socket,
        owner_uid: opts.owner_uid,
        net,
        supervisor,
        shutdown: Arc::new(Notify::new()),
        cgroups: vmm_ops::prepare_cgroups(opts.owner_uid),
        _lock: lock,
    }))
}

/// Opens the owner's runtime directory without following a symlink at its
/// last component and checks it: a directory owned by the owner, writable
/// by nobody else. It is never created here (bangerd makes it, as the
/// owner): root making directories along an owner-chosen path is a way to
/// plant them anywhere.
fn open_runtime_dir(dir: &Path, owner: u32) -> Result<OwnedFd, HelperError> {
    if !dir.is_absolute() {
        return Err(HelperError(format!(
            "{} is not an absolute path",
            dir.display()
        )));
    }
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|e| {
        HelperError(format!(
            "cannot open the runtime directory {} ({e}): it must be a real directory (not a symlink) that bangerd created; start banger as uid {owner} first",
            dir.display()
        ))
    })?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| HelperError(format!("fstat: {e}")))?;
    if st.st_uid != owner || st.st_mode & 0o022 != 0 {
        return Err(HelperError(format!(
            "{} is owned by uid {} with mode {:o}; it must belong to uid {owner} and be writable only by it; refusing to use it",
            dir.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// Banger taps in this namespace that belong to another uid: (tap, uid).
fn foreign_taps(owner: u32) -> Result<Vec<(String, u32)>, HelperError> {
    use crate::host::net::{is_banger_tap, tap_owner, IpCommand, NetOps};
    let links = IpCommand
        .list_links()
        .map_err(|e| HelperError(format!("listing the network interfaces: {e}")))?;
    Ok(links
        .into_iter()
        .filter(|l| is_banger_tap(&l.name) && l.kind.as_deref() == Some("tun"))
        .filter(|l| tap_owner(l) != owner)
        .map(|l| {
            let uid = tap_owner(&l);
            (l.name, uid)
        })
        .collect())
}

/// Where helpers record which owner a network namespace belongs to.
const NET_CLAIMS: &str = crate::host::ROOT_RUNTIME_DIR;

/// Claims this network namespace for `owner`: every banger owner uses the
/// same bridge name, subnet and MAC range, so two owners in one namespace
/// would hand out each other's addresses and see each other's taps and
/// rules. Helpers of the same owner share the claim (a shared lock held
/// for their lifetime); another owner's helper is refused with who holds
/// it. The claim goes away with the last holder, even a killed one.
fn claim_network(owner: u32) -> Result<LockFile, HelperError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let err = |what: &str, e: std::io::Error| HelperError(format!("{what}: {e}"));
    crate::fsutil::root_private_dir(Path::new(NET_CLAIMS))
        .map_err(|e| err(&format!("creating {NET_CLAIMS}"), e))?;
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| err("reading our network namespace", e))?
        .ino();
    let open = |suffix: &str| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(Path::new(NET_CLAIMS).join(format!("net-{ns}.{suffix}")))
            .map_err(|e| err("opening the network claim", e))
    };
    // Claims are decided one at a time.
    let _deciding = Flock::lock(open("decide")?, FlockArg::LockExclusive)
        .map_err(|(_, e)| err("locking the network claim", e.into()))?;
    let claim = open("owner")?;
    let claim = match Flock::lock(claim, FlockArg::LockExclusiveNonblock) {
        Ok(mut f) => {
            // Nobody holds it, but another owner's helper may have stopped
            // with its VMs running: their taps (and addresses, NAT rules)
            // are still here, and this owner would hand out the same ones.
            if let Some((tap, uid)) = foreign_taps(owner)?.into_iter().next() {
                return Err(HelperError(format!(
                    "this host's network (namespace {ns}) still has banger taps of uid {uid} (e.g. {tap}): that user's VMs may be running; banger serves one user per host, so stop them first (as uid {uid}: banger vm list, then banger vm stop NAME), or if none runs remove the leftovers (as root: ip link del {tap}), or run yours in another network namespace"
                )));
            }
            f.set_len(0).map_err(|e| err("writing the claim", e))?;
            f.rewind().map_err(|e| err("writing the claim", e))?;
            write!(f, "{owner}").map_err(|e| err("writing the claim", e))?;
            f.unlock()
                .map_err(|(_, e)| err("releasing the claim", e.into()))?
        }
        Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            f.rewind().map_err(|e| err("reading the claim", e))?;
            (&mut f)
                .take(32)
                .read_to_string(&mut holder)
                .map_err(|e| err("reading the claim", e))?;
            if holder.trim() != owner.to_string() {
                return Err(HelperError(format!(
                    "this host's network (namespace {ns}) is already used by banger for uid {}: banger serves one user per host (every user would get the same bridge, addresses and MACs); stop that user's banger (banger daemon stop, as uid {}) or run yours in another network namespace",
                    holder.trim(),
                    holder.trim()
                )));
            }
            f
        }
        Err((_, e)) => return Err(err("locking the network claim", e.into())),
    };
    LockFile::try_lock_shared(claim)
        .map_err(|e| err("holding the network claim", e))?
        .ok_or_else(|| HelperError("the network claim changed hands; retry".into()))
}

/// Root-filesystem builds bangerd-root runs at once: each copies up to
/// gigabytes as root (outside the owner's quotas) and runs mmdebstrap.
pub const MAX_BUILDS: usize = 1;

/// The build slots: a build that finds none is refused at once (Busy),
/// never queued behind the others as root.
#[derive(Clone)]
pub struct BuildSlots(Arc<tokio::sync::Semaphore>);

impl BuildSlots {
    pub fn new(n: usize) -> BuildSlots {
        BuildSlots(Arc::new(tokio::sync::Semaphore::new(n)))
    }

    pub fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, RpcError> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            RpcError::new(
                crate::protocol::ErrorCode::Busy,
                format!(
                    "bangerd-root is already building {MAX_BUILDS} root filesystem(s); wait for it to finish and retry"
                ),
            )
        })
    }
}

#[derive(Clone)]
struct PrivHandler {
    build: BuildEnv,
    builds: BuildSlots,
    runtime_dir: PathBuf,
    owner_gid: u32,
    owner_uid: u32,
    net: Arc<Slot<NetMsg>>,
    shutdown: Arc<Notify>,
    cgroups: Option<Arc<crate::host::cgroup::Layout>>,
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
        let started = std::time::Instant::now();
        let res = match call.request {
            PrivRequest::Ping => Ok(PrivReply::Pong {
                pid: std::process::id(),
                version: crate::version::version().into(),
                owner_uid: self.owner_uid,
            }),
            PrivRequest::Shutdown => {
                self.shutdown.notify_one();
                Ok(PrivReply::Done)
            }
            PrivRequest::BuildRootfs(spec) => {
                let _slot = self.builds.take()?;
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
                tracing::info!(request_id = %call.request_id, build = %spec.build_id, recipe = %spec.recipe, "build requested");
                match tokio::task::spawn_blocking(move || build_rootfs(&env, &spec, &cancel)).await
                {
                    Ok(r) => r.map(PrivReply::Built).map_err(RpcError::from),
                    Err(e) => Err(RpcError::failed(format!("build task failed: {e}"))),
                }
            }
            PrivRequest::LaunchVmm(spec) => {
                let (owner, gid, rt) = (self.owner_uid, self.owner_gid, self.runtime_dir.clone());
                let cgroups = self.cgroups.clone();
                tracing::info!(request_id = %call.request_id, vm_id = %spec.vm_id, kind = spec.kind.as_str(), "launching VMM");
                tokio::task::spawn_blocking(move || {
                    vmm_ops::launch(&spec, owner, gid, &rt, cgroups)
                })
                .await?
                .map(|pid| PrivReply::Launched { pid })
            }
            PrivRequest::SignalVmm { pid, signal } => {
                tracing::info!(request_id = %call.request_id, pid, %signal, "signalling VMM");
                vmm_ops::signal(pid, signal, self.owner_uid, &self.runtime_dir)
                    .map(|_| PrivReply::Done)
            }
            PrivRequest::ListVmms => {
                let (owner, rt) = (self.owner_uid, self.runtime_dir.clone());
                let cgroups = self.cgroups.clone();
                Ok(PrivReply::Vmms(
                    tokio::task::spawn_blocking(move || {
                        // Groups of VMMs that ended while no helper waited
                        // for them go now (a live VMM's group is kept).
                        if let Some(l) = cgroups {
                            l.sweep(owner);
                        }
                        vmm_ops::list(owner, &rt)
                    })
                    .await?,
                ))
            }
            req @ (PrivRequest::EnsureBridge { .. }
            | PrivRequest::CreateTap { .. }
            | PrivRequest::DeleteTap { .. }
            | PrivRequest::ListTaps
            | PrivRequest::EnableNat { .. }
            | PrivRequest::LinkVms { .. }
            | PrivRequest::DisableNat { .. }
            | PrivRequest::PoliceEgress { .. }
            | PrivRequest::GuardTap { .. }
            | PrivRequest::ListNat
            | PrivRequest::RouteDns { .. }) => {
                let net = self
                    .net
                    .get()
                    .ok_or_else(|| RpcError::failed("the network actor is restarting; retry"))?;
                ractor::call_t!(net, |reply| NetMsg::Exec(Box::new(req), reply), 60_000)
                    .map_err(|e| RpcError::failed(format!("network actor: {e}")))?
            }
        };
        match &res {
            Ok(_) => tracing::info!(
                request_id = %call.request_id,
                method,
                took_ms = started.elapsed().as_millis() as u64,
                "done"
            ),
            Err(e) => {
                tracing::warn!(request_id = %call.request_id, method, "refused or failed: {}", e.message)
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
            builds: BuildSlots::new(MAX_BUILDS),
            runtime_dir: self.runtime_dir.clone(),
            owner_gid,
            owner_uid: owner,
            net: self.net.clone(),
            shutdown: self.shutdown.clone(),
            cgroups: self.cgroups.clone(),
        };
        crate::protocol::conn::serve_until_shutdown(
            self.listener,
            move |uid| uid == owner,
            handler,
            self.shutdown.clone(),
        )
        .await;
        tracing::info!("bangerd-root stopping");
        let _ = nix::unistd::unlinkat(
            self.dir_fd.as_fd(),
            "bangerd-root.sock",
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let _ = &self.socket;
        // Our work area is empty unless a build is still being torn down.
        let _ = std::fs::remove_dir(&self.build.work_root);
        self.supervisor.stop(Some("shutdown".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_beyond_the_slots_is_refused_at_once_and_a_slot_comes_back() {
        let slots = BuildSlots::new(MAX_BUILDS);
        let held: Vec<_> = (0..MAX_BUILDS).map(|_| slots.take().unwrap()).collect();
        let e = slots.take().unwrap_err();
        assert_eq!(e.code, crate::protocol::ErrorCode::Busy);
        assert!(e.message.contains("wait for it"), "{}", e.message);
        drop(held);
        let _slot = slots.take().expect("a slot again once a build ended");
    }
}
