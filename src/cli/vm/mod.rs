//! `banger vm ...`: create, run, lifecycle, ssh, logs.

use std::io::IsTerminal;

use clap::{Args, Subcommand};

use super::progress::ProgressView;
use super::render::{self, CliError, Table};
use super::{client, out, style, Ctx, ListArgs};
use crate::config::{Config, HostFacts};
use crate::domain::{VmState, VmmChoice};
use crate::protocol::cli::{
    Reply, Request, SshTarget, VmCreateSpec, VmView, WorkspaceSpec, WorkspaceView,
};
use crate::size::{format_size, parse_size};

mod args;
pub mod egress;

pub use args::*;

fn memory_mib(s: &str) -> Result<u32, CliError> {
    let b =
        parse_size(s).map_err(|e| CliError::usage("invalid value", format!("--memory: {e}")))?;
    Ok((b >> 20) as u32)
}

/// Resolves flags against config and host into a spec (and checks the name
/// before anything is sent).
/// `repo`: the repository `vm run` ships, whose `.banger.toml` may set an
/// egress policy.
pub fn spec(
    ctx: &Ctx,
    a: &CreateArgs,
    repo: Option<&std::path::Path>,
) -> Result<VmCreateSpec, CliError> {
    let cfg = Config::load(&ctx.layout.config_file(), HostFacts::probe())
        .map_err(|e| CliError::usage("bad config", e.to_string()))?;
    let name = match &a.name {
        Some(n) => {
            crate::names::validate_vm_name(n)
                .map_err(|e| CliError::usage("invalid name", e.to_string()))?;
            n.clone()
        }
        None => crate::names::generate_vm_name(),
    };
    let (egress, secrets) = egress::policy(&a.egress, repo, &cfg.secrets)?;
    Ok(VmCreateSpec {
        name: Some(name),
        image: a.image.clone(),
        kernel: a.kernel.clone(),
        vcpu: a.vcpu.unwrap_or(cfg.vm_defaults.vcpu.value),
        memory_mib: match &a.memory {
            Some(m) => memory_mib(m)?,
            None => cfg.vm_defaults.memory_mib.value,
        },
        disk_bytes: match &a.disk_size {
            Some(d) => parse_size(d)
                .map_err(|e| CliError::usage("invalid value", format!("--disk-size: {e}")))?,
            None => cfg.vm_defaults.disk_bytes.value,
        },
        nat: a.nat,
        vmm: a.vmm.unwrap_or(cfg.vmm),
        from: a.from.clone(),
        cold: a.cold,
        delete_on_failure: false,
        links: a.link.clone(),
        egress,
        secrets,
    })
}

fn spec_line(s: &VmCreateSpec) {
    eprintln!(
        "spec: {} vcpu | {} MiB | {} disk{}{}",
        s.vcpu,
        s.memory_mib,
        format_size(s.disk_bytes),
        if s.nat { " | nat" } else { "" },
        s.from
            .as_deref()
            .map(|f| format!(" | from snapshot {f}"))
            .unwrap_or_default()
    );
}

async fn call(ctx: &Ctx, req: Request) -> Result<Reply, CliError> {
    let mut c = client::connect(&ctx.layout, true).await?;
    let view = ProgressView::new();
    let r = client::request(&mut c, &ctx.layout, req, |e| view.event(e)).await;
    view.finish();
    r
}

async fn create(ctx: &Ctx, mut s: VmCreateSpec) -> Result<VmView, CliError> {
    if let Some(from) = &s.from {
        // A restored VM has its snapshot's shape: the spec line says so.
        match call(ctx, Request::SnapshotShow { name: from.clone() }).await? {
            Reply::Snapshot(v) => {
                (s.vcpu, s.memory_mib, s.disk_bytes) = (v.vcpu, v.memory_mib, v.disk_bytes)
            }
            other => return Err(client::unexpected(other)),
        }
    }
    spec_line(&s);
    match call(ctx, Request::VmCreate(s)).await? {
        Reply::Vm(v) => Ok(v),
        other => Err(client::unexpected(other)),
    }
}

/// Runs a command in a VM, passing its output through; returns its exit
/// code (and prints why it could not run, for 126 and 127).
async fn exec(
    ctx: &Ctx,
    name: &str,
    argv: Vec<String>,
    opts: super::exec::ExecOpts,
) -> Result<super::exec::ExecResult, CliError> {
    let r = super::exec::exec(ctx, name, argv, opts).await?;
    if let Some(m) = &r.message {
        eprintln!("banger: {m}");
    }
    Ok(r)
}

/// The system `ssh` into a VM; returns its exit code.
async fn system_ssh(ctx: &Ctx, name: &str, command: &[String]) -> Result<i32, CliError> {
    let target = match call(ctx, Request::VmSsh { name: name.into() }).await? {
        Reply::Ssh(t) => t,
        other => return Err(client::unexpected(other)),
    };
    let code = run_ssh(&target, command)?;
    // Say so when the VM outlives the session, with how its agent is.
    if let Ok(h) = super::services::fetch_health(ctx, name).await {
        if matches!(h.state, VmState::Running | VmState::Degraded) {
            eprintln!(
                "{} VM {name} is still running ({}); stop it with: banger vm stop {name}",
                style::dim(ctx.style.stderr, "note:"),
                super::services::health_line(&h)
            );
        }
    }
    Ok(code)
}

fn run_ssh(t: &SshTarget, command: &[String]) -> Result<i32, CliError> {
    let ssh = crate::host::system_tool("ssh")
        .ok_or_else(|| CliError::local("ssh missing", "install openssh-client"))?;
    let mut cmd = std::process::Command::new(ssh);
    cmd.args(["-F", &t.ssh_config]);
    if command.is_empty() {
        cmd.arg("-t");
    }
    cmd.arg(&t.host_alias);
    if !command.is_empty() {
        cmd.arg("--")
            .arg(super::render::command_line(command, None));
    }
    let st = cmd
        .status()
        .map_err(|e| CliError::local("ssh failed", e.to_string()))?;
    Ok(st.code().unwrap_or(255))
}

async fn prepare(ctx: &Ctx, name: &str, spec: WorkspaceSpec) -> Result<WorkspaceView, CliError> {
    match call(
        ctx,
        Request::WorkspacePrepare {
            name: name.into(),
            spec,
        },
    )
    .await?
    {
        Reply::Workspace(w) => Ok(w),
        other => Err(client::unexpected(other)),
    }
}

/// Marks an error of `vm run` as banger's, not the command's (exit 125).
pub(super) fn ours(mut e: CliError) -> CliError {
    if e.exit_code == 1 {
        e.exit_code = 125;
    }
    e
}

fn vm_table(vms: &[VmView]) -> String {
    let mut t = Table::new([
        "NAME",
        "STATE",
        "IMAGE",
        "VCPU",
        "MEMORY",
        "DISK",
        "IP",
        "NAT",
        "VMM",
        "WORKSPACE",
        "CREATED",
    ]);
    for v in vms {
        t.row([
            v.name.clone(),
            v.state.to_string(),
            v.image.clone(),
            v.vcpu.to_string(),
            format!("{}M", v.memory_mib),
            format_size(v.disk_bytes),
            v.ip.clone().unwrap_or_else(|| "-".into()),
            match (v.egress.is_some(), v.nat) {
                (true, _) => "policy",
                (false, true) => "yes",
                (false, false) => "no",
            }
            .to_string(),
            v.vmm.as_str().to_string(),
            v.workspace
                .as_deref()
                .and_then(|w| std::path::Path::new(w).file_name())
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "-".into()),
            render::age(v.created_at_unix),
        ]);
    }
    t.render()
}

fn vm_detail(vm: &VmView) -> String {
    let mut t = Table::bare();
    t.row(["name".to_string(), vm.name.clone()]);
    t.row(["id".to_string(), vm.id.clone()]);
    t.row(["state".to_string(), vm.state.to_string()]);
    t.row(["image".to_string(), vm.image.clone()]);
    t.row(["kernel".to_string(), vm.kernel.clone()]);
    t.row(["vmm".to_string(), vm.vmm.as_str().to_string()]);
    t.row(["vcpu".to_string(), vm.vcpu.to_string()]);
    t.row(["memory".to_string(), format!("{} MiB", vm.memory_mib)]);
    t.row(["disk".to_string(), format_size(vm.disk_bytes)]);
    t.row([
        "ip".to_string(),
        vm.ip.clone().unwrap_or_else(|| "-".into()),
    ]);
    t.row([
        "nat".to_string(),
        if vm.nat { "yes" } else { "no" }.to_string(),
    ]);
    t.row([
        "pid".to_string(),
        vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
    ]);
    t.row([
        "boot id".to_string(),
        vm.boot_id.clone().unwrap_or_else(|| "-".into()),
    ]);
    t.row(["created".to_string(), render::age(vm.created_at_unix)]);
    if let Some(s) = vm.started_at_unix {
        t.row(["started".to_string(), render::age(s)]);
    }
    t.row([
        "workspace".to_string(),
        vm.workspace.clone().unwrap_or_else(|| "-".into()),
    ]);
    if let Some(p) = &vm.egress {
        t.row(["egress".to_string(), p.summary()]);
    }
    if !vm.links.is_empty() {
        t.row(["links".to_string(), vm.links.join(", ")]);
    }
    if let Some(e) = &vm.last_error {
        t.row(["last error".to_string(), e.clone()]);
    }
    if let Some(e) = &vm.agent_error {
        t.row(["agent".to_string(), format!("unreachable: {e}")]);
    }
    if vm.child_restarts > 0 {
        t.row([
            "helper restarts".to_string(),
            format!(
                "{} (banger vm health {} says which and why)",
                vm.child_restarts, vm.name
            ),
        ]);
    }
    t.render()
}

pub async fn list(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    let vms = match call(ctx, Request::VmList).await? {
        Reply::Vms(v) => v,
        other => return Err(client::unexpected(other)),
    };
    out(&if json {
        render::json(&vms)
    } else {
        vm_table(&vms)
    })?;
    Ok(0)
}

fn check_name(name: &str) -> Result<(), CliError> {
    crate::names::validate_vm_name(name).map_err(|e| CliError::usage("invalid name", e.to_string()))
}

async fn simple(ctx: &Ctx, name: &str, req: Request) -> Result<u8, CliError> {
    check_name(name)?;
    match call(ctx, req).await? {
        Reply::Vm(v) => out(&format!("{} {}\n", v.name, v.state))?,
        Reply::Done => out(&format!("deleted {name}\n"))?,
        other => return Err(client::unexpected(other)),
    }
    Ok(0)
}

pub async fn run(ctx: &Ctx, cmd: VmCommand) -> Result<u8, CliError> {
    match cmd {
        VmCommand::Run(a) => super::run::run(ctx, a).await.map_err(ours),
        VmCommand::Create(a) => {
            let s = spec(ctx, &a, None)?;
            let v = create(ctx, s).await?;
            out(&format!(
                "{} running at {}\n",
                v.name,
                v.ip.unwrap_or_default()
            ))?;
            Ok(0)
        }
        VmCommand::Start { name } => {
            simple(ctx, &name, Request::VmStart { name: name.clone() }).await
        }
        VmCommand::Stop { name } => {
            simple(ctx, &name, Request::VmStop { name: name.clone() }).await
        }
        VmCommand::Restart { name } => {
            simple(ctx, &name, Request::VmRestart { name: name.clone() }).await
        }
        VmCommand::Snapshot {
            name,
            snapshot,
            stop,
        } => snapshot_cmd(ctx, name, snapshot, stop).await,
        VmCommand::Kill { name, signal } => {
            simple(
                ctx,
                &name,
                Request::VmKill {
                    name: name.clone(),
                    signal,
                },
            )
            .await
        }
        VmCommand::Delete { name } => {
            simple(
                ctx,
                &name,
                Request::VmDelete {
                    name: name.clone(),
                    id: None,
                },
            )
            .await
        }
        VmCommand::Prune { force } => prune(ctx, force).await,
        VmCommand::List(a) => list(ctx, a.json).await,
        VmCommand::Show { name, json } => {
            check_name(&name)?;
            match call(ctx, Request::VmShow { name }).await? {
                Reply::Vm(v) => out(&if json {
                    render::json(&v)
                } else {
                    vm_detail(&v)
                })?,
                other => return Err(client::unexpected(other)),
            }
            Ok(0)
        }
        VmCommand::Logs { name, vmm } => {
            check_name(&name)?;
            match call(ctx, Request::VmLogs { name }).await? {
                Reply::Logs { serial, vmm: vlog } => out(if vmm { &vlog } else { &serial })?,
                other => return Err(client::unexpected(other)),
            }
            Ok(0)
        }
        VmCommand::Set {
            name,
            vcpu,
            memory,
            disk_size,
            nat,
            no_nat,
            egress: e,
            disallow_host,
        } => {
            let change = egress::change(&e, &disallow_host)?;
            set(ctx, name, vcpu, memory, disk_size, (nat, no_nat), change).await
        }
        VmCommand::Egress { name, json, follow } => egress::show(ctx, &name, json, follow).await,
        VmCommand::Exec {
            name,
            exec: e,
            auto_prepare,
            command,
        } => {
            check_name(&name)?;
            // As with `vm run`: 125 when banger failed around the command.
            let r = exec(ctx, &name, command, e.opts(auto_prepare))
                .await
                .map_err(ours)?;
            Ok(r.code.clamp(0, 255) as u8)
        }
        VmCommand::Ports { name, json } => {
            check_name(&name)?;
            super::services::ports(ctx, name, json).await
        }
        VmCommand::Stats { name, json } => {
            check_name(&name)?;
            super::services::stats(ctx, name, json).await
        }
        VmCommand::Health { name, json } => {
            check_name(&name)?;
            super::services::health(ctx, name, json).await
        }
        VmCommand::Ping { name, count } => ping(ctx, name, count).await,
        VmCommand::Workspace(w) => workspace(ctx, w).await,
        VmCommand::Ssh { name, command } => {
            check_name(&name)?;
            let code = system_ssh(ctx, &name, &command).await?;
            Ok(code.clamp(0, 255) as u8)
        }
    }
}

/// `vm snapshot`.
async fn snapshot_cmd(
    ctx: &Ctx,
    name: String,
    snapshot: Option<String>,
    stop: bool,
) -> Result<u8, CliError> {
    check_name(&name)?;
    match call(
        ctx,
        Request::VmSnapshot {
            name,
            snapshot,
            stop,
            auto: false,
            scope: None,
        },
    )
    .await?
    {
        Reply::Snapshot(v) => out(&format!(
            "snapshot {} of {} ({})\n",
            v.name,
            v.source_vm,
            format_size(v.size_bytes)
        ))?,
        other => return Err(client::unexpected(other)),
    }
    Ok(0)
}

/// `vm prune [-f]`: lists what would go and asks, unless forced.
async fn prune(ctx: &Ctx, force: bool) -> Result<u8, CliError> {
    if !force {
        let vms = match call(ctx, Request::VmList).await? {
            Reply::Vms(v) => v,
            other => return Err(client::unexpected(other)),
        };
        let doomed: Vec<VmView> = vms.into_iter().filter(|v| v.state.prunable()).collect();
        if doomed.is_empty() {
            out("nothing to prune: every VM is running\n")?;
            return Ok(0);
        }
        out(&vm_table(&doomed))?;
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(
                "confirmation needed",
                "these VMs would be deleted; run again with -f to confirm",
            ));
        }
        eprint!(
            "Delete these {} VM(s) and their disks? [y/N] ",
            doomed.len()
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            out("nothing deleted\n")?;
            return Ok(0);
        }
    }
    match call(ctx, Request::VmPrune).await? {
        Reply::Pruned(names) if names.is_empty() => out("nothing to prune\n")?,
        Reply::Pruned(names) => out(&format!("deleted {}\n", names.join(" ")))?,
        other => return Err(client::unexpected(other)),
    }
    Ok(0)
}

/// `vm ping`: agent round trips.
async fn ping(ctx: &Ctx, name: String, count: u32) -> Result<u8, CliError> {
    check_name(&name)?;
    let mut c = client::connect(&ctx.layout, true).await?;
    for _ in 0..count.max(1) {
        let t = std::time::Instant::now();
        match client::request(
            &mut c,
            &ctx.layout,
            Request::VmPing { name: name.clone() },
            |_| {},
        )
        .await?
        {
            Reply::Ping { rtt_us } => out(&format!(
                "{name}: agent round trip {:.3} ms (request {:.3} ms)\n",
                rtt_us as f64 / 1000.0,
                t.elapsed().as_secs_f64() * 1000.0
            ))?,
            other => return Err(client::unexpected(other)),
        }
    }
    Ok(0)
}

/// `vm workspace prepare|export`.
async fn workspace(ctx: &Ctx, cmd: WorkspaceCommand) -> Result<u8, CliError> {
    match cmd {
        WorkspaceCommand::Prepare {
            name,
            path,
            ws,
            from,
            branch,
        } => {
            check_name(&name)?;
            let spec = super::run::ws_spec(&path, &ws, from.zip(branch))?;
            if ws.dry_run {
                return super::run::dry_run(ctx, &spec).await;
            }
            let w = prepare(ctx, &name, spec).await?;
            out(&format!(
                "prepared {} ({} files, {}) at {} on branch {} ({})\n",
                w.host_path,
                w.files,
                w.mode.as_str(),
                w.guest_path,
                w.branch,
                &w.head[..12.min(w.head.len())]
            ))?;
            Ok(0)
        }
        WorkspaceCommand::Export {
            name,
            base_commit,
            output,
        } => {
            check_name(&name)?;
            let mut c = client::connect(&ctx.layout, true).await?;
            let mut sink: Box<dyn std::io::Write> = match &output {
                Some(f) => Box::new(
                    std::fs::File::create(f)
                        .map_err(|e| CliError::local("cannot write", format!("{f}: {e}")))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut write_err = None;
            let req = Request::WorkspaceExport { name, base_commit };
            let r = client::request(&mut c, &ctx.layout, req, |e| {
                if let crate::protocol::cli::Event::Stdout(d) = e {
                    if let Err(err) = sink.write_all(&d) {
                        write_err.get_or_insert(err);
                    }
                }
            })
            .await;
            let _ = sink.flush();
            if let Some(e) = write_err {
                return Err(CliError::local("cannot write", e.to_string()));
            }
            match r? {
                Reply::Done => Ok(0),
                other => Err(client::unexpected(other)),
            }
        }
    }
}

/// `vm set NAME [--vcpu N] [--memory M] [--disk-size S] [--nat|--no-nat]
/// [--egress deny|open] [--allow-host H] [--allow-net N] [--disallow-host H]`.
async fn set(
    ctx: &Ctx,
    name: String,
    vcpu: Option<u32>,
    memory: Option<String>,
    disk_size: Option<String>,
    (nat, no_nat): (bool, bool),
    egress: crate::domain::egress::EgressChange,
) -> Result<u8, CliError> {
    let memory_mib = memory.as_deref().map(memory_mib).transpose()?;
    let disk_bytes = disk_size
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| CliError::usage("invalid value", format!("--disk-size: {e}")))?;
    let nat = if nat {
        Some(true)
    } else if no_nat {
        Some(false)
    } else {
        None
    };
    check_name(&name)?;
    let egress_changed = !egress.is_empty();
    let req = Request::VmSet {
        name: name.clone(),
        vcpu,
        memory_mib,
        nat,
        disk_bytes,
        egress,
    };
    let v = match call(ctx, req).await? {
        Reply::Vm(v) => v,
        other => return Err(client::unexpected(other)),
    };
    out(&format!(
        "{} {}: {} vcpu, {} MiB, disk {}, NAT {}\n",
        v.name,
        v.state,
        v.vcpu,
        v.memory_mib,
        format_size(v.disk_bytes),
        if v.nat { "on" } else { "off" }
    ))?;
    if egress_changed {
        out(&format!(
            "egress: {}\n",
            v.egress
                .as_ref()
                .map(|p| p.summary())
                .unwrap_or_else(|| "no policy".into())
        ))?;
    }
    if v.state.may_have_vmm() && (vcpu.is_some() || memory_mib.is_some()) {
        out(&format!(
            "vCPU and memory apply at the next start: banger vm restart {}\n",
            v.name
        ))?;
    }
    if let Some(e) = v
        .last_error
        .as_ref()
        .filter(|e| (nat.is_some() || egress_changed) && e.contains(crate::domain::DNS_UNCHANGED))
    {
        eprintln!("warning: {e}");
    }
    Ok(0)
}
