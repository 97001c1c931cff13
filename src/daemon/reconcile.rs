//! Start-up reconciliation with what actually runs on the host. VmActors
//! re-attach to their own live VMMs (or release a dead one's resources);
//! this pass removes what no VM owns any more: orphan VMM processes and
//! banger taps. Each removal is logged.

use std::collections::HashMap;

use crate::domain::{Signal, VmState};
use crate::ops::Ctx;
use crate::store::VmRecord;

/// Runs the orphan pass. Without a helper, only the daemon's own processes
/// are checked. A store that cannot be read, or a VM row that cannot be
/// decoded, makes it kill nothing that could be that VM's: a bad row is
/// reported, never taken for "no VM".
pub async fn orphans(ctx: &Ctx) {
    let (records, unreadable) = match ctx.store.list_vms_reporting() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("the store cannot be read ({e}); the orphan pass kills nothing");
            return;
        }
    };
    for key in &unreadable {
        tracing::error!(vm_id = %key, "a VM record cannot be decoded; its VMM and taps are left alone (banger vm list skips it)");
    }
    let records_in_flight: Vec<String> = records
        .iter()
        .filter(|v| matches!(v.state, VmState::Created | VmState::Starting))
        .map(|v| v.id.clone())
        .collect();
    let live: HashMap<String, VmRecord> = records
        .into_iter()
        .filter(|v| v.state.may_have_vmm())
        .map(|v| (v.id.clone(), v))
        .collect();
    match ctx.helper.list_vmms().await {
        Ok(list) => {
            for p in list {
                let owned = live.get(&p.vm_id).is_some_and(|r| r.vmm_pid == Some(p.pid));
                // A VM being created or (re)started: its actor decides
                // (a resumed start may be launching this very VMM).
                let in_flight = records_in_flight.contains(&p.vm_id);
                if !owned && !in_flight && !unreadable.contains(&p.vm_id) {
                    tracing::warn!(pid = p.pid, vm_id = %p.vm_id, "killing an orphan VMM no VM record owns");
                    let _ = ctx.helper.signal_vmm(p.pid, Signal::Kill).await;
                }
            }
        }
        Err(e) => tracing::warn!("orphan check skipped (no helper): {e}"),
    }
    if !unreadable.is_empty() {
        tracing::warn!("orphan taps and NAT rules are kept while a VM record cannot be read");
        return;
    }
    // NAT and link rules whose removal failed (the helper was down, a
    // crash).
    if let Ok(ids) = ctx.helper.list_nat().await {
        for id in ids {
            let wanted = live
                .get(&id)
                .is_some_and(|r| crate::ops::lifecycle::has_rules(ctx, r, true));
            if !wanted {
                tracing::warn!(vm_id = %id, "removing NAT and link rules no running VM owns");
                let (ip, bridge) = (
                    ctx.config.network.bridge_ip,
                    ctx.config.network.bridge.clone(),
                );
                let _ = ctx.helper.nat(false, id, ip, bridge).await;
            }
        }
    }
    if let Ok(taps) = ctx.helper.list_taps().await {
        // Read again: VMs recovering in parallel lease taps while this runs.
        let now: Vec<VmRecord> = ctx.store.list_vms().unwrap_or_default();
        for t in taps {
            let owned = live
                .values()
                .chain(now.iter())
                .any(|r| r.tap.as_deref() == Some(t.name.as_str()));
            if !owned && !ctx.tap_ledger.created_here(&t.name) {
                tracing::warn!(tap = %t.name, "deleting an orphan tap no VM uses");
                let _ = crate::ops::net::delete_tap(&*ctx.helper, t.name, &ctx.tap_ledger).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::Fakes;

    #[tokio::test]
    async fn an_unreadable_record_makes_the_orphan_pass_spare_its_vmm_and_every_tap() {
        let f = Fakes::new();
        let unreadable = "00000000000000aa";
        f.ctx
            .store
            .put_raw_vm(unreadable, b"{\"name\": 7, \"broken\": true")
            .unwrap();
        let spared = f.helper.spawn_vmm_for(unreadable);
        let orphan = f.helper.spawn_vmm_for("00000000000000ff");
        orphans(&f.ctx).await;
        assert!(
            crate::host::process::pid_alive(spared),
            "the unreadable VM's VMM runs on"
        );
        assert!(
            !crate::host::process::pid_alive(orphan),
            "a true orphan is still killed"
        );
        assert_eq!(f.helper.count("list_taps"), 0, "no tap is judged");
    }
}
