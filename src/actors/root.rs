//! [`Privileged`] over the HelperLink: each typed operation of `ops` becomes
//! its wire request to bangerd-root, and the answer its typed result. A
//! helper error keeps its kind (`From<RpcError> for OpError`, errors.rs).

use std::net::Ipv4Addr;

use super::ActorHelper;
use crate::domain::Signal;
use crate::host::net::TapInfo;
use crate::image::build::{BuiltRootfs, RootfsSpec};
use crate::ops::{BoxFuture, Bridge, OpError, Privileged};
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::vmm::{LaunchSpec, VmmProcess};

impl ActorHelper {
    async fn ask(&self, request: PrivRequest) -> Result<PrivReply, OpError> {
        Ok(self.call(request).await?)
    }

    async fn done(&self, request: PrivRequest) -> Result<(), OpError> {
        self.ask(request).await.map(drop)
    }
}

fn unexpected(what: &str, reply: PrivReply) -> OpError {
    OpError::failed(format!(
        "bangerd-root answered {what} with {reply:?}; is it the same banger version? (banger doctor)"
    ))
}

impl Privileged for ActorHelper {
    fn ensure_bridge(&self, b: Bridge) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::EnsureBridge {
            name: b.name,
            address: b.address,
            prefix_len: b.prefix_len,
            dns_port: b.dns_port,
        }))
    }

    fn create_tap(&self, name: String, bridge: String) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::CreateTap { name, bridge }))
    }

    fn delete_tap(&self, name: String) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::DeleteTap { name }))
    }

    fn list_taps(&self) -> BoxFuture<'_, Result<Vec<TapInfo>, OpError>> {
        Box::pin(async move {
            match self.ask(PrivRequest::ListTaps).await? {
                PrivReply::Taps(t) => Ok(t),
                other => Err(unexpected("list_taps", other)),
            }
        })
    }

    fn guard_tap(
        &self,
        name: String,
        ip: Ipv4Addr,
        mac: String,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::GuardTap { name, ip, mac }))
    }

    fn nat(
        &self,
        on: bool,
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(if on {
            PrivRequest::EnableNat { vm_id, ip, bridge }
        } else {
            PrivRequest::DisableNat { vm_id, ip, bridge }
        }))
    }

    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<String>, OpError>> {
        Box::pin(async move {
            match self.ask(PrivRequest::ListNat).await? {
                PrivReply::NatVms(v) => Ok(v),
                other => Err(unexpected("list_nat", other)),
            }
        })
    }

    fn route_dns(
        &self,
        bridge: String,
        address: Ipv4Addr,
        port: u16,
        on: bool,
    ) -> BoxFuture<'_, Result<String, OpError>> {
        Box::pin(async move {
            let req = PrivRequest::RouteDns {
                bridge,
                address,
                port,
                on,
            };
            match self.ask(req).await? {
                PrivReply::Resolver { detail, .. } => Ok(detail),
                other => Err(unexpected("route_dns", other)),
            }
        })
    }

    fn build_rootfs(&self, spec: RootfsSpec) -> BoxFuture<'_, Result<BuiltRootfs, OpError>> {
        Box::pin(async move {
            match self.ask(PrivRequest::BuildRootfs(spec)).await? {
                PrivReply::Built(b) => Ok(b),
                other => Err(unexpected("build_rootfs", other)),
            }
        })
    }

    fn launch_vmm(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<u32, OpError>> {
        Box::pin(async move {
            match self.ask(PrivRequest::LaunchVmm(spec)).await? {
                PrivReply::Launched { pid } => Ok(pid),
                other => Err(unexpected("launch_vmm", other)),
            }
        })
    }

    fn signal_vmm(&self, pid: u32, signal: Signal) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::SignalVmm { pid, signal }))
    }

    fn list_vmms(&self) -> BoxFuture<'_, Result<Vec<VmmProcess>, OpError>> {
        Box::pin(async move {
            match self.ask(PrivRequest::ListVmms).await? {
                PrivReply::Vmms(v) => Ok(v),
                other => Err(unexpected("list_vmms", other)),
            }
        })
    }
}
