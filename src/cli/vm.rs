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

pub const VM_LONG: &str = "\
Create, run and manage VMs.

The 80% command:
  banger vm run --rm -- make test
boots a VM on the default image, runs the command, streams its output,
exits with its exit code and deletes the VM.

Long-lived VMs:
  banger vm create --name dev        create and boot (prints `spec:` and stages)
  banger vm ssh dev                  a shell inside (or: banger vm ssh dev -- uname -a)
  banger vm stop dev / start dev     data on the work disk (/root) survives
  banger vm delete dev               remove it and its disks

Look around: banger vm list, banger vm show <name>, banger vm logs <name>.";

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM, boot it, optionally run a command, optionally delete it
    #[command(long_about = RUN_LONG)]
    Run(RunArgs),
    /// Create and boot a VM
    #[command(
        long_about = "Create and boot a VM on the default image (or --image).\n\nPrints `spec:` first, then each boot stage, then `ready in <time>`.\n\n  banger vm create --name dev\n  banger vm create --name big --vcpu 4 --memory 8G --disk-size 32G --nat"
    )]
    Create(CreateArgs),
    /// Start a stopped VM
    #[command(
        long_about = "Boot a stopped VM again: same disks, workspace and address; a new boot id.\n\n  banger vm start dev"
    )]
    Start { name: String },
    /// Stop a running VM gracefully
    #[command(
        long_about = "Stop a running VM: sync in the guest, power off through its agent (else SSH,\nthen the VMM's power button), killed only after a bounded wait. Disks and\nworkspace stay; `banger vm start` boots it again.\n\n  banger vm stop dev"
    )]
    Stop { name: String },
    /// Stop then start a VM
    #[command(long_about = "Stop then start a VM (a new boot id).\n\n  banger vm restart dev")]
    Restart { name: String },
    /// Save a running VM's memory, devices and disks as a snapshot
    #[command(
        long_about = "Pause a running VM, save its memory, devices and disks as a snapshot, and resume\nit (or stop it with --stop). New VMs start from it with `vm create|run --from`,\neach with its own name, addresses, SSH host key and reseeded RNG.\n\n  banger vm snapshot dev --name warm\n  banger vm run --rm --from warm -- cargo test\n  banger snapshot list"
    )]
    Snapshot {
        name: String,
        /// Snapshot name (default: <vm>-<UTC time>)
        #[arg(long = "name", id = "snapshot_name")]
        snapshot: Option<String>,
        /// Stop the VM afterwards instead of resuming it
        #[arg(long)]
        stop: bool,
    },
    /// Force-kill a VM (use when 'vm stop' hangs)
    #[command(
        long_about = "Send a signal to the VM's VMM. KILL (the default) ends it at once; the VM's\ntap and NAT rules are released. Other signals are delivered and not waited on.\n\n  banger vm kill dev\n  banger vm kill dev --signal TERM"
    )]
    Kill {
        name: String,
        /// TERM KILL INT HUP QUIT USR1 USR2 ABRT (SIGKILL, kill and 9 work too)
        #[arg(long, short = 's', default_value = "KILL")]
        signal: crate::domain::Signal,
    },
    /// Stop a VM and remove its disks (irreversible)
    #[command(
        visible_alias = "rm",
        long_about = "Stop a VM if it runs and remove it with its disks and workspace (irreversible).\n\n  banger vm delete dev\n  banger vm rm dev"
    )]
    Delete { name: String },
    /// Delete every VM that is not running
    #[command(
        long_about = "Delete every VM that is not running (created, stopped, error). Asks first\nunless -f.\n\n  banger vm prune\n  banger vm prune -f"
    )]
    Prune {
        /// Do not ask
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// List VMs
    #[command(
        visible_alias = "ls",
        long_about = "List VMs: name, state (running, degraded, stopped, ...), image, address.\n\n  banger vm list\n  banger ps --json"
    )]
    List(ListArgs),
    /// Show one VM
    #[command(
        long_about = "Show one VM: state, image, resources, address, VMM.\n\n  banger vm show dev\n  banger vm show dev --json"
    )]
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a VM's serial console (or, with --vmm, its VMM log)
    #[command(
        long_about = "Print a VM's serial console (kernel and init messages), or with --vmm the\nVMM's own log. Both are kept bounded (the newest part).\n\n  banger vm logs dev\n  banger vm logs dev --vmm"
    )]
    Logs {
        name: String,
        /// The VMM's own log instead of the console
        #[arg(long)]
        vmm: bool,
    },
    /// Change vcpu, memory or NAT of a stopped VM
    #[command(
        long_about = "Change a stopped VM's resources; they apply at the next start.\n\n  banger vm stop dev && banger vm set dev --vcpu 4 --memory 4G && banger vm start dev"
    )]
    Set {
        name: String,
        #[arg(long)]
        vcpu: Option<u32>,
        /// e.g. 2048 (MiB) or 4G
        #[arg(long)]
        memory: Option<String>,
        /// Give the VM outbound network access
        #[arg(long, conflicts_with = "no_nat")]
        nat: bool,
        /// Remove outbound network access
        #[arg(long)]
        no_nat: bool,
    },
    /// Put a git repository in a VM, or export its edits as a patch
    #[command(subcommand, long_about = WORKSPACE_LONG)]
    Workspace(WorkspaceCommand),
    /// Run a command in a running VM (in its workspace, if it has one)
    #[command(long_about = EXEC_LONG)]
    Exec {
        name: String,
        #[command(flatten)]
        exec: ExecArgs,
        /// Re-sync the workspace first when the host's HEAD moved
        #[arg(long)]
        auto_prepare: bool,
        /// The command (after --)
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Round trip to a running VM's agent
    #[command(
        long_about = "Send one request that does nothing to the VM's agent and print the round trip.\n\n  banger vm ping dev\n  banger vm ping dev -c 10"
    )]
    Ping {
        name: String,
        /// How many round trips
        #[arg(short = 'c', long, default_value_t = 1)]
        count: u32,
    },
    /// Listening sockets in a running VM, with where to reach them
    #[command(
        long_about = "Listening TCP and UDP sockets in the guest (from its agent), each with its\nprocess and the endpoint to reach it at from the host.\n\n  banger vm ports dev\n  banger vm ports dev --json"
    )]
    Ports {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// CPU, memory and disk of a running VM, host and guest side
    #[command(
        long_about = "Host side: the VMM's CPU % and RSS, the space the VM's files take.\nGuest side (from its agent): load, memory, disks, processes.\n\n  banger vm stats dev\n  banger vm stats dev --json"
    )]
    Stats {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Does the VM's agent answer; restarts of its helpers
    #[command(
        long_about = "Asks the VM's agent now (3 s at most) and shows its boot id, uptime and init,\nplus how often the VM's host-side helpers were restarted and why.\nExit code 1 when the agent does not answer.\n\n  banger vm health dev"
    )]
    Health {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Open a shell in a running VM (system ssh), or run a command
    #[command(
        long_about = "SSH into a running VM with banger's key and pinned host key.\n\n  banger vm ssh dev\n  banger vm ssh dev -- uname -a\n\n`ssh -F ~/.local/state/banger/ssh/ssh_config dev.vm` works too."
    )]
    Ssh {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
}

const EXEC_LONG: &str = "\
Run a command in a running VM through its agent, streaming its output and
returning its exit code. The argv is passed exactly as given (no shell).
With a prepared workspace it runs in /root/repo (through `mise exec --` when
the guest has mise), and warns when the host repo moved on since prepare.

Stdin is forwarded when it is a pipe or a file (or with -i); -t gives the
command a terminal. Ctrl-C interrupts the command (a second one kills it).

  banger vm exec dev -- make test
  echo data | banger vm exec dev -- cat
  banger vm exec -t dev -- bash                       an interactive shell
  banger vm exec dev --auto-prepare -- cargo test     sync the workspace first if needed

Exit codes: the command's own; 126 when it cannot be run, 127 when it does
not exist, 128+N when a signal killed it.";

/// Flags of commands that run something in the guest.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Give the command a terminal (for shells and editors)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Forward stdin even when it is a terminal
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Set an environment variable in the guest (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = super::exec::parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (default: the workspace, else /root)
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
}

impl ExecArgs {
    pub(super) fn opts(&self, auto_prepare: bool) -> super::exec::ExecOpts {
        super::exec::ExecOpts {
            tty: self.tty,
            interactive: self.interactive,
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            auto_prepare,
        }
    }
}

const WORKSPACE_LONG: &str = "\
A workspace is a host git repository copied into a VM at /root/repo.

  banger vm workspace prepare dev ./myrepo        tracked files + a shallow repo
  banger vm workspace prepare dev . --dry-run     list exactly what would ship
  banger vm exec dev -- make test                 runs in /root/repo
  banger vm workspace export dev -o fix.patch     the guest's edits, for `git apply`

Gitignored files never ship; untracked ones only with --include-untracked.
--mode full_copy ships the whole repository with history (and submodules).";

const RUN_LONG: &str = "\
Create a VM, boot it and run a command in it, streaming its output; exit
with the command's exit code.

  banger vm run --rm -- uname -a          delete the VM afterwards, whatever happened
  banger vm run --rm -- sh -c 'exit 42'   exits 42
  echo hi | banger vm run --rm -- cat     stdin is forwarded when it is a pipe or a file
  banger vm run -d --name dev             leave it running (then: banger vm exec -t dev -- bash)
  banger vm run                           an interactive shell in a new VM
  banger vm run --rm ./myrepo -- make test   the repo's tracked files in /root/repo
  banger vm run --rm ./myrepo --export-patch fix.patch -- make fmt
                                          the guest's edits written before the VM goes

The command after -- runs through the guest agent with its argv exactly as
given (no shell). Ctrl-C interrupts it (a second one kills it); with --rm
the VM is removed anyway.

Exit codes, as with `docker run`:
  the command's own   when it ran
  125                 banger failed before or around it (create, boot, transfer)
  126                 the command cannot be run (not executable, bad directory)
  127                 the command does not exist
  128+N               signal N killed it
The cause is printed on stderr.";

/// Sizes and placement of a new VM.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// VM name (generated when absent): lowercase letters, digits, '-'
    #[arg(long)]
    pub name: Option<String>,
    /// Image (default: the default image, see `banger image list`)
    #[arg(long)]
    pub image: Option<String>,
    /// Kernel (default: the image's kernel)
    #[arg(long)]
    pub kernel: Option<String>,
    /// vCPUs (default: from config or the host, see `banger config show`)
    #[arg(long)]
    pub vcpu: Option<u32>,
    /// Memory, e.g. 2048 (MiB) or 4G (default: config or host)
    #[arg(long)]
    pub memory: Option<String>,
    /// Work disk (/root) size, e.g. 8G
    #[arg(long = "disk-size")]
    pub disk_size: Option<String>,
    /// Outbound network access (NAT) for the guest
    #[arg(long)]
    pub nat: bool,
    /// auto, qemu or firecracker
    #[arg(long)]
    pub vmm: Option<VmmChoice>,
    /// Restore this snapshot (its image, kernel and shape) instead of booting
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["image", "kernel", "vcpu", "memory", "disk_size"])]
    pub from: Option<String>,
    /// Boot from scratch even when a warm-start snapshot exists
    #[arg(long, conflicts_with = "from")]
    pub cold: bool,
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Copy a host git repository into a running VM at /root/repo
    Prepare {
        name: String,
        /// The repository (or a directory inside it)
        path: String,
        #[command(flatten)]
        ws: WorkspaceArgs,
        /// Ship this commit (with --branch) instead of the working tree
        #[arg(long, requires = "branch")]
        from: Option<String>,
        /// Branch name for --from in the guest
        #[arg(long, requires = "from")]
        branch: Option<String>,
    },
    /// Print the guest's changes as a patch (for `git apply`)
    Export {
        name: String,
        /// Diff against this commit instead of the guest's HEAD (includes commits made in the guest)
        #[arg(long)]
        base_commit: Option<String>,
        /// Write the patch here instead of stdout
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
}

/// Workspace flags shared by `vm run` and `vm workspace prepare`.
#[derive(Debug, Clone, Args)]
pub struct WorkspaceArgs {
    /// overlay (shallow repo + working tree) or full_copy (whole repo, history, submodules)
    #[arg(long, default_value = "overlay")]
    pub mode: String,
    /// Also ship untracked files that are not gitignored
    #[arg(long)]
    pub include_untracked: bool,
    /// Print the files that would ship and the mode, then stop (no VM needed)
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// A git repository to copy into the VM at /root/repo; the command runs there
    pub path: Option<String>,
    #[command(flatten)]
    pub ws: WorkspaceArgs,
    /// Run even though the repo has a .mise.toml and the VM has no network (skips `mise install`)
    #[arg(long)]
    pub no_bootstrap: bool,
    /// Run CMD once in the workspace (e.g. 'make deps') and snapshot right after; later runs
    /// with the same key restore that snapshot, ship the repo again and keep its ignored files
    #[arg(long, value_name = "CMD", requires = "path", conflicts_with = "from")]
    pub warm: Option<String>,
    /// A file of the repo whose content is part of the --warm key, e.g. Cargo.lock (repeatable)
    #[arg(long = "warm-key", value_name = "FILE", requires = "warm")]
    pub warm_key: Vec<String>,
    /// Delete the VM when the command (or shell) ends
    #[arg(long)]
    pub rm: bool,
    /// Before the VM goes, write the guest's workspace changes here as a
    /// patch (also when the command fails); needs a repository path
    #[arg(long, value_name = "FILE")]
    pub export_patch: Option<String>,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Leave the VM running and print how to reach it
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Command to run (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

fn memory_mib(s: &str) -> Result<u32, CliError> {
    let b =
        parse_size(s).map_err(|e| CliError::usage("invalid value", format!("--memory: {e}")))?;
    Ok((b >> 20) as u32)
}

/// Resolves flags against config and host into a spec (and checks the name
/// before anything is sent).
pub fn spec(ctx: &Ctx, a: &CreateArgs) -> Result<VmCreateSpec, CliError> {
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
            .arg(crate::guest::ssh::command_line(command, None));
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
            if v.nat { "yes" } else { "no" }.to_string(),
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
    if let Some(e) = &vm.last_error {
        t.row(["last error".to_string(), e.clone()]);
    }
    if let Some(e) = &vm.agent_error {
        t.row(["agent".to_string(), format!("unreachable: {e}")]);
    }
    if vm.helper_restarts > 0 {
        t.row([
            "helper restarts".to_string(),
            format!(
                "{} (banger vm health {} says which and why)",
                vm.helper_restarts, vm.name
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
            let s = spec(ctx, &a)?;
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
        } => {
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
        VmCommand::Prune { force } => {
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
            nat,
            no_nat,
        } => {
            let memory_mib = memory.as_deref().map(memory_mib).transpose()?;
            let nat = if nat {
                Some(true)
            } else if no_nat {
                Some(false)
            } else {
                None
            };
            simple(
                ctx,
                &name,
                Request::VmSet {
                    name: name.clone(),
                    vcpu,
                    memory_mib,
                    nat,
                },
            )
            .await
        }
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
        VmCommand::Ping { name, count } => {
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
        VmCommand::Workspace(WorkspaceCommand::Prepare {
            name,
            path,
            ws,
            from,
            branch,
        }) => {
            check_name(&name)?;
            let spec = super::run::ws_spec(&path, &ws, from.zip(branch))?;
            if ws.dry_run {
                return super::run::dry_run(ctx, &spec);
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
        VmCommand::Workspace(WorkspaceCommand::Export {
            name,
            base_commit,
            output,
        }) => {
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
        VmCommand::Ssh { name, command } => {
            check_name(&name)?;
            let code = system_ssh(ctx, &name, &command).await?;
            Ok(code.clamp(0, 255) as u8)
        }
    }
}
