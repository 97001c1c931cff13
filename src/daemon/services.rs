//! Requests about guest services: ports, stats, health, DNS, ssh_config,
//! and the test hooks.

use std::time::Duration;

use super::requests;
use crate::actors::dns_server::DnsMsg;
use crate::actors::vm_actor::VmMsg;
use crate::actors::Slots;
use crate::ops::{stats, Ctx};
use crate::protocol::cli::{Reply, VmHealthView, VmStatsView};
use crate::protocol::RpcError;

fn agent_err(name: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::failed(format!(
        "VM {name}: {e}; see `banger vm health {name}` and `banger vm logs {name}`"
    ))
}

pub async fn ports(ctx: &Ctx, slots: &Slots, name: &str) -> Result<Reply, RpcError> {
    let (rec, agent) = requests::agent(slots, name).await?;
    let ports = agent
        .ports(Duration::from_secs(10))
        .await
        .map_err(|e| agent_err(name, e))?;
    Ok(Reply::Ports(stats::port_views(ctx, &rec, ports)))
}

/// `vm egress`: the VM's policy and what it was refused.
pub async fn egress(ctx: &Ctx, slots: &Slots, name: &str) -> Result<Reply, RpcError> {
    let rec = requests::record(slots, name).await?;
    Ok(Reply::Egress(crate::domain::egress::EgressView {
        refused: ctx.egress.refusals(&rec.id),
        vm: rec.name,
        policy: rec.egress,
    }))
}

pub async fn vm_stats(ctx: &Ctx, slots: &Slots, name: &str) -> Result<Reply, RpcError> {
    let (rec, agent) = requests::agent(slots, name).await?;
    let (host, guest) = tokio::join!(stats::host(ctx, &rec), stats::guest(&agent));
    let (guest, guest_error) = match guest {
        Ok(g) => (Some(g), None),
        Err(e) => (None, Some(e)),
    };
    Ok(Reply::Stats(Box::new(VmStatsView {
        name: rec.name,
        host,
        guest,
        guest_error,
    })))
}

/// Asks the agent now (bounded), whatever the watch last saw.
pub async fn health(ctx: &Ctx, slots: &Slots, name: &str) -> Result<Reply, RpcError> {
    let a = requests::actor(slots, name).await?;
    let rec = ractor::call_t!(a, VmMsg::Get, requests::READ_MS)
        .map_err(|e| RpcError::failed(format!("reading the VM: {e}")))?;
    let session = ractor::call_t!(a, VmMsg::Agent, requests::READ_MS)
        .ok()
        .flatten();
    let board = ctx.guests.get(&rec.id);
    let mut v = VmHealthView {
        name: rec.name.clone(),
        state: crate::ops::views::vm_seen(&rec, &board, ctx.timeouts.unresponsive).state,
        agent_ok: false,
        rtt_us: None,
        agent_error: None,
        boot_id: rec.boot_id.clone(),
        uptime_s: None,
        init: None,
        setup_errors: vec![],
        children: board.child_views(),
    };
    let running = crate::ops::vms::require_running(&rec);
    match (running, session) {
        (Err(e), _) => v.agent_error = Some(e.to_string()),
        (Ok(()), None) => v.agent_error = Some("no agent session".into()),
        (Ok(()), Some(s)) => {
            let t = std::time::Instant::now();
            match s.health(Duration::from_secs(3)).await {
                Ok(h) => {
                    v.agent_ok = true;
                    v.rtt_us = Some(t.elapsed().as_micros() as u64);
                    // Guest text: bounded and escaped for the terminal.
                    use crate::guest::text::shown;
                    v.boot_id = Some(shown(&h.boot_id, 64, false));
                    v.uptime_s = Some(h.uptime_s.max(0.0) as u64);
                    v.init = Some(shown(&h.init, 64, false));
                    v.setup_errors = h
                        .setup_errors
                        .iter()
                        .take(32)
                        .map(|e| shown(e, 400, false))
                        .collect();
                }
                Err(e) => {
                    v.agent_error = Some(crate::guest::text::shown(&e.to_string(), 400, false))
                }
            }
        }
    }
    Ok(Reply::Health(Box::new(v)))
}

pub async fn dns(slots: &Slots) -> Result<Reply, RpcError> {
    let d = slots.dns.get().ok_or_else(|| {
        RpcError::new(
            crate::protocol::ErrorCode::Busy,
            "the DNS server is restarting; retry in a moment",
        )
    })?;
    ractor::call_t!(d, DnsMsg::Status, requests::READ_MS)
        .map(|d| Reply::Dns(Box::new(d)))
        .map_err(|e| RpcError::failed(format!("the DNS server: {e}")))
}

pub fn ssh_config(ctx: &Ctx) -> Result<Reply, RpcError> {
    crate::ops::lifecycle::refresh_ssh_config(ctx);
    let files = crate::guest::ssh::SshFiles::of(&ctx.layout);
    if !files.config.exists() {
        return Err(RpcError::failed(format!(
            "could not write {}; see the daemon log",
            files.config.display()
        )));
    }
    Ok(Reply::SshConfig {
        path: files.config.display().to_string(),
    })
}

/// Whether the daemon honours test hooks: set in its environment by
/// whoever started it (tests), never by a request.
#[cfg(feature = "test-hooks")]
pub fn hooks_enabled() -> bool {
    std::env::var("BANGER_TEST_HOOKS").is_ok_and(|v| v == "1")
}

#[cfg(feature = "test-hooks")]
pub async fn test_hook(
    slots: &Slots,
    hook: crate::protocol::cli::TestHook,
) -> Result<Reply, RpcError> {
    use crate::protocol::cli::TestHook;
    if !hooks_enabled() {
        return Err(RpcError::bad_request(
            "test hooks are off (start bangerd with BANGER_TEST_HOOKS=1)",
        ));
    }
    tracing::warn!(?hook, "test hook");
    let dns = || {
        slots
            .dns
            .get()
            .ok_or_else(|| RpcError::failed("no DNS server running"))
    };
    match &hook {
        TestHook::PanicDns => {
            let _ = dns()?.cast(DnsMsg::Panic);
        }
        TestHook::PanicDnsTask => {
            let _ = dns()?.cast(DnsMsg::PanicTask);
        }
        TestHook::PanicWatch { name }
        | TestHook::PanicMonitor { name }
        | TestHook::KillSession { name } => {
            let a = requests::actor(slots, name).await?;
            let _ = a.cast(VmMsg::Hook(hook.clone()));
        }
    }
    Ok(Reply::Done)
}
