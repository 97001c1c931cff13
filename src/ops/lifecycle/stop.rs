//! Stop, reap, kill and delete.

use super::*;

/// Stops a VM: sync and power off in the guest (agent, else SSH), then the
/// VMM's power button, then kill, each after a bounded wait.
pub async fn stop(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    mut rec: VmRecord,
    stages: &mut Stages,
) -> (VmRecord, Result<(), OpError>) {
    if !vmm_alive(&rec) {
        release(ctx, vm, &mut rec).await;
        if rec.state != VmState::Created && rec.state != VmState::Error {
            rec.state = VmState::Stopped;
        }
        let r = persist(ctx, vm, &rec);
        return (rec, r);
    }
    let pid = rec.vmm_pid.unwrap_or(0);
    rec.state = VmState::Stopping;
    let _ = persist(ctx, vm, &rec);
    let paths = ctx.layout.vm(&rec.id);
    stages
        .begin("sync", "sync and power off in the guest")
        .await;
    let asked = match vm.agent().await {
        Some(a) => a
            .poweroff(Duration::from_secs(15))
            .await
            .map_err(|e| e.to_string()),
        None => Err("no agent session".to_string()),
    };
    let how = match asked {
        Ok(_) => "agent".to_string(),
        Err(agent_err) => {
            let ssh_res = tokio::time::timeout(Duration::from_secs(20), async {
                let (ip, key) = (rec.ip.clone()?, rec.host_key.clone()?);
                let s = crate::guest::ssh::connect(
                    &ip,
                    &SshFiles::of(&ctx.layout).key,
                    &key,
                    Duration::from_secs(5),
                )
                .await
                .ok()?;
                let _ = s
                    .output("sync; systemctl --no-block poweroff || poweroff -f &")
                    .await;
                Some(())
            })
            .await
            .ok()
            .flatten();
            match ssh_res {
                Some(()) => "ssh".into(),
                None => format!("neither the agent ({agent_err}) nor ssh answered"),
            }
        }
    };
    stages.end(how).await;
    stages
        .begin("poweroff", "waiting for the guest to power off")
        .await;
    let gone = crate::host::process::wait_exit(pid, ctx.timeouts.poweroff).await;
    let mut how = "powered off".to_string();
    if !gone {
        let _ = ctx.drivers.driver(rec.vmm).powerdown(&paths).await;
        if !crate::host::process::wait_exit(pid, ctx.timeouts.powerdown).await {
            if let Err(e) = kill_vmm(ctx, &rec).await {
                rec.state = VmState::Error;
                rec.last_error = Some(e.to_string());
                let _ = persist(ctx, vm, &rec);
                return (rec, Err(e));
            }
            how = "killed after the bounded wait".into();
        } else {
            how = "powered off by the VMM power button".into();
        }
    }
    stages.end(how).await;
    release(ctx, vm, &mut rec).await;
    rec.state = VmState::Stopped;
    rec.started_at_unix = None;
    let r = persist(ctx, vm, &rec);
    (rec, r)
}

/// After the VMM exited on its own (power-off inside, crash, kill): release
/// and mark stopped.
pub async fn reap(ctx: &Ctx, vm: &dyn VmChildren, mut rec: VmRecord) -> VmRecord {
    if vmm_alive(&rec) {
        return rec;
    }
    release(ctx, vm, &mut rec).await;
    if rec.state.may_have_vmm() {
        rec.state = VmState::Stopped;
    }
    rec.started_at_unix = None;
    let _ = persist(ctx, vm, &rec);
    rec
}

/// `vm kill --signal`: delivers the signal; when it is one that ends the
/// VMM, waits for the exit and releases, leaving the VM stopped.
pub async fn kill(
    ctx: &Ctx,
    vm: &dyn VmChildren,
    rec: VmRecord,
    signal: Signal,
) -> (VmRecord, Result<(), OpError>) {
    let Some(pid) = rec.vmm_pid.filter(|p| pid_alive(*p)) else {
        if signal.terminates() && rec.state.may_have_vmm() {
            // An aborted start or stop: whatever it had launched or taken
            // goes now.
            if let Err(e) = kill_vmm(ctx, &rec).await {
                return (rec, Err(e));
            }
            let r = reap(ctx, vm, rec).await;
            return (r, Ok(()));
        }
        let e = OpError::invalid(format!("VM {} is not running", rec.name));
        return (rec, Err(e));
    };
    if let Err(e) = ctx.helper.signal_vmm(pid, signal).await {
        return (rec, Err(e));
    }
    if signal.terminates() && crate::host::process::wait_exit(pid, Duration::from_secs(15)).await {
        let r = reap(ctx, vm, rec).await;
        return (r, Ok(()));
    }
    (rec, Ok(()))
}

/// Deletes a VM: kills it if it runs (its disks go too), releases, removes
/// files and the record.
pub async fn delete(ctx: &Ctx, vm: &dyn VmChildren, mut rec: VmRecord) -> Result<(), OpError> {
    if let Err(e) = kill_vmm(ctx, &rec).await {
        // Nothing is removed while its VMM runs: the record keeps the pid,
        // the tap and the address so none of them is handed out again.
        rec.state = VmState::Error;
        rec.last_error = Some(e.to_string());
        persist(ctx, vm, &rec)?;
        return Err(e);
    }
    // The tap, NAT rules and agent go while the files do; the record goes
    // last, so a VM missing from the list holds nothing any more (its
    // address is free only once its tap is gone).
    let (id, name, ip) = (rec.id.clone(), rec.name.clone(), rec.ip.clone());
    let files = async {
        let paths = ctx.layout.vm(&id);
        for d in [&paths.state, &paths.run] {
            crate::fsutil::remove_all(d)
                .map_err(|e| crate::fsutil::IoError::new("removing", d, e))?;
        }
        if let Some(ip) = &ip {
            let _ = SshFiles::of(&ctx.layout).unpin(&name, ip);
        }
        Ok::<(), OpError>(())
    };
    let (_, removed) = tokio::join!(release(ctx, vm, &mut rec), files);
    removed?;
    ctx.store.delete_vm(&id)?;
    ctx.egress.forget(&id);
    ctx.vault.forget(&id);
    refresh_ssh_config(ctx);
    Ok(())
}
