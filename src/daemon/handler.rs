//! The one `match` that dispatches every CLI request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use super::{services, vms};
use crate::actors::helper_link::HelperLinkMsg;
use crate::actors::Slots;
use crate::ops::{images, kernels, views, Ctx};
use crate::protocol::cli::{DaemonStatus, Event, HelperState, Reply, Request};
use crate::protocol::conn::{Handler, Peer};
use crate::protocol::{Call, RpcError};

/// Serves CLI requests.
#[derive(Clone)]
pub struct DaemonHandler {
    pub ctx: Arc<Ctx>,
    pub slots: Arc<Slots>,
    pub started: Instant,
    pub shutdown: Arc<Notify>,
    pub socket: PathBuf,
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
            version: crate::version::VERSION.into(),
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
                .map(|r| views::vm_seen(r, &board.get(&r.id), self.ctx.timeouts.unresponsive))
                .collect(),
        ))
    }
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
        tracing::debug!(op_id = %call.op_id, uid = peer.uid, method, "request");
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
            Request::VmShow { name } => vms::show(ctx, slots, &name).await,
            Request::KernelPull {
                source,
                name,
                version,
            } => kernels::pull(ctx.clone(), source, name, version, events).await,
            Request::KernelImport { name, from } => kernels::import(ctx.clone(), name, from).await,
            Request::KernelList => kernels::list(ctx),
            Request::KernelShow { name } => kernels::show(ctx, &name),
            Request::KernelDelete { name } => kernels::delete(ctx, &name),
            Request::ImageBuild { name, rebuild } => {
                images::build(ctx.clone(), name, rebuild, events).await
            }
            Request::ImageImport { file, name } => images::import(ctx.clone(), file, name).await,
            Request::ImageExport { name, file } => images::export(ctx.clone(), name, file).await,
            Request::ImageList => images::list(ctx),
            Request::ImageShow { name } => images::show(ctx, &name),
            Request::ImageDelete { name } => images::delete(ctx, &name),
            Request::ImagePromote { name } => images::promote(ctx, &name),
            Request::VmCreate(spec) => vms::create(ctx.clone(), slots.clone(), spec, events).await,
            Request::VmStart { name } => vms::start(slots, &name, events).await,
            Request::VmStop { name } => vms::stop(slots, &name, events).await,
            Request::VmRestart { name } => vms::restart(slots, &name, events).await,
            Request::VmKill { name, signal } => vms::kill(slots, &name, signal).await,
            Request::VmDelete { name, id } => vms::delete(slots, &name, id).await,
            Request::VmPrune => vms::prune(ctx, slots).await,
            Request::VmSet {
                name,
                vcpu,
                memory_mib,
                nat,
            } => vms::set(slots, &name, vcpu, memory_mib, nat).await,
            Request::VmLogs { name } => vms::logs(ctx, slots, &name).await,
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
                vms::exec(ctx, slots, &name, argv, how, events).await
            }
            Request::VmPing { name } => vms::ping(slots, &name).await,
            Request::WorkspacePrepare { name, spec } => {
                vms::prepare(slots, &name, spec, events).await
            }
            Request::WorkspaceExport { name, base_commit } => {
                vms::export(slots, &name, base_commit, events).await
            }
            Request::VmSsh { name } => vms::ssh(slots, &name).await,
            Request::VmPorts { name } => services::ports(ctx, slots, &name).await,
            Request::VmStats { name } => services::vm_stats(ctx, slots, &name).await,
            Request::VmHealth { name } => services::health(ctx, slots, &name).await,
            Request::Dns => services::dns(slots).await,
            Request::SshConfig => services::ssh_config(ctx),
            #[cfg(feature = "test-hooks")]
            Request::TestHook(h) => services::test_hook(slots, h).await,
            Request::VmSnapshot {
                name,
                snapshot,
                stop,
                auto,
                scope,
            } => vms::snapshot(slots, &name, snapshot, stop, auto, scope, events).await,
            Request::SnapshotList => crate::ops::snapshots::list(ctx),
            Request::SnapshotShow { name } => crate::ops::snapshots::show(ctx, &name),
            Request::SnapshotDelete { name } => crate::ops::snapshots::delete(ctx, &name),
            Request::SnapshotPrune { days } => crate::ops::snapshots::prune(ctx, days),
            Request::ImagePull {
                reference,
                name,
                insecure,
            } => images::pull(ctx.clone(), reference, name, insecure, events).await,
            Request::VmRun(spec) => {
                super::run::run(ctx.clone(), slots.clone(), *spec, events, inputs).await
            }
            Request::ImageCachePrune { dry_run } => images::cache_prune(ctx.clone(), dry_run)
                .await
                .map(Reply::CachePruned),
        };
        if let Err(e) = &res {
            tracing::info!(op_id = %call.op_id, method, code = %e.code, "request failed: {}", e.message);
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
        };
        let call = |request| Call {
            op_id: "t".into(),
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
