//! The one `match` that dispatches every CLI request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use crate::actors::helper_link::HelperLinkMsg;
use crate::actors::vm_actor::VmMsg;
use crate::actors::vm_registry::RegistryMsg;
use crate::actors::Services;
use crate::protocol::cli::{DaemonStatus, Event, HelperState, Reply, Request};
use crate::protocol::conn::{Handler, Peer};
use crate::protocol::{Call, RpcError};

/// Serves CLI requests.
#[derive(Clone)]
pub struct DaemonHandler {
    pub services: Arc<Services>,
    pub started: Instant,
    pub shutdown: Arc<Notify>,
    pub socket: PathBuf,
}

const CALL_MS: u64 = 30_000;

fn actor_err(what: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::failed(format!("{what}: {e}"))
}

impl DaemonHandler {
    fn registry(&self) -> Result<ractor::ActorRef<RegistryMsg>, RpcError> {
        self.services.registry.get().ok_or_else(|| {
            RpcError::new(
                crate::protocol::ErrorCode::Busy,
                "the VM registry is restarting; retry in a moment",
            )
        })
    }

    async fn status(&self) -> Result<Reply, RpcError> {
        let helper = match self.services.helper.get() {
            Some(link) => ractor::call_t!(link, HelperLinkMsg::Status, 8000).unwrap_or_else(|e| {
                HelperState::NotConnected {
                    reason: format!("the helper link did not answer: {e}"),
                }
            }),
            None => HelperState::NotConnected {
                reason: "the helper link is restarting".into(),
            },
        };
        let vm_count = self
            .services
            .store
            .list_vms()
            .map(|v| v.len() as u32)
            .map_err(|e| RpcError::failed(e.to_string()))?;
        Ok(Reply::Status(DaemonStatus {
            pid: std::process::id(),
            version: crate::version::VERSION.into(),
            commit: crate::version::COMMIT.into(),
            protocol_version: crate::protocol::PROTOCOL_VERSION,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            socket: self.socket.display().to_string(),
            store: self.services.store.path().display().to_string(),
            system_mode: self.services.layout.system,
            vm_count,
            helper,
        }))
    }

    async fn vm_list(&self) -> Result<Reply, RpcError> {
        let reg = self.registry()?;
        let vms = ractor::call_t!(reg, RegistryMsg::List, CALL_MS)
            .map_err(|e| actor_err("listing VMs", e))??;
        Ok(Reply::Vms(vms.iter().map(|v| v.view()).collect()))
    }

    async fn vm_show(&self, name: &str) -> Result<Reply, RpcError> {
        crate::names::validate_vm_name(name).map_err(|e| RpcError::bad_request(e.to_string()))?;
        let reg = self.registry()?;
        let actor = ractor::call_t!(
            reg,
            |reply| RegistryMsg::Lookup {
                name: name.to_string(),
                reply
            },
            CALL_MS
        )
        .map_err(|e| actor_err("finding the VM", e))??;
        let rec = ractor::call_t!(actor, VmMsg::Get, CALL_MS)
            .map_err(|e| actor_err("reading the VM", e))?;
        Ok(Reply::Vm(rec.view()))
    }
}

impl Handler<Request, Event, Reply> for DaemonHandler {
    async fn handle(
        &self,
        peer: Peer,
        call: Call<Request>,
        events: mpsc::Sender<Event>,
    ) -> Result<Reply, RpcError> {
        let method = call.request.method();
        tracing::debug!(op_id = %call.op_id, uid = peer.uid, method, "request");
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
            Request::VmShow { name } => self.vm_show(&name).await,
            Request::KernelPull {
                source,
                name,
                version,
            } => super::kernels::pull(self.services.clone(), source, name, version, events).await,
            Request::KernelImport { name, from } => {
                super::kernels::import(self.services.clone(), name, from).await
            }
            Request::KernelList => super::kernels::list(&self.services),
            Request::KernelShow { name } => super::kernels::show(&self.services, &name),
            Request::KernelDelete { name } => super::kernels::delete(&self.services, &name),
            Request::ImageBuild { name, rebuild } => {
                super::images::build(self.services.clone(), name, rebuild, events).await
            }
            Request::ImageImport { file, name } => {
                super::images::import(self.services.clone(), file, name).await
            }
            Request::ImageExport { name, file } => {
                super::images::export(self.services.clone(), name, file).await
            }
            Request::ImageList => super::images::list(&self.services),
            Request::ImageShow { name } => super::images::show(&self.services, &name),
            Request::ImageDelete { name } => super::images::delete(&self.services, &name),
            Request::ImagePromote { name } => super::images::promote(&self.services, &name),
            Request::VmCreate(spec) => {
                super::vms::create(self.services.clone(), spec, events).await
            }
            Request::VmStart { name } => {
                super::vms::start(self.services.clone(), &name, events).await
            }
            Request::VmStop { name } => {
                super::vms::stop(self.services.clone(), &name, events).await
            }
            Request::VmRestart { name } => {
                super::vms::restart(self.services.clone(), &name, events).await
            }
            Request::VmKill { name, signal } => {
                super::vms::kill(self.services.clone(), &name, signal).await
            }
            Request::VmDelete { name } => super::vms::delete(self.services.clone(), &name).await,
            Request::VmPrune => super::vms::prune(self.services.clone()).await,
            Request::VmSet {
                name,
                vcpu,
                memory_mib,
                nat,
            } => super::vms::set(self.services.clone(), &name, vcpu, memory_mib, nat).await,
            Request::VmLogs { name } => super::vms::logs(self.services.clone(), &name).await,
            Request::VmExec {
                name,
                argv,
                cwd,
                auto_prepare,
            } => {
                super::vms::exec(
                    self.services.clone(),
                    &name,
                    argv,
                    cwd,
                    auto_prepare,
                    events,
                )
                .await
            }
            Request::WorkspacePrepare { name, spec } => {
                super::workspaces::prepare(self.services.clone(), &name, spec, events).await
            }
            Request::WorkspaceExport { name, base_commit } => {
                super::workspaces::export(self.services.clone(), &name, base_commit, events).await
            }
            Request::VmSsh { name } => super::vms::ssh(self.services.clone(), &name).await,
        };
        if let Err(e) = &res {
            tracing::info!(op_id = %call.op_id, method, code = %e.code, "request failed: {}", e.message);
        }
        res
    }
}
