//! `NetActor`: bridge and tap operations, one at a time (two `ip` runs on the
//! same device must not interleave). Each runs on the blocking pool.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::host::net::{self, NetError, NetOps};
use crate::protocol::helper::{PrivReply, PrivRequest, TapInfo};
use crate::protocol::{ErrorCode, RpcError};

/// Messages to the [`NetActor`].
pub enum NetMsg {
    /// Executes a network request (EnsureBridge, CreateTap, DeleteTap, ListTaps).
    Exec(PrivRequest, RpcReplyPort<Result<PrivReply, RpcError>>),
}

/// The actor: the host seam and the owner uid taps are created for.
pub struct NetActor {
    pub ops: Arc<dyn NetOps>,
    pub owner_uid: u32,
}

fn to_rpc(e: NetError) -> RpcError {
    match e {
        NetError::Policy(p) => RpcError::new(ErrorCode::BadRequest, p.to_string()),
        NetError::Host(h) => RpcError::failed(h.to_string()),
    }
}

fn nat_request_ok(vm_id: &str, ip: std::net::Ipv4Addr, bridge: &str) -> bool {
    let id_ok = vm_id.len() == 16 && vm_id.chars().all(|c| c.is_ascii_hexdigit());
    id_ok && net::is_banger_bridge(bridge) && ip.is_private()
}

/// Runs one request against `ops` (blocking).
pub fn execute(ops: &dyn NetOps, owner_uid: u32, req: PrivRequest) -> Result<PrivReply, RpcError> {
    match req {
        PrivRequest::EnsureBridge {
            name,
            address,
            prefix_len,
        } => net::ensure_bridge(ops, &name, address, prefix_len)
            .map(|_| PrivReply::Done)
            .map_err(to_rpc),
        PrivRequest::CreateTap { name, bridge } => net::create_tap(ops, &name, &bridge, owner_uid)
            .map(|_| PrivReply::Done)
            .map_err(to_rpc),
        PrivRequest::DeleteTap { name } => net::delete_tap(ops, &name, owner_uid)
            .map(|_| PrivReply::Done)
            .map_err(to_rpc),
        PrivRequest::ListTaps => net::list_taps(ops, owner_uid)
            .map(|v| {
                PrivReply::Taps(
                    v.into_iter()
                        .map(|l| TapInfo {
                            name: l.name,
                            master: l.master,
                            up: l.up,
                        })
                        .collect(),
                )
            })
            .map_err(to_rpc),
        PrivRequest::EnableNat { vm_id, ip, bridge } | PrivRequest::DisableNat { vm_id, ip, bridge }
            if !nat_request_ok(&vm_id, ip, &bridge) =>
        {
            Err(RpcError::bad_request(format!(
                "refusing NAT for vm {vm_id:?} ip {ip} on {bridge:?}: needs a banger VM id, a private address and a banger bridge"
            )))
        }
        PrivRequest::EnableNat { vm_id, ip, bridge } => crate::host::nat::enable(&vm_id, ip, &bridge)
            .map(|_| PrivReply::Done)
            .map_err(|e| RpcError::failed(e.to_string())),
        PrivRequest::DisableNat { vm_id, .. } => crate::host::nat::disable(&vm_id)
            .map(|_| PrivReply::Done)
            .map_err(|e| RpcError::failed(e.to_string())),
        other => Err(RpcError::bad_request(format!(
            "{} is not a network operation",
            other.method()
        ))),
    }
}

impl Actor for NetActor {
    type Msg = NetMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<NetMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<NetMsg>,
        msg: NetMsg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let NetMsg::Exec(req, reply) = msg;
        let ops = self.ops.clone();
        let owner = self.owner_uid;
        // Awaiting here keeps operations strictly sequential; the thread pool
        // keeps the runtime responsive meanwhile.
        let res = tokio::task::spawn_blocking(move || execute(ops.as_ref(), owner, req))
            .await
            .unwrap_or_else(|e| Err(RpcError::failed(format!("network operation panicked: {e}"))));
        let _ = reply.send(res);
        Ok(())
    }
}
