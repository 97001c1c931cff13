//! `NetActor`: bridge, tap and NAT operations, one at a time (two `ip` runs
//! on the same device must not interleave). The actor hands each request to
//! its worker task, which runs them in order on the blocking pool: the
//! mailbox never waits on a process.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::host::net::{self, NetOps};
use crate::protocol::helper::{PrivReply, PrivRequest, TapInfo};
use crate::protocol::RpcError;

type Reply = RpcReplyPort<Result<PrivReply, RpcError>>;

/// Messages to the [`NetActor`].
pub enum NetMsg {
    /// Executes a network request (EnsureBridge, CreateTap, DeleteTap,
    /// ListTaps, EnableNat, DisableNat, LinkVms), after every earlier one.
    Exec(Box<PrivRequest>, Reply),
}

/// The host seam and the owner uid taps are created for.
pub struct NetActor {
    pub ops: Arc<dyn NetOps>,
    pub owner_uid: u32,
}

fn nat_request_ok(vm_id: &str, ip: std::net::Ipv4Addr, bridge: &str) -> bool {
    let id_ok = vm_id.len() == 16 && vm_id.chars().all(|c| c.is_ascii_hexdigit());
    id_ok && net::is_banger_bridge(bridge) && ip.is_private()
}

/// A policed VM's redirect to the daemon's egress proxy.
fn police(
    ops: &dyn NetOps,
    vm_id: &str,
    ip: std::net::Ipv4Addr,
    bridge: &str,
    port: u16,
) -> Result<PrivReply, RpcError> {
    if !nat_request_ok(vm_id, ip, bridge) || port < 1024 {
        return Err(RpcError::bad_request(format!(
            "refusing egress rules for {vm_id:?} ({ip}) on {bridge:?} to port {port}: needs a banger VM id, a private address, a banger bridge and an unprivileged port"
        )));
    }
    net::guest_address_ok(ops, bridge, ip, &format!("VM {vm_id}")).map_err(RpcError::from)?;
    crate::host::nat::police(vm_id, ip, bridge, port)
        .map(|_| PrivReply::Done)
        .map_err(RpcError::from)
}

/// Runs one request against `ops` (blocking).
pub fn execute(ops: &dyn NetOps, owner_uid: u32, req: PrivRequest) -> Result<PrivReply, RpcError> {
    match req {
        PrivRequest::EnsureBridge {
            name,
            address,
            prefix_len,
            dns_port,
        } => {
            net::ensure_bridge(ops, &name, address, prefix_len).map_err(RpcError::from)?;
            ops.guard_bridge(&name).map_err(RpcError::from)?;
            ops.guard_dns(&name, address, dns_port)
                .map_err(RpcError::from)?;
            Ok(PrivReply::Done)
        }
        PrivRequest::GuardTap { name, ip, mac } => {
            if !ip.is_private() || !crate::host::firewall::valid_mac(&mac) {
                return Err(RpcError::bad_request(format!(
                    "refusing to bind tap {name:?} to {ip} {mac:?}: needs a private address and a MAC"
                )));
            }
            let link = net::owned_tap(ops, &name, owner_uid).map_err(RpcError::from)?;
            net::tap_address_ok(ops, &link, ip).map_err(RpcError::from)?;
            // Taps made by an older banger were not isolated.
            if !link.isolated {
                ops.isolate_port(&name).map_err(RpcError::from)?;
            }
            ops.guard_tap(&name, ip, &mac).map_err(RpcError::from)?;
            Ok(PrivReply::Done)
        }
        PrivRequest::RouteDns {
            bridge,
            address,
            port,
            on,
        } => {
            if !net::is_banger_bridge(&bridge) || !address.is_private() || (on && port == 0) {
                return Err(RpcError::bad_request(format!(
                    "refusing resolver routing for {bridge:?} via {address}:{port}: needs a banger bridge, a private address and a port"
                )));
            }
            let r = if on {
                crate::host::resolver::route(&bridge, address, port)
            } else {
                crate::host::resolver::unroute(&bridge)
            };
            r.map(|(routed, detail)| PrivReply::Resolver { routed, detail })
                .map_err(RpcError::from)
        }
        PrivRequest::ListNat => crate::host::nat::tagged_vms()
            .map(PrivReply::NatVms)
            .map_err(RpcError::from),
        PrivRequest::CreateTap { name, bridge } => net::create_tap(ops, &name, &bridge, owner_uid)
            .map(|_| PrivReply::Done)
            .map_err(RpcError::from),
        PrivRequest::DeleteTap { name } => net::delete_tap(ops, &name, owner_uid)
            .map(|_| PrivReply::Done)
            .map_err(RpcError::from),
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
            .map_err(RpcError::from),
        PrivRequest::EnableNat { vm_id, ip, bridge } | PrivRequest::DisableNat { vm_id, ip, bridge }
            if !nat_request_ok(&vm_id, ip, &bridge) =>
        {
            Err(RpcError::bad_request(format!(
                "refusing NAT for vm {vm_id:?} ip {ip} on {bridge:?}: needs a banger VM id, a private address and a banger bridge"
            )))
        }
        PrivRequest::EnableNat { vm_id, ip, bridge } => crate::host::nat::enable(&vm_id, ip, &bridge)
            .map(|_| PrivReply::Done)
            .map_err(RpcError::from),
        PrivRequest::LinkVms {
            bridge,
            a_id,
            a_ip,
            b_id,
            b_ip,
        } => {
            if !nat_request_ok(&a_id, a_ip, &bridge) || !nat_request_ok(&b_id, b_ip, &bridge) || a_ip == b_ip {
                return Err(RpcError::bad_request(format!(
                    "refusing a link of {a_id:?} ({a_ip}) and {b_id:?} ({b_ip}) on {bridge:?}: needs two banger VM ids, two private addresses and a banger bridge"
                )));
            }
            for (id, ip) in [(&a_id, a_ip), (&b_id, b_ip)] {
                net::guest_address_ok(ops, &bridge, ip, &format!("VM {id}")).map_err(RpcError::from)?;
            }
            crate::host::nat::link((&a_id, a_ip), (&b_id, b_ip), &bridge)
                .map(|_| PrivReply::Done)
                .map_err(RpcError::from)
        }
        PrivRequest::PoliceEgress {
            vm_id,
            ip,
            bridge,
            port,
        } => police(ops, &vm_id, ip, &bridge, port),
        PrivRequest::DisableNat { vm_id, .. } => crate::host::nat::disable(&vm_id)
            .map(|_| PrivReply::Done)
            .map_err(RpcError::from),
        other => Err(RpcError::bad_request(format!(
            "{} is not a network operation",
            other.method()
        ))),
    }
}

/// The queue to the worker.
pub struct NetState {
    queue: mpsc::UnboundedSender<(Box<PrivRequest>, Reply)>,
}

impl Actor for NetActor {
    type Msg = NetMsg;
    type State = NetState;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<NetMsg>, _: ()) -> Result<NetState, ActorProcessingErr> {
        let (queue, mut rx) = mpsc::unbounded_channel::<(Box<PrivRequest>, Reply)>();
        let (ops, owner) = (self.ops.clone(), self.owner_uid);
        // Ends when the actor (and with it the sender) is gone.
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let ops = ops.clone();
                let res = tokio::task::spawn_blocking(move || execute(ops.as_ref(), owner, *req))
                    .await
                    .unwrap_or_else(|e| {
                        Err(RpcError::failed(format!("network operation panicked: {e}")))
                    });
                let _ = reply.send(res);
            }
        });
        Ok(NetState { queue })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NetMsg>,
        msg: NetMsg,
        state: &mut NetState,
    ) -> Result<(), ActorProcessingErr> {
        let NetMsg::Exec(req, reply) = msg;
        if let Err(mpsc::error::SendError((_, reply))) = state.queue.send((req, reply)) {
            let _ = reply.send(Err(RpcError::failed("the network worker stopped; retry")));
        }
        Ok(())
    }
}
