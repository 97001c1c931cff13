//! Start-up reconciliation with what actually runs on the host. VmActors
//! re-attach to their own live VMMs (or release a dead one's resources);
//! this pass removes what no VM owns any more: orphan VMM processes,
//! vhost-device-vsock processes and banger taps. Each removal is logged.

use std::collections::HashMap;

use crate::domain::Signal;
use crate::ops::Ctx;
use crate::protocol::helper::{PrivReply, PrivRequest};
use crate::store::VmRecord;

fn active(ctx: &Ctx) -> HashMap<String, VmRecord> {
    ctx.store
        .list_vms()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.state.may_have_vmm())
        .map(|v| (v.id.clone(), v))
        .collect()
}

/// Runs the orphan pass. Without a helper, only the daemon's own processes
/// are checked.
pub async fn orphans(ctx: &Ctx) {
    let live = active(ctx);
    match ctx.helper.call(PrivRequest::ListVmms).await {
        Ok(PrivReply::Vmms(list)) => {
            for p in list {
                let owned = live.get(&p.vm_id).is_some_and(|r| r.vmm_pid == Some(p.pid));
                if !owned {
                    tracing::warn!(pid = p.pid, vm_id = %p.vm_id, "killing an orphan VMM no VM record owns");
                    let _ = ctx
                        .helper
                        .call(PrivRequest::SignalVmm {
                            pid: p.pid,
                            signal: Signal::Kill,
                        })
                        .await;
                }
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("orphan check skipped (no helper): {}", e.message),
    }
    if let Ok(PrivReply::Taps(taps)) = ctx.helper.call(PrivRequest::ListTaps).await {
        for t in taps {
            let owned = live
                .values()
                .any(|r| r.tap.as_deref() == Some(t.name.as_str()));
            if !owned {
                tracing::warn!(tap = %t.name, "deleting an orphan tap no VM uses");
                let _ = crate::ops::net::delete_tap(&*ctx.helper, t.name).await;
            }
        }
    }
    let vms_dir = ctx.layout.runtime_dir.join("vms");
    for (pid, vm_id) in vsock_processes(&vms_dir) {
        if !live.contains_key(&vm_id) {
            tracing::warn!(pid, %vm_id, "killing an orphan vhost-device-vsock");
            crate::host::vsock_bridge::kill(pid).await;
        }
    }
}

/// Our vhost-device-vsock processes: (pid, vm id).
fn vsock_processes(vms_dir: &std::path::Path) -> Vec<(u32, String)> {
    let prefix = format!("socket={}/", vms_dir.display());
    let me = nix::unistd::geteuid().as_raw();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            use std::os::unix::fs::MetadataExt;
            if std::fs::metadata(format!("/proc/{pid}")).ok()?.uid() != me
                || !crate::host::process::pid_alive(pid)
            {
                return None;
            }
            let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
                .into_owned();
            let at = cmd.find(&prefix)?;
            let id: String = cmd[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            (id.len() == 16).then_some((pid, id))
        })
        .collect()
}
