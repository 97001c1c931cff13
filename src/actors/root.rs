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

    /// `request`'s answer, taken out of its reply by `pick` (another reply
    /// is a version skew).
    async fn answer<T>(
        &self,
        request: PrivRequest,
        pick: fn(PrivReply) -> Result<T, PrivReply>,
    ) -> Result<T, OpError> {
        let what = request.method();
        pick(self.ask(request).await?).map_err(|other| unexpected(what, other))
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
        Box::pin(self.answer(PrivRequest::ListTaps, |r| match r {
            PrivReply::Taps(v) => Ok(v),
            other => Err(other),
        }))
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

    fn police(
        &self,
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
        port: u16,
    ) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::PoliceEgress {
            vm_id,
            ip,
            bridge,
            port,
        }))
    }

    fn link_vms(
        &self,
        bridge: String,
        a: (String, Ipv4Addr),
        b: (String, Ipv4Addr),
    ) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::LinkVms {
            bridge,
            a_id: a.0,
            a_ip: a.1,
            b_id: b.0,
            b_ip: b.1,
        }))
    }

    fn list_nat(&self) -> BoxFuture<'_, Result<Vec<String>, OpError>> {
        Box::pin(self.answer(PrivRequest::ListNat, |r| match r {
            PrivReply::NatVms(v) => Ok(v),
            other => Err(other),
        }))
    }

    fn route_dns(
        &self,
        bridge: String,
        address: Ipv4Addr,
        port: u16,
        on: bool,
    ) -> BoxFuture<'_, Result<String, OpError>> {
        let req = PrivRequest::RouteDns {
            bridge,
            address,
            port,
            on,
        };
        Box::pin(self.answer(req, |r| match r {
            PrivReply::Resolver { detail, .. } => Ok(detail),
            other => Err(other),
        }))
    }

    fn build_rootfs(&self, spec: RootfsSpec) -> BoxFuture<'_, Result<BuiltRootfs, OpError>> {
        Box::pin(self.answer(PrivRequest::BuildRootfs(spec), |r| match r {
            PrivReply::Built(v) => Ok(v),
            other => Err(other),
        }))
    }

    fn launch_vmm(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<u32, OpError>> {
        Box::pin(
            self.answer(PrivRequest::LaunchVmm(Box::new(spec)), |r| match r {
                PrivReply::Launched { pid } => Ok(pid),
                other => Err(other),
            }),
        )
    }

    fn signal_vmm(&self, pid: u32, signal: Signal) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(self.done(PrivRequest::SignalVmm { pid, signal }))
    }

    fn list_vmms(&self) -> BoxFuture<'_, Result<Vec<VmmProcess>, OpError>> {
        Box::pin(self.answer(PrivRequest::ListVmms, |r| match r {
            PrivReply::Vmms(v) => Ok(v),
            other => Err(other),
        }))
    }
}
