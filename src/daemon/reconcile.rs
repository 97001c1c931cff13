//! Start-up reconciliation with what actually runs on the host. VmActors
//! re-attach to their own live VMMs (or release a dead one's resources);
//! this pass removes what no VM owns any more: orphan VMM processes and
//! banger taps. Each removal is logged.

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
}
