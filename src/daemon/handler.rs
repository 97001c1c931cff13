//! The one `match` that dispatches every CLI request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use super::run::RunEnd;
use super::{services, vms};
use crate::actors::helper_link::HelperLinkMsg;
use crate::actors::Slots;
use crate::domain::views::Exit;
use crate::ops::{images, kernels, snapshots, views, Ctx, OpError};
use crate::protocol::cli::{DaemonStatus, Event, HelperState, Reply, Request};
use crate::protocol::conn::{Handler, Peer};
use crate::protocol::{Call, RpcError};

/// An operation's result as its reply; its failure as its wire code (the
/// one mapping is `From<OpError> for RpcError`, errors.rs).
fn wire<T>(r: Result<T, OpError>, reply: impl FnOnce(T) -> Reply) -> Result<Reply, RpcError> {
    r.map(reply).map_err(RpcError::from)
}

fn done(_: ()) -> Reply {
    Reply::Done
}

fn exit(e: Exit) -> Reply {
    Reply::Exit {
        code: e.code,
        message: e.message,
    }
}

/// Serves CLI requests.
#[derive(Clone)]
pub struct DaemonHandler {
    pub ctx: Arc<Ctx>,
    pub slots: Arc<Slots>,
    pub started: Instant,
    pub shutdown: Arc<Notify>,
    pub socket: PathBuf,
    /// The API's loopback port (and its token).
    pub web: Arc<super::api::Web>,
    /// Every watched call's stages, for `/v1/events`.
    pub activity: Arc<super::activity::Activity>,
}

impl DaemonHandler {
    async fn status(&self) -> Result<Reply, RpcError> {
        let helper = match self.slots.helper.get() {
            Some(link) => ractor::call_t!(link, HelperLinkMsg::Status, 8000).unwrap_or_else(|e| {
                HelperState::NotConnected {
                    reason: format!("the helper link did not answer: {e}"),
                }
            }),
            None => HelperState::NotConnected {
                reason: "the helper link is restarting".into(),
            },
        };
        let vm_count = self.ctx.store.list_vms()?.len() as u32;
        Ok(Reply::Status(DaemonStatus {
            pid: std::process::id(),
            version: crate::version::version().into(),
            commit: crate::version::COMMIT.into(),
            protocol_version: crate::protocol::PROTOCOL_VERSION,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            socket: self.socket.display().to_string(),
            store: self.ctx.store.path().display().to_string(),
            system_mode: self.ctx.layout.system,
            vm_count,
            helper,
        }))
    }

    async fn vm_list(&self) -> Result<Reply, RpcError> {
        let reg = super::requests::registry(&self.slots)?;
        let vms = ractor::call_t!(
            reg,
            crate::actors::vm_registry::RegistryMsg::List,
            super::requests::READ_MS
        )
        .map_err(|e| RpcError::failed(format!("listing VMs: {e}")))??;
        let board = &self.ctx.guests;
        Ok(Reply::Vms(
            vms.iter()
                .map(|r| {
                    let mut v =
                        views::vm_seen(r, &board.get(&r.id), self.ctx.timeouts.unresponsive);
                    v.links = views::link_names(r, &vms);
                    v
                })
                .collect(),
        ))
    }
}

impl DaemonHandler {
    /// Requests about images, kernels and snapshots: `ops` called directly.
    async fn artifacts(
        &self,
        req: Request,
        events: mpsc::Sender<Event>,
    ) -> Result<Reply, RpcError> {
        let ctx = &self.ctx;
        match req {
            Request::KernelPull {
                source,
                name,
                version,
            } => wire(
                kernels::pull(ctx.clone(), source, name, version, events).await,
                Reply::Kernel,
            ),
            Request::KernelImport { name, from } => wire(
                kernels::import(ctx.clone(), name, from).await,
                Reply::Kernel,
            ),
            Request::KernelList => wire(kernels::list(ctx), Reply::Kernels),
            Request::KernelShow { name } => wire(kernels::show(ctx, &name), Reply::Kernel),
            Request::KernelDelete { name } => wire(kernels::delete(ctx, &name), done),
            Request::ImageBuild { name, rebuild } => wire(
                images::build(ctx.clone(), name, rebuild, events).await,
                Reply::Image,
            ),
            Request::ImageImport { file, name } => {
                wire(images::import(ctx.clone(), file, name).await, Reply::Image)
            }
            Request::ImageExport { name, file } => {
                let out = file.clone();
                wire(images::export(ctx.clone(), name, file).await, |bytes| {
                    Reply::Exported { file: out, bytes }
                })
            }
            Request::ImageList => wire(images::list(ctx), Reply::Images),
            Request::ImageShow { name } => wire(images::show(ctx, &name), Reply::Image),
            Request::ImageDelete { name } => wire(images::delete(ctx, &name), done),
            Request::ImagePromote { name } => wire(images::promote(ctx, &name), Reply::Image),
            Request::SnapshotList => wire(snapshots::list(ctx), Reply::Snapshots),
            Request::SnapshotShow { name } => wire(snapshots::show(ctx, &name), Reply::Snapshot),
            Request::SnapshotDelete { name } => wire(snapshots::delete(ctx, &name), done),
            Request::SnapshotPrune { days } => wire(snapshots::prune(ctx, days), Reply::Pruned),
            Request::ImagePull {
                reference,
                name,
                insecure,
            } => wire(
                images::pull(ctx.clone(), reference, name, insecure, events).await,
                Reply::Image,
            ),
            Request::ImageRegister {
                name,
                rootfs,
                kernel,
            } => wire(
                images::register(ctx.clone(), name, rootfs, kernel, events).await,
                Reply::Image,
            ),
            Request::ImageCachePrune { dry_run } => wire(
                images::cache_prune(ctx.clone(), dry_run).await,
                Reply::CachePruned,
            ),

            other => Err(misrouted(&other)),
        }
    }

    /// Requests about one VM (and `vm run`): through its actor.
    async fn vm_request(
        &self,
        req: Request,
        events: mpsc::Sender<Event>,
        inputs: crate::protocol::conn::Inputs,
    ) -> Result<Reply, RpcError> {
        let (ctx, slots) = (&self.ctx, &self.slots);
        match req {
            Request::VmShow { name } => wire(vms::show(ctx, slots, &name).await, Reply::Vm),
            Request::VmCreate(spec) => wire(
                vms::create(ctx.clone(), slots.clone(), spec, events).await,
                Reply::Vm,
            ),
            Request::VmStart { name } => wire(vms::start(slots, &name, events).await, Reply::Vm),
            Request::VmStop { name } => wire(vms::stop(slots, &name, events).await, Reply::Vm),
            Request::VmRestart { name } => {
                wire(vms::restart(slots, &name, events).await, Reply::Vm)
            }
            Request::VmKill { name, signal } => {
                wire(vms::kill(slots, &name, signal).await, Reply::Vm)
            }
            Request::VmDelete { name, id } => wire(vms::delete(slots, &name, id).await, done),
            Request::VmPrune => wire(vms::prune(ctx, slots).await, Reply::Pruned),
            Request::VmSet {
                name,
                vcpu,
                memory_mib,
                nat,
                disk_bytes,
                egress,
            } => {
                let c = crate::ops::vms::VmChanges {
                    vcpu,
                    memory_mib,
                    nat,
                    disk_bytes,
                    egress,
                };
                wire(vms::set(slots, &name, c).await, Reply::Vm)
            }
            Request::VmLogs { name } => {
                wire(vms::logs(ctx, slots, &name).await, |(serial, vmm)| {
                    Reply::Logs { serial, vmm }
                })
            }
            Request::VmExec {
                name,
                argv,
                cwd,
                env,
                tty,
                stdin,
                auto_prepare,
            } => {
                let how = vms::ExecHow {
                    cwd,
                    env,
                    tty,
                    stdin: stdin.then_some(inputs),
                    auto_prepare,
                };
                wire(vms::exec(ctx, slots, &name, argv, how, events).await, exit)
            }
            Request::VmPing { name } => wire(vms::ping(slots, &name).await, |rtt| Reply::Ping {
                rtt_us: rtt.as_micros() as u64,
            }),
            Request::WorkspacePrepare { name, spec } => wire(
                vms::prepare(slots, &name, spec, events).await,
                Reply::Workspace,
            ),
            Request::WorkspaceExport { name, base_commit } => {
                wire(vms::export(slots, &name, base_commit, events).await, done)
            }
            Request::VmSsh { name } => wire(vms::ssh(slots, &name).await, Reply::Ssh),
            Request::VmSnapshot {
                name,
                snapshot,
                stop,
                auto,
                scope,
            } => wire(
                vms::snapshot(slots, &name, snapshot, stop, auto, scope, events).await,
                Reply::Snapshot,
            ),
            Request::VmRun(spec) => wire(
                super::run::run(ctx.clone(), slots.clone(), *spec, events, inputs).await,
                |end| match end {
                    RunEnd::Exit(e) => exit(e),
                    RunEnd::Vm(v) => Reply::Vm(*v),
                },
            ),
            other => Err(misrouted(&other)),
        }
    }
}

fn misrouted(r: &Request) -> RpcError {
    RpcError::failed(format!(
        "{} was routed to the wrong handler (a banger bug)",
        r.method()
    ))
}

impl Handler<Request, Event, Reply> for DaemonHandler {
    async fn handle(
        &self,
        peer: Peer,
        call: Call<Request>,
        events: mpsc::Sender<Event>,
        inputs: crate::protocol::conn::Inputs,
    ) -> Result<Reply, RpcError> {
        let method = call.request.method();
        tracing::debug!(request_id = %call.request_id, uid = peer.uid, method, "request");
        let watched = super::activity::Activity::watched(method).then(|| super::activity::Call {
            request_id: call.request_id.clone(),
            method,
            target: super::activity::target(&call.request),
        });
        let events = match &watched {
            Some(w) => self.activity.tap(w.clone(), events),
            None => events,
        };
        let (ctx, slots) = (&self.ctx, &self.slots);
        let res = match call.request {
            Request::Ping => Ok(Reply::Pong),
            Request::Status => self.status().await,
            Request::Shutdown => {
                self.shutdown.notify_one();
                Ok(Reply::ShuttingDown {
                    pid: std::process::id(),
                })
            }
            Request::VmList => self.vm_list().await,
            Request::VmPorts { name } => services::ports(ctx, slots, &name).await,
            Request::VmStats { name } => services::vm_stats(ctx, slots, &name).await,
            Request::VmHealth { name } => services::health(ctx, slots, &name).await,
            Request::Dns => services::dns(slots).await,
            Request::VmEgress { name } => services::egress(ctx, slots, &name).await,
            Request::SshConfig => services::ssh_config(ctx),
            Request::Dashboard => {
                let a = self.web.ensure(self).await?;
                Ok(Reply::Dashboard {
                    url: self.web.url(a),
                    token: self.web.token().to_string(),
                })
            }
            #[cfg(feature = "test-hooks")]
            Request::TestHook(h) => services::test_hook(slots, h).await,
            Request::WorkspacePlan(spec) => {
                wire(crate::ops::workspace::plan(spec).await, |(text, notice)| {
                    Reply::Plan { text, notice }
                })
            }
            r @ (Request::KernelPull { .. }
            | Request::KernelImport { .. }
            | Request::KernelList
            | Request::KernelShow { .. }
            | Request::KernelDelete { .. }
            | Request::ImageBuild { .. }
            | Request::ImageImport { .. }
            | Request::ImageExport { .. }
            | Request::ImageList
            | Request::ImageShow { .. }
            | Request::ImageDelete { .. }
            | Request::ImagePromote { .. }
            | Request::SnapshotList
            | Request::SnapshotShow { .. }
            | Request::SnapshotDelete { .. }
            | Request::SnapshotPrune { .. }
            | Request::ImagePull { .. }
            | Request::ImageRegister { .. }
            | Request::ImageCachePrune { .. }) => self.artifacts(r, events).await,
            r => self.vm_request(r, events, inputs).await,
        };
        if let Err(e) = &res {
            tracing::info!(request_id = %call.request_id, method, code = %e.code, "request failed: {}", e.message);
        }
        if let Some(w) = watched {
            self.activity.end(w, &res);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::vm_registry::VmRegistry;
    use crate::ops::testing::Fakes;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vm_show_answers_within_100ms_while_the_vm_boots() {
        let f = Fakes::new();
        f.artifacts();
        let mut rec = f.vm("busy", false);
        // No vsock bridge for this kind; the fake driver boots at once and
        // the agent never answers, so the start runs for the boot deadline.
        rec.vmm = crate::domain::VmmKind::Firecracker;
        f.ctx.store.put_vm(&rec).unwrap();
        let slots = Arc::new(Slots::default());
        let (reg, _) = ractor::Actor::spawn(None, VmRegistry { ctx: f.ctx.clone() }, ())
            .await
            .unwrap();
        slots.registry.set(Some(reg));
        let h = DaemonHandler {
            ctx: f.ctx.clone(),
            slots: slots.clone(),
            started: Instant::now(),
            shutdown: Arc::new(Notify::new()),
            socket: PathBuf::from("/nonexistent"),
            web: Arc::new(crate::daemon::api::Web::new(None)),
            activity: Default::default(),
        };
        let call = |request| Call {
            request_id: "t".into(),
            request,
        };
        let peer = Peer {
            uid: 0,
            gid: 0,
            pid: None,
        };
        let (tx, _rx) = mpsc::channel(1024);
        let starter = {
            let h = h.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (_in, inputs) = mpsc::channel(1);
                h.handle(
                    peer,
                    call(Request::VmStart {
                        name: "busy".into(),
                    }),
                    tx,
                    inputs,
                )
                .await
            })
        };
        let mut seen_starting = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !starter.is_finished() {
            assert!(Instant::now() < deadline, "the start never ended");
            let t = Instant::now();
            let r = h
                .handle(
                    peer,
                    call(Request::VmShow {
                        name: "busy".into(),
                    }),
                    tx.clone(),
                    mpsc::channel(1).1,
                )
                .await
                .unwrap();
            let took = t.elapsed();
            assert!(took < Duration::from_millis(100), "vm show took {took:?}");
            if let Reply::Vm(v) = r {
                if v.state == crate::domain::VmState::Starting {
                    seen_starting += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            seen_starting > 10,
            "vm show ran during the start ({seen_starting} times)"
        );
        let e = starter.await.unwrap().unwrap_err();
        assert!(e.message.contains("did not answer"), "{}", e.message);
    }
}
