//! VM requests. Lifecycle operations become jobs queued in the VM's actor;
//! `exec`, `logs` and `ssh` only read the record.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::actors::job_manager::Progress;
use crate::actors::vm_actor::{await_job, job, JobCtx, VmMsg};
use crate::actors::vm_registry::RegistryMsg;
use crate::actors::Services;
use crate::protocol::cli::{Event, Reply, SshTarget, VmCreateSpec, VmState};
use crate::protocol::{ErrorCode, RpcError};
use crate::store::VmRecord;
use crate::vm::lifecycle::{self, Stages};
use crate::vm::ssh::SshFiles;

const CALL_MS: u64 = 30_000;

fn busy(what: &str) -> RpcError {
    RpcError::new(
        ErrorCode::Busy,
        format!("the {what} is restarting; retry in a moment"),
    )
}

fn registry(svc: &Services) -> Result<ractor::ActorRef<RegistryMsg>, RpcError> {
    svc.registry.get().ok_or_else(|| busy("VM registry"))
}

/// Checks a name (the daemon re-checks whatever the CLI checked).
pub fn validate_name(name: &str) -> Result<(), RpcError> {
    crate::names::validate_vm_name(name).map_err(|e| RpcError::bad_request(e.to_string()))
}

/// The record of the VM named `name`.
pub async fn record(svc: &Services, name: &str) -> Result<VmRecord, RpcError> {
    validate_name(name)?;
    let reg = registry(svc)?;
    let actor = ractor::call_t!(
        reg,
        |reply| RegistryMsg::Lookup {
            name: name.to_string(),
            reply
        },
        CALL_MS
    )
    .map_err(|e| RpcError::failed(format!("finding the VM: {e}")))??;
    ractor::call_t!(actor, VmMsg::Get, CALL_MS)
        .map_err(|e| RpcError::failed(format!("reading the VM: {e}")))
}

/// Queues a job on the VM named `name` and waits for its result.
pub async fn run_job<T, F, Fut>(
    svc: &Services,
    name: &str,
    jobname: &'static str,
    f: F,
) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: FnOnce(JobCtx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (Option<VmRecord>, Result<T, RpcError>)> + Send + 'static,
{
    validate_name(name)?;
    let (j, rx) = job(jobname, f);
    registry(svc)?
        .cast(RegistryMsg::Run {
            name: name.to_string(),
            job: j,
        })
        .map_err(|_| busy("VM registry"))?;
    await_job(rx).await
}

/// Limits on what a VM may ask for.
pub fn validate_spec(spec: &VmCreateSpec) -> Result<(), RpcError> {
    if let Some(n) = &spec.name {
        validate_name(n)?;
    }
    if !(1..=32).contains(&spec.vcpu) {
        return Err(RpcError::bad_request(format!(
            "--vcpu {} is out of range: use 1 to 32",
            spec.vcpu
        )));
    }
    if spec.memory_mib < 256 {
        return Err(RpcError::bad_request(format!(
            "--memory {} MiB is too small: a VM needs at least 256 MiB (e.g. --memory 1G)",
            spec.memory_mib
        )));
    }
    if spec.memory_mib > 1 << 20 {
        return Err(RpcError::bad_request("--memory is larger than 1 TiB"));
    }
    if spec.disk_bytes < 256 << 20 {
        return Err(RpcError::bad_request("--disk-size must be at least 256M"));
    }
    Ok(())
}

/// `vm create`: validate, make sure image and kernel exist (building or
/// pulling them), reserve the record with an address, then boot it.
pub async fn create(
    svc: Arc<Services>,
    spec: VmCreateSpec,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    validate_spec(&spec)?;
    let kind = crate::vmm::choose(spec.vmm).map_err(RpcError::bad_request)?;
    let image_name = match &spec.image {
        Some(i) => {
            crate::image::validate_image_name(i).map_err(RpcError::bad_request)?;
            i.clone()
        }
        None => super::images::default_image(&svc)?,
    };
    if let Some(n) = &spec.name {
        if svc
            .store
            .find_vm_by_name(n)
            .map_err(|e| RpcError::failed(e.to_string()))?
            .is_some()
        {
            return Err(RpcError::new(
                ErrorCode::AlreadyExists,
                format!("a VM named {n:?} exists; pick another name or delete it"),
            ));
        }
    }
    let progress = Progress::to(events.clone());
    let image = super::images::ensure(&svc, &image_name, &progress).await?;
    let kernel_name = spec
        .kernel
        .clone()
        .unwrap_or_else(|| image.kernel_ref.clone());
    let kernel = match svc
        .store
        .get_kernel(&kernel_name)
        .map_err(|e| RpcError::failed(e.to_string()))?
    {
        Some(k) => k,
        None if spec.kernel.is_none() => {
            super::kernels::ensure(&svc, &kernel_name, &kernel_name, &progress).await?
        }
        None => return Err(super::kernels::get(&svc, &kernel_name).unwrap_err()),
    };
    if spec.disk_bytes < image.work_seed_bytes {
        return Err(RpcError::bad_request(format!(
            "--disk-size must be at least the image's work seed ({})",
            crate::size::format_size(image.work_seed_bytes)
        )));
    }
    // From the reservation on, the work runs on its own task: a client that
    // goes away (Ctrl-C) aborts this handler, and must not leave a reserved
    // row that no actor owns. The VM is then created and started anyway, and
    // can be deleted like any other.
    let task = tokio::spawn(reserve_and_start(svc, spec, kind, image, kernel, events));
    task.await
        .map_err(|e| RpcError::failed(format!("creating the VM: {e}")))?
}

async fn reserve_and_start(
    svc: Arc<Services>,
    spec: VmCreateSpec,
    kind: crate::protocol::cli::VmmKind,
    image: crate::store::ImageRecord,
    kernel: crate::store::KernelRecord,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    let net = &svc.config.network;
    let reserved = loop {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(crate::names::generate_vm_name);
        let rec = VmRecord::new(
            &name,
            &image.name,
            &kernel.name,
            spec.vcpu,
            spec.memory_mib,
            spec.disk_bytes,
            spec.nat,
            kind,
        );
        match svc.store.reserve_vm(&rec, net.bridge_ip, net.prefix_len) {
            Ok(Some(r)) => break r,
            Ok(None) if spec.name.is_none() => continue,
            Ok(None) => {
                return Err(RpcError::new(
                    ErrorCode::AlreadyExists,
                    format!("a VM named {name:?} exists"),
                ))
            }
            Err(e) => return Err(RpcError::failed(e.to_string())),
        }
    };
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
    let reg = registry(&svc)?;
    ractor::call_t!(
        reg,
        |reply| RegistryMsg::Adopt {
            id: reserved.id.clone(),
            reply
        },
        CALL_MS
    )
    .map_err(|e| RpcError::failed(format!("registering the VM: {e}")))??;
    start(svc, &reserved.name, events).await
}

pub async fn start(
    svc: Arc<Services>,
    name: &str,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    let rec = run_job(&svc, name, "start", move |ctx| async move {
        let mut st = Stages::new(events);
        let (rec, r) = lifecycle::start(&ctx, &mut st).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await?;
    Ok(Reply::Vm(rec.view()))
}

pub async fn stop(
    svc: Arc<Services>,
    name: &str,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    let rec = run_job(&svc, name, "stop", move |ctx| async move {
        let mut st = Stages::new(events);
        let (rec, r) = lifecycle::stop(&ctx, &mut st).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await?;
    Ok(Reply::Vm(rec.view()))
}

pub async fn restart(
    svc: Arc<Services>,
    name: &str,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    let rec = run_job(&svc, name, "restart", move |ctx| async move {
        let mut st = Stages::new(events);
        let (rec, r) = lifecycle::stop(&ctx, &mut st).await;
        if let Err(e) = r {
            return (Some(rec), Err(e));
        }
        let ctx = JobCtx { record: rec, ..ctx };
        let (rec, r) = lifecycle::start(&ctx, &mut st).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await?;
    Ok(Reply::Vm(rec.view()))
}

pub async fn kill(svc: Arc<Services>, name: &str, signal: String) -> Result<Reply, RpcError> {
    crate::helper::vmm_ops::parse_signal(&signal)?;
    let rec = run_job(&svc, name, "kill", move |ctx| async move {
        let (rec, r) = lifecycle::kill(&ctx, &signal).await;
        (Some(rec.clone()), r.map(|_| rec))
    })
    .await?;
    Ok(Reply::Vm(rec.view()))
}

pub async fn delete(svc: Arc<Services>, name: &str) -> Result<Reply, RpcError> {
    run_job(&svc, name, "delete", |ctx| async move {
        match lifecycle::delete(&ctx).await {
            Ok(()) => (None, Ok(())),
            Err(e) => (Some(ctx.record), Err(e)),
        }
    })
    .await?;
    Ok(Reply::Done)
}

/// Deletes every VM that is not running (created, stopped, error).
pub async fn prune(svc: Arc<Services>) -> Result<Reply, RpcError> {
    let vms = svc
        .store
        .list_vms()
        .map_err(|e| RpcError::failed(e.to_string()))?;
    let mut gone = Vec::new();
    for v in vms {
        if matches!(
            v.state,
            VmState::Created | VmState::Stopped | VmState::Error
        ) {
            let name = v.name.clone();
            // Checked again inside the job: the VM may have started meanwhile.
            let r = run_job(&svc, &name, "prune", |ctx| async move {
                if matches!(
                    ctx.record.state,
                    VmState::Created | VmState::Stopped | VmState::Error
                ) {
                    match lifecycle::delete(&ctx).await {
                        Ok(()) => (None, Ok(true)),
                        Err(e) => (Some(ctx.record), Err(e)),
                    }
                } else {
                    (Some(ctx.record), Ok(false))
                }
            })
            .await;
            match r {
                Ok(true) => gone.push(name),
                Ok(false) => {}
                Err(e) => tracing::warn!(vm = %name, "prune: {}", e.message),
            }
        }
    }
    Ok(Reply::Pruned(gone))
}

pub async fn set(
    svc: Arc<Services>,
    name: &str,
    vcpu: Option<u32>,
    memory_mib: Option<u32>,
    nat: Option<bool>,
) -> Result<Reply, RpcError> {
    if vcpu.is_none() && memory_mib.is_none() && nat.is_none() {
        return Err(RpcError::bad_request(
            "nothing to change: give --vcpu, --memory and/or --nat/--no-nat",
        ));
    }
    let rec = run_job(&svc, name, "set", move |ctx| async move {
        let mut rec = ctx.record.clone();
        if matches!(
            rec.state,
            VmState::Running | VmState::Starting | VmState::Stopping
        ) {
            let msg = format!(
                "VM {} is {}; stop it first (banger vm stop {})",
                rec.name, rec.state, rec.name
            );
            return (Some(rec), Err(RpcError::bad_request(msg)));
        }
        let probe = VmCreateSpec {
            name: None,
            image: None,
            kernel: None,
            vcpu: vcpu.unwrap_or(rec.vcpu),
            memory_mib: memory_mib.unwrap_or(rec.memory_mib),
            disk_bytes: rec.disk_bytes,
            nat: false,
            vmm: Default::default(),
        };
        if let Err(e) = validate_spec(&probe) {
            return (Some(rec), Err(e));
        }
        rec.vcpu = probe.vcpu;
        rec.memory_mib = probe.memory_mib;
        if let Some(n) = nat {
            rec.nat = n;
        }
        match ctx.services.store.put_vm(&rec) {
            Ok(()) => (Some(rec.clone()), Ok(rec)),
            Err(e) => (Some(ctx.record), Err(RpcError::failed(e.to_string()))),
        }
    })
    .await?;
    Ok(Reply::Vm(rec.view()))
}

fn tail_file(path: &std::path::Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub async fn logs(svc: Arc<Services>, name: &str) -> Result<Reply, RpcError> {
    let rec = record(&svc, name).await?;
    let p = svc.layout.vm(&rec.id);
    Ok(Reply::Logs {
        serial: tail_file(&p.serial_log(), 256 << 10),
        vmm: tail_file(&p.vmm_log(), 64 << 10),
    })
}

/// Refuses a VM that is not running, saying how to start it.
pub fn require_running(rec: &VmRecord) -> Result<(), RpcError> {
    if rec.state != VmState::Running || !rec.vmm_pid.is_some_and(crate::host::process::pid_alive) {
        return Err(RpcError::bad_request(format!(
            "VM {} is not running (state {}); start it with: banger vm start {}",
            rec.name, rec.state, rec.name
        )));
    }
    Ok(())
}

/// Runs a command in a running VM over SSH, streaming its output.
pub async fn exec(
    svc: Arc<Services>,
    name: &str,
    argv: Vec<String>,
    cwd: Option<String>,
    auto_prepare: bool,
    events: mpsc::Sender<Event>,
) -> Result<Reply, RpcError> {
    if argv.is_empty() {
        return Err(RpcError::bad_request("no command given"));
    }
    let mut rec = record(&svc, name).await?;
    require_running(&rec)?;
    // In a workspace: warn when the host moved on, or re-sync first.
    let (argv, cwd) = match rec.workspace.clone() {
        Some(ws) => {
            if !ws.pinned {
                let now = crate::workspace::host_head(std::path::Path::new(&ws.host_path));
                if now.as_deref().is_some_and(|h| h != ws.head) {
                    let now = now.unwrap_or_default();
                    if auto_prepare {
                        let spec = crate::protocol::cli::WorkspaceSpec {
                            path: ws.host_path.clone(),
                            mode: ws.mode,
                            include_untracked: ws.include_untracked,
                            from: None,
                        };
                        super::workspaces::prepare(svc.clone(), name, spec, events.clone()).await?;
                        rec = record(&svc, name).await?;
                    } else {
                        let _ = events
                            .send(Event::Log(format!(
                                "warning: {} moved from {} to {} since the workspace was prepared; run with --auto-prepare to sync it first",
                                ws.host_path,
                                &ws.head[..12.min(ws.head.len())],
                                &now[..12.min(now.len())]
                            )))
                            .await;
                    }
                }
            }
            (
                crate::workspace::archive::exec_argv(&argv),
                cwd.or(Some(ws.guest_path)),
            )
        }
        None => (argv, cwd),
    };
    let (ip, host_key) = (
        rec.ip.clone().unwrap_or_default(),
        rec.host_key.clone().unwrap_or_default(),
    );
    let key = SshFiles::of(&svc.layout).key;
    let session = crate::vm::ssh::connect(&ip, &key, &host_key, Duration::from_secs(20))
        .await
        .map_err(|e| RpcError::failed(format!("ssh to {name}: {e}")))?;
    let cmd = crate::vm::ssh::command_line(&argv, cwd.as_deref());
    let code = session
        .exec(&cmd, &events)
        .await
        .map_err(|e| RpcError::failed(e.to_string()));
    session.close().await;
    Ok(Reply::Exit { code: code? })
}

/// How the CLI reaches a running VM with the system `ssh`.
pub async fn ssh(svc: Arc<Services>, name: &str) -> Result<Reply, RpcError> {
    let rec = record(&svc, name).await?;
    require_running(&rec)?;
    let f = SshFiles::of(&svc.layout);
    lifecycle::refresh_ssh_config(&svc);
    Ok(Reply::Ssh(SshTarget {
        name: rec.name.clone(),
        ip: rec.ip.clone().unwrap_or_default(),
        user: "root".into(),
        identity: f.key.display().to_string(),
        known_hosts: f.known_hosts.display().to_string(),
        host_alias: format!("{}.vm", rec.name),
        ssh_config: f.config.display().to_string(),
    }))
}
