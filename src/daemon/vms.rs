//! Requests about one VM. Lifecycle changes and workspace prepares are
//! operations queued on the VM's actor (`requests::run_on_vm`); reads take
//! the actor's current record. The work itself is in `ops`.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::requests::{self, run_on_vm};
use crate::actors::vm_registry::RegistryMsg;
use crate::actors::Slots;
use crate::domain::views::{Exit, SnapshotView, SshTarget, VmCreateSpec, VmView, WorkspaceView};
use crate::domain::Event;
use crate::domain::Signal;
use crate::guest::exec::Outcome;
pub use crate::ops::vms::ExecHow;
use crate::ops::OpError;
use crate::ops::{lifecycle, views, vms, workspace, Ctx, Stages};
use crate::workspace::WorkspaceSpec;

/// `vm create`: make sure image and kernel exist, reserve the record with
/// an address, then boot it.
pub async fn create(
    ctx: Arc<Ctx>,
    slots: Arc<Slots>,
    spec: VmCreateSpec,
    events: mpsc::Sender<Event>,
) -> Result<VmView, OpError> {
    let plan = vms::plan_create(&ctx, &spec, &events).await?;
    let warm = plan.make_warm.clone().map(|name| Warm {
        name,
        image: plan.image.name.clone(),
        kernel: plan.kernel.name.clone(),
        shape: (spec.vcpu, spec.memory_mib, spec.disk_bytes),
    });
    // From the reservation on, the work runs on its own task: a client that
    // goes away (Ctrl-C) aborts this handler, and must not leave a reserved
    // row that no actor owns. The VM is then created and started anyway, and
    // can be deleted like any other.
    let delete_on_failure = spec.delete_on_failure;
    let task = tokio::spawn(async move {
        let reserved = vms::reserve(&ctx, &spec, &plan)?;
        let _ = events
            .send(Event::Stage {
                stage: "reserve".into(),
                detail: format!(
                    "{} at {}",
                    reserved.name,
                    reserved.ip.clone().unwrap_or_default()
                ),
                elapsed_ms: 0,
                done: true,
            })
            .await;
        let reg = requests::registry(&slots)?;
        ractor::call_t!(
            reg,
            |reply| RegistryMsg::Adopt {
                id: reserved.id.clone(),
                reply
            },
            requests::READ_MS
        )
        .map_err(|e| OpError::failed(format!("registering the VM: {e}")))??;
        let started = start(&slots, &reserved.name, events).await;
        if let (Ok(_), Some(w)) = (&started, warm) {
            spawn_warm(ctx.clone(), slots.clone(), w);
        }
        match started {
            Err(e) if delete_on_failure => {
                // `vm run --rm`: the failed VM goes now (its logs with it);
                // its console's end is in the message already.
                let gone = delete(&slots, &reserved.name, Some(reserved.id.clone())).await;
                let hint = format!(" (see `banger vm logs {}`)", reserved.name);
                let message = match gone {
                    Ok(_) => format!("{}; the VM was removed", e.to_string().replace(&hint, "")),
                    Err(d) => format!("{e}; removing the VM failed: {d}"),
                };
                Err(e.reworded(message))
            }
            other => other,
        }
    });
    task.await?
}

/// What an automatic snapshot is made of.
struct Warm {
    name: String,
    image: String,
    kernel: String,
    shape: (u32, u32, u64),
}

/// Makes the warm snapshot `w` in the background (one at a time per
/// name): a VM of its own, booted to "agent ready", snapshotted, deleted.
fn spawn_warm(ctx: Arc<Ctx>, slots: Arc<Slots>, w: Warm) {
    if !ctx
        .warming
        .lock()
        .map(|mut s| s.insert(w.name.clone()))
        .unwrap_or(false)
    {
        return;
    }
    tokio::spawn(async move {
        let name = w.name.clone();
        match make_warm(&ctx, &slots, w).await {
            Ok(()) => tracing::info!(snapshot = %name, "made the warm-start snapshot"),
            Err(e) => {
                tracing::warn!(snapshot = %name, "making the warm-start snapshot failed: {e}")
            }
        }
        if let Ok(mut s) = ctx.warming.lock() {
            s.remove(&name);
        }
    });
}

async fn make_warm(ctx: &Arc<Ctx>, slots: &Arc<Slots>, w: Warm) -> Result<(), OpError> {
    if ctx.store.get_snapshot(&w.name)?.is_some() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let spec = VmCreateSpec {
        name: Some(w.name.clone()),
        image: Some(w.image),
        kernel: Some(w.kernel),
        vcpu: w.shape.0,
        memory_mib: w.shape.1,
        disk_bytes: w.shape.2,
        nat: false,
        vmm: crate::domain::VmmChoice::Qemu,
        from: None,
        cold: true,
        // Deleted below, whatever happened.
        delete_on_failure: false,
        links: vec![],
        egress: None,
        secrets: vec![],
    };
    // Boxed: `create` starts this task, so its future cannot contain itself.
    let created: crate::ops::BoxFuture<'static, Result<VmView, OpError>> =
        Box::pin(create(ctx.clone(), slots.clone(), spec, tx.clone()));
    let id = match created.await {
        Ok(v) => v.id,
        // Someone's own VM of that name: not ours to delete.
        Err(e) if e.is_already_exists() => return Err(e),
        Err(e) => {
            // The VM it reserved (a failed boot leaves it in error) goes.
            let _ = delete(slots, &w.name, None).await;
            return Err(e);
        }
    };
    let snap_name = w.name.clone();
    let taken = run_on_vm(slots, &w.name, "snapshot", move |a| async move {
        let mut st = Stages::new(tx);
        let agent = a.vm.agent().await;
        let r = crate::ops::snapshots::take(
            &a.ctx,
            &a.record,
            agent,
            Some(snap_name),
            true,
            None,
            &mut st,
        )
        .await;
        (Some(a.record), r)
    })
    .await;
    let deleted = delete(slots, &w.name, Some(id)).await;
    taken?;
    deleted
}

/// The view of the record an operation leaves.
fn vm_reply(rec: crate::store::VmRecord) -> VmView {
    views::vm(&rec)
}

pub async fn start(
    slots: &Slots,
    name: &str,
    events: mpsc::Sender<Event>,
) -> Result<VmView, OpError> {
    run_on_vm(slots, name, "start", move |a| async move {
        let mut st = Stages::new(events);
        let (rec, r) = lifecycle::start(&a.ctx, &*a.vm, a.record, &mut st).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await
    .map(vm_reply)
}

pub async fn stop(
    slots: &Slots,
    name: &str,
    events: mpsc::Sender<Event>,
) -> Result<VmView, OpError> {
    run_on_vm(slots, name, "stop", move |a| async move {
        let mut st = Stages::new(events);
        let (rec, r) = lifecycle::stop(&a.ctx, &*a.vm, a.record, &mut st).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await
    .map(vm_reply)
}

pub async fn restart(
    slots: &Slots,
    name: &str,
    events: mpsc::Sender<Event>,
) -> Result<VmView, OpError> {
    run_on_vm(slots, name, "restart", move |a| async move {
        let mut st = Stages::new(events);
        let (rec, r) = lifecycle::stop(&a.ctx, &*a.vm, a.record, &mut st).await;
        if let Err(e) = r {
            return (Some(rec), Err(e));
        }
        let (rec, r) = lifecycle::start(&a.ctx, &*a.vm, rec, &mut st).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await
    .map(vm_reply)
}

/// `vm snapshot`: an operation on the VM (nothing else runs on it
/// meanwhile); with `stop`, the VM is stopped afterwards.
pub async fn snapshot(
    slots: &Slots,
    name: &str,
    snapshot: Option<String>,
    stop: bool,
    auto: bool,
    scope: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<SnapshotView, OpError> {
    run_on_vm(slots, name, "snapshot", move |a| async move {
        let mut st = Stages::new(events);
        let agent = a.vm.agent().await;
        let taken =
            crate::ops::snapshots::take(&a.ctx, &a.record, agent, snapshot, auto, scope, &mut st)
                .await;
        let snap = match taken {
            Ok(s) => s,
            Err(e) => return (Some(a.record), Err(e)),
        };
        if !stop {
            return (Some(a.record), Ok(snap));
        }
        let (rec, r) = lifecycle::stop(&a.ctx, &*a.vm, a.record, &mut st).await;
        (Some(rec), r.map(|_| snap))
    })
    .await
    .map(|s| views::snapshot(&s))
}

pub async fn kill(slots: &Slots, name: &str, signal: Signal) -> Result<VmView, OpError> {
    let f = move |a: crate::actors::vm_actor::OpArgs| async move {
        let (rec, r) = lifecycle::kill(&a.ctx, &*a.vm, a.record, signal).await;
        (Some(rec.clone()), r.map(|_| rec))
    };
    // A signal that ends the VMM ends whatever runs on the VM too.
    let r = if signal.terminates() {
        requests::preempt_on_vm(slots, name, "kill", f).await
    } else {
        run_on_vm(slots, name, "kill", f).await
    };
    r.map(vm_reply)
}

pub async fn delete(slots: &Slots, name: &str, id: Option<String>) -> Result<(), OpError> {
    // Only the VM meant is interrupted: `vm run --rm` deletes by the id it
    // created, and a same-named VM made by someone else is left running
    // its operation (the id is checked again inside).
    if let Some(id) = &id {
        let current = requests::record(slots, name).await?;
        if current.id != *id {
            return Err(OpError::not_found(format!(
                "VM {name} is not the one this command created; left alone"
            )));
        }
    }
    requests::preempt_on_vm(slots, name, "delete", |a| async move {
        let keep = a.record.clone();
        if id.as_ref().is_some_and(|id| *id != keep.id) {
            let e = OpError::not_found(format!(
                "VM {} is not the one this command created; left alone",
                keep.name
            ));
            return (Some(keep), Err(e));
        }
        match lifecycle::delete(&a.ctx, &*a.vm, a.record).await {
            Ok(()) => (None, Ok(())),
            Err(e) => (Some(keep), Err(e)),
        }
    })
    .await
}

/// Deletes every VM that is not running (created, stopped, error).
pub async fn prune(ctx: &Ctx, slots: &Slots) -> Result<Vec<String>, OpError> {
    let mut gone = Vec::new();
    for v in ctx.store.list_vms()? {
        if !v.state.prunable() {
            continue;
        }
        let name = v.name.clone();
        // Checked again inside the operation: the VM may have started meanwhile.
        let r = run_on_vm(slots, &name, "prune", |a| async move {
            if !a.record.state.prunable() {
                return (Some(a.record), Ok(false));
            }
            let keep = a.record.clone();
            match lifecycle::delete(&a.ctx, &*a.vm, a.record).await {
                Ok(()) => (None, Ok(true)),
                Err(e) => (Some(keep), Err(e)),
            }
        })
        .await;
        match r {
            Ok(true) => gone.push(name),
            Ok(false) => {}
            Err(e) => tracing::warn!(vm = %name, "prune: {e}"),
        }
    }
    Ok(gone)
}

pub async fn set(slots: &Slots, name: &str, c: vms::VmChanges) -> Result<VmView, OpError> {
    if c == vms::VmChanges::default() {
        return Err(OpError::invalid(
            "nothing to change: give --vcpu, --memory, --disk-size, --nat/--no-nat and/or --egress, --allow-host, --allow-net, --disallow-host",
        ));
    }
    run_on_vm(slots, name, "set", move |a| async move {
        match vms::set(&a.ctx, &*a.vm, &a.record, c).await {
            Ok(new) => (Some(new.clone()), Ok(new)),
            Err(e) => (Some(a.record), Err(e)),
        }
    })
    .await
    .map(vm_reply)
}

pub async fn show(ctx: &Ctx, slots: &Slots, name: &str) -> Result<VmView, OpError> {
    let rec = requests::record(slots, name).await?;
    let mut v = views::vm_seen(&rec, &ctx.guests.get(&rec.id), ctx.timeouts.unresponsive);
    v.links = views::link_names(&rec, &ctx.store.list_vms()?);
    Ok(v)
}

/// The VM's serial console and VMM logs.
pub async fn logs(ctx: &Ctx, slots: &Slots, name: &str) -> Result<(String, String), OpError> {
    let rec = requests::record(slots, name).await?;
    Ok(vms::logs(ctx, &rec))
}

/// `vm ssh`: pins the guest's host key (waiting for sshd when it is new)
/// as an operation on the VM, and answers how to reach it.
pub async fn ssh(slots: &Slots, name: &str) -> Result<SshTarget, OpError> {
    run_on_vm(slots, name, "ssh", |a| async move {
        let mut rec = a.record.clone();
        let target = match a.vm.agent().await {
            Some(agent) => vms::ssh_target(&a.ctx, &agent, &mut rec).await,
            None => Err(OpError::invalid(format!(
                "VM {} is not running; start it with: banger vm start {}",
                rec.name, rec.name
            ))),
        };
        match target {
            Ok(t) => (Some(rec), Ok(t)),
            Err(e) => (Some(a.record), Err(e)),
        }
    })
    .await
}

/// The agent's round-trip time.
pub async fn ping(slots: &Slots, name: &str) -> Result<std::time::Duration, OpError> {
    let (_, agent) = requests::agent(slots, name).await?;
    agent
        .ping(std::time::Duration::from_secs(10))
        .await
        .map_err(|e| OpError::failed(format!("VM {name}: {e}")))
}

/// `vm exec`: in a workspace, warns when the host repo moved on since the
/// prepare, or re-syncs first with `auto_prepare`.
pub async fn exec(
    ctx: &Ctx,
    slots: &Slots,
    name: &str,
    argv: Vec<String>,
    how: ExecHow,
    events: mpsc::Sender<Event>,
) -> Result<Exit, OpError> {
    let (mut rec, mut agent) = requests::agent(slots, name).await?;
    if let (Some(ws), Some((repo, was, now))) = (rec.workspace.clone(), vms::workspace_moved(&rec))
    {
        if how.auto_prepare {
            let spec = WorkspaceSpec {
                path: ws.host_path,
                mode: ws.mode,
                include_untracked: ws.include_untracked,
                from: None,
                keep_ignored: false,
            };
            prepare(slots, name, spec, events.clone()).await?;
            (rec, agent) = requests::agent(slots, name).await?;
        } else {
            let short = |h: &str| h.chars().take(12).collect::<String>();
            let _ = events
                .send(Event::Log(format!(
                    "warning: {repo} moved from {} to {} since the workspace was prepared; run with --auto-prepare to sync it first",
                    short(&was),
                    short(&now)
                )))
                .await;
        }
    }
    Ok(
        match vms::exec(ctx, &rec, &agent, argv, how, &events).await? {
            Outcome::Exited(s) => Exit {
                code: s.shell_code(),
                message: None,
            },
            Outcome::Failed(e) => Exit {
                code: e.kind.exit_code(),
                message: Some(e.message),
            },
        },
    )
}

/// `vm workspace prepare`: an operation on the VM (it waits for the others
/// and they wait for it).
pub async fn prepare(
    slots: &Slots,
    name: &str,
    spec: WorkspaceSpec,
    events: mpsc::Sender<Event>,
) -> Result<WorkspaceView, OpError> {
    run_on_vm(slots, name, "workspace.prepare", move |a| async move {
        let mut rec = a.record.clone();
        let Some(agent) = a.vm.agent().await else {
            let e = vms::require_running(&rec)
                .err()
                .unwrap_or_else(|| OpError::failed("the VM has no agent session; restart it"));
            return (Some(rec), Err(e));
        };
        match workspace::ship(&a.ctx, &agent, &rec, &spec, &events).await {
            Ok((state, files)) => {
                let view = views::workspace(&state, files);
                rec.workspace = Some(state);
                match a.ctx.store.put_vm(&rec) {
                    Ok(()) => (Some(rec), Ok(view)),
                    Err(e) => (Some(a.record), Err(e.into())),
                }
            }
            Err(e) => (Some(rec), Err(e)),
        }
    })
    .await
}

/// `vm workspace export`: the patch streams out as stdout events.
pub async fn export(
    slots: &Slots,
    name: &str,
    base: Option<String>,
    events: mpsc::Sender<Event>,
) -> Result<(), OpError> {
    let (rec, agent) = requests::agent(slots, name).await?;
    workspace::export(&agent, &rec, base, events).await
}
