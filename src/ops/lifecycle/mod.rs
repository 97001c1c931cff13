//! The start, stop, kill, delete and reap sequences of one VM. The caller
//! (a VmActor) runs one at a time per VM; each takes the record as it is,
//! persists every state change as it happens, and returns the record as it
//! now is. On failure everything acquired is released.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{disks, Ctx, Stages, VmChildren};
use crate::domain::{Signal, VmState};
use crate::guest::session::{channel_of, AgentSession};
use crate::guest::ssh::SshFiles;
use crate::host::process::pid_alive;
use crate::ops::OpError;
use crate::store::model::now_unix;
use crate::store::VmRecord;
use crate::vmm::{self, BootSpec, Vmm};

/// Stores `rec` and tells the VM's actor, so reads see it at once.
fn persist(ctx: &Ctx, vm: &dyn VmChildren, rec: &VmRecord) -> Result<(), OpError> {
    ctx.store.put_vm(rec)?;
    vm.record_changed(rec);
    Ok(())
}

fn vmm_alive(rec: &VmRecord) -> bool {
    rec.vmm_pid.is_some_and(pid_alive)
}

/// The pid of this VM's VMM if it still runs: alive, and its command line
/// names this VM's control socket (a recycled pid does not count).
pub fn live_vmm(ctx: &Ctx, rec: &VmRecord) -> Option<u32> {
    let paths = ctx.layout.vm(&rec.id);
    rec.vmm_pid.filter(|p| {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        pid_alive(*p)
            && (cmd.contains(&paths.qmp_socket().display().to_string())
                || cmd.contains(&paths.api_socket().display().to_string()))
    })
}

/// What a (re)started VmActor finds for its record.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing runs and nothing should.
    Idle,
    /// The VMM lives: watch it again (the record says running now).
    Live(u32),
    /// The record says a VMM should run but none does: reap it.
    Dead,
    /// A boot was interrupted with its VMM up: finish it ([`resume_boot`]).
    Booting(u32),
    /// A create or start was interrupted before its VMM ran: start again
    /// (releasing what it took), so the VM ends whole and running.
    Restart,
}

/// Reconciles a record with what runs. A stop that a daemon crash
/// interrupted leaves a live VMM: the VM is then running (`vm stop` stops
/// it). An interrupted create or start is carried through.
pub fn recover(ctx: &Ctx, rec: &mut VmRecord) -> Recovery {
    if rec.state == VmState::Created {
        return Recovery::Restart;
    }
    if !rec.state.may_have_vmm() {
        return Recovery::Idle;
    }
    match live_vmm(ctx, rec) {
        // An interrupted restore is done again from the start (fresh disks,
        // the memory loaded again): a guest that may not have taken its own
        // identity yet is never accepted as it is.
        Some(_) if rec.state == VmState::Starting && rec.restore_pending => Recovery::Restart,
        Some(pid) if rec.state == VmState::Starting => Recovery::Booting(pid),
        None if rec.state == VmState::Starting => Recovery::Restart,
        Some(pid) => {
            if rec.state != VmState::Running {
                rec.state = VmState::Running;
                if let Err(e) = ctx.store.put_vm(rec) {
                    tracing::warn!(vm = %rec.name, "recording state running: {e}");
                }
            }
            Recovery::Live(pid)
        }
        None => Recovery::Dead,
    }
}

/// Rewrites banger's ssh_config for every VM with an address.
pub fn refresh_ssh_config(ctx: &Ctx) {
    let vms = || {
        ctx.store
            .list_vms()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.ip.map(|ip| (v.name, ip)))
            .collect()
    };
    if let Err(e) = SshFiles::of(&ctx.layout).write_config(vms) {
        tracing::warn!("writing ssh_config: {e}");
    }
}

/// The VMs `rec` is linked with (its `--link`s and those that named it)
/// and their addresses; with `running`, only those that may be running.
pub(crate) fn linked(ctx: &Ctx, rec: &VmRecord, running: bool) -> Vec<(String, Ipv4Addr)> {
    ctx.store
        .list_vms()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| rec.linked_with(v))
        .filter(|v| !running || v.state.may_have_vmm())
        .filter_map(|v| Some((v.id, v.ip?.parse().ok()?)))
        .collect()
}

/// Whether the VM has rules of its own on the host: NAT, an egress
/// policy's redirect, links (with `running`, to partners that may run).
pub(crate) fn has_rules(ctx: &Ctx, rec: &VmRecord, running: bool) -> bool {
    rec.nat || rec.egress.is_some() || !linked(ctx, rec, running).is_empty()
}

/// A running VM's forwarding rules at `ip`: its egress policy's redirect
/// to the daemon's proxy when it has one, else NAT when it has it, and its
/// links to the partners that may be running. Each is added only where
/// missing.
pub(crate) async fn apply_rules(ctx: &Ctx, rec: &VmRecord, ip: Ipv4Addr) -> Result<(), OpError> {
    let net = &ctx.config.network;
    let bridge = &net.bridge;
    if rec.egress.is_some() {
        if net.dns_port == 0 {
            return Err(OpError::invalid(crate::ops::vms::NO_DNS_NO_EGRESS));
        }
        ctx.helper
            .police(rec.id.clone(), ip, bridge.clone(), net.dns_port)
            .await?;
    } else if rec.nat {
        ctx.helper
            .nat(true, rec.id.clone(), ip, bridge.clone())
            .await?;
    }
    for (id, peer_ip) in linked(ctx, rec, true) {
        ctx.helper
            .link_vms(bridge.clone(), (rec.id.clone(), ip), (id, peer_ip))
            .await?;
    }
    Ok(())
}

/// Gives back everything a running VM holds on the host (tap, NAT and
/// link rules, agent session). Idempotent; failures are logged, not fatal.
pub async fn release(ctx: &Ctx, vm: &dyn VmChildren, rec: &mut VmRecord) {
    vm.stop_agent().await;
    let rules = has_rules(ctx, rec, false);
    ctx.egress.rebooted(&rec.id);
    if let (true, Some(ip)) = (rules, rec.ip.as_deref().and_then(|i| i.parse().ok())) {
        let bridge = ctx.config.network.bridge.clone();
        if let Err(e) = ctx.helper.nat(false, rec.id.clone(), ip, bridge).await {
            tracing::warn!(vm = %rec.name, "removing NAT rules: {e}");
        }
    }
    if let Some(tap) = rec.tap.take() {
        ctx.taps.release(tap).await;
    }
    rec.vmm_pid = None;
}

/// The last `n` non-empty lines of a log, indented, for errors. Reads at
/// most the file's last 64 KiB.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = crate::fsutil::read_tail(path, 64 << 10);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "  (nothing)".into();
    }
    // The console is the guest's: no escape sequence or control byte of
    // it reaches the owner's terminal, and no line is endless.
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            let clean: String = l
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(240)
                .collect();
            format!("  {clean}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the VM's VMM (through bangerd-root) and waits for it to be gone:
/// the recorded pid, and any other VMM of this VM the helper knows (one
/// launched by an operation interrupted before it recorded the pid).
/// Returns why not when a VMM still runs (the helper is down, say): the
/// caller then keeps the VM's pid, tap and rules rather than handing them
/// out again.
async fn kill_vmm(ctx: &Ctx, rec: &VmRecord) -> Result<(), OpError> {
    let mut pids: Vec<u32> = rec.vmm_pid.into_iter().filter(|p| pid_alive(*p)).collect();
    if let Ok(all) = ctx.helper.list_vmms().await {
        for v in all {
            if v.vm_id == rec.id && !pids.contains(&v.pid) {
                pids.push(v.pid);
            }
        }
    }
    for pid in pids {
        let sent = ctx.helper.signal_vmm(pid, Signal::Kill).await;
        let gone = match &sent {
            Ok(_) => crate::host::process::wait_exit(pid, Duration::from_secs(10)).await,
            Err(_) => !pid_alive(pid),
        };
        if !gone {
            return Err(OpError::failed(format!(
                "the {} process {pid} of VM {} is still running ({}); it keeps its tap and address until it is gone: retry when bangerd-root is back (banger daemon stop; banger vm delete {})",
                rec.vmm.as_str(),
                rec.name,
                sent.err().map(|e| e.to_string()).unwrap_or_else(|| "it did not exit".into()),
                rec.name
            )));
        }
    }
    Ok(())
}

mod ready;
mod start;
mod stop;
#[cfg(test)]
mod tests;

pub use ready::*;
pub use start::*;
pub use stop::*;
