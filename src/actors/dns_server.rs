//! `DnsServer`: answers `<name>.vm` on the bridge address, and policed
//! guests' other names by their egress policy (`ops::egress`), whose TCP
//! proxy it runs on the same address and port (a supervised child of the
//! DaemonSupervisor; restarted with backoff when it fails).
//!
//! The socket lives in a task the actor owns: the task binds (retrying
//! until the bridge has its address), routes the host resolver through
//! bangerd-root once, then answers each packet with `ops::dns::answer`
//! from a table of the running VMs kept in memory and read again from the
//! store after any VM write (so names follow VM start, stop and delete at
//! once, and a flood of questions reads no store). When
//! the task ends for any reason the actor fails, and the supervisor starts
//! a fresh one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ops::egress::resolve::Question;
use crate::ops::Ctx;
use crate::protocol::cli::DnsView;

/// Messages to the [`DnsServer`].
pub enum DnsMsg {
    /// What it serves now.
    Status(RpcReplyPort<DnsView>),
    /// From the task: the socket is bound.
    Bound,
    /// From the task: what the host resolver routing did.
    Resolver(String),
    /// From the task's watcher: it ended.
    TaskEnded(String),
    /// Test hook: the handler panics.
    Panic,
    /// Test hook: the socket task panics.
    PanicTask,
}

pub struct DnsServer {
    pub ctx: Arc<Ctx>,
}

/// Aborts the socket task when dropped: the actor's state goes with the
/// actor however it ends (a panic included), and so does the socket.
struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct DnsState {
    task: Option<TaskGuard>,
    started_unix_ms: u64,
    crash: Arc<tokio::sync::Notify>,
    serving: bool,
    resolver: String,
}

/// The address and port the server listens on, if DNS is on.
pub fn listen_addr(ctx: &Ctx) -> Option<SocketAddr> {
    let n = &ctx.config.network;
    (n.dns_port != 0).then(|| SocketAddr::from((n.bridge_ip, n.dns_port)))
}

async fn serve(
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    me: ActorRef<DnsMsg>,
    crash: Arc<tokio::sync::Notify>,
) {
    // The bridge (and its address) appears with the first VM.
    let sock = loop {
        match tokio::net::UdpSocket::bind(addr).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(%addr, "DNS socket not bound yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let _ = me.cast(DnsMsg::Bound);
    tracing::info!(%addr, "answering <name>.vm");
    {
        let (ctx, me) = (ctx.clone(), me.clone());
        let n = ctx.config.network.clone();
        tokio::spawn(async move {
            let r = ctx
                .helper
                .route_dns(n.bridge.clone(), n.bridge_ip, n.dns_port, true)
                .await;
            let detail = match r {
                Ok(detail) => detail,
                Err(e) => format!(
                    "not routed ({e}); {}",
                    crate::host::resolver::manual_hint(n.bridge_ip, n.dns_port)
                ),
            };
            tracing::info!("host resolver: {detail}");
            let _ = me.cast(DnsMsg::Resolver(detail));
        });
    }
    // Policed guests' connections, on the same address and port (TCP).
    let proxy = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => panic!("egress proxy: binding {addr}/tcp: {e}"),
    };
    let _proxy = AbortOnDrop(tokio::spawn(crate::ops::egress::proxy::serve(
        ctx.clone(),
        proxy,
    )));
    let sock = Arc::new(sock);
    let upstreams = crate::ops::egress::resolve::upstreams(&ctx.config.egress.resolvers);
    let asking = Arc::new(tokio::sync::Semaphore::new(MAX_ASKING));
    let mut buf = vec![0u8; crate::ops::dns::MAX_PACKET + 1];
    let mut limit = crate::ops::dns::Limiter::new(crate::ops::dns::PER_SOURCE_PER_SEC);
    let mut table = crate::ops::egress::Running::default();
    let started = std::time::Instant::now();
    loop {
        let got = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = crash.notified() => panic!("test hook: the DNS socket task panics"),
        };
        let (n, from) = match got {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("DNS receive: {e}");
                continue;
            }
        };
        if !limit.allow(from.ip(), started.elapsed().as_secs()) {
            continue;
        }
        table.refresh(&ctx).await;
        let packet = &buf[..n];
        let policed = match from {
            SocketAddr::V4(a) => table
                .guest(*a.ip())
                .and_then(|g| Some((g.id.clone(), g.policy.clone()?))),
            SocketAddr::V6(_) => None,
        };
        let judged = policed
            .as_ref()
            .and_then(|(_, p)| crate::ops::egress::resolve::judge(packet, p));
        match (judged, policed) {
            (Some(Question::Allowed { msg, query, name }), Some((vm, _))) => {
                let Ok(slot) = asking.clone().try_acquire_owned() else {
                    continue;
                };
                let (ctx, sock, ups) = (ctx.clone(), sock.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let reply = match crate::ops::egress::resolve::ask(&query, &ups).await {
                        Ok(up) => {
                            let ips = crate::ops::egress::resolve::addresses(&up);
                            ctx.egress.resolved(&vm, &name, &ips);
                            crate::ops::egress::resolve::for_guest(&msg, &up)
                        }
                        Err(e) => {
                            tracing::info!(%name, "egress: resolving an allowed name: {e}");
                            crate::ops::egress::resolve::failed(&msg)
                        }
                    };
                    if let Some(r) = reply {
                        let _ = sock.send_to(&r, from).await;
                    }
                });
            }
            (judged, policed) => {
                if let (Some(Question::Refused { name }), Some((vm, _))) = (judged, policed) {
                    ctx.egress.refuse(&vm, "dns", Some(name), None);
                }
                let reply = crate::ops::dns::answer(packet, |name| table.address_of(name));
                if let Some(r) = reply {
                    let _ = sock.send_to(&r, from).await;
                }
            }
        }
    }
}

/// Allowed names being resolved on the host at once (more are dropped;
/// the guest's resolver asks again).
const MAX_ASKING: usize = 64;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for DnsServer {
    type Msg = DnsMsg;
    type State = DnsState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<DnsMsg>,
        _: (),
    ) -> Result<DnsState, ActorProcessingErr> {
        let crash = Arc::new(tokio::sync::Notify::new());
        let task = listen_addr(&self.ctx).map(|addr| {
            let h = tokio::spawn(serve(self.ctx.clone(), addr, myself.clone(), crash.clone()));
            let abort = h.abort_handle();
            let me = myself.clone();
            tokio::spawn(async move {
                let why = match h.await {
                    Ok(()) => "ended".to_string(),
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(_) => "was aborted".to_string(),
                };
                let _ = me.cast(DnsMsg::TaskEnded(why));
            });
            TaskGuard(abort)
        });
        Ok(DnsState {
            task,
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            crash,
            serving: false,
            resolver: "not routed yet".into(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DnsMsg>,
        msg: DnsMsg,
        state: &mut DnsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DnsMsg::Status(reply) => {
                let n = &self.ctx.config.network;
                let records = self
                    .ctx
                    .store
                    .list_vms()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.state == crate::domain::VmState::Running)
                    .filter_map(|r| Some((format!("{}.vm", r.name), r.ip?)))
                    .collect();
                let _ = reply.send(DnsView {
                    enabled: n.dns_port != 0,
                    listen: format!("{}:{}", n.bridge_ip, n.dns_port),
                    serving: state.serving,
                    resolver: if n.dns_port == 0 {
                        "off (network.dns_port = 0)".into()
                    } else {
                        state.resolver.clone()
                    },
                    records,
                    started_unix_ms: state.started_unix_ms,
                });
            }
            DnsMsg::Bound => state.serving = true,
            DnsMsg::Resolver(d) => state.resolver = d,
            DnsMsg::TaskEnded(why) => {
                state.task = None;
                return Err(format!("the DNS socket task {why}").into());
            }
            DnsMsg::Panic => panic!("test hook: the DnsServer actor panics"),
            DnsMsg::PanicTask => state.crash.notify_one(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DnsMsg>,
        state: &mut DnsState,
    ) -> Result<(), ActorProcessingErr> {
        state.task.take();
        Ok(())
    }
}

/// Reverts the host resolver routing (daemon shutdown); bounded.
pub async fn unroute(ctx: &Ctx) {
    let n = &ctx.config.network;
    if n.dns_port == 0 {
        return;
    }
    let revert = ctx
        .helper
        .route_dns(n.bridge.clone(), n.bridge_ip, n.dns_port, false);
    match tokio::time::timeout(Duration::from_secs(5), revert).await {
        Ok(Ok(detail)) => tracing::info!("host resolver: {detail}"),
        Ok(Err(e)) => tracing::warn!("reverting the host resolver: {e}"),
        Err(_) => tracing::warn!("reverting the host resolver: no answer within 5 s"),
    }
}
