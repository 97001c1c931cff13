//! The `vm` commands' arguments and help.

use super::*;

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
    /// Change a VM's vcpu, memory, work disk size or NAT
    #[command(
        long_about = "Change a VM's resources. NAT switches at once, running or not; vCPU and memory apply at the next start; the work disk (/root) grows (never shrinks) while the VM is stopped.\n\n  banger vm set dev --nat\n  banger vm stop dev && banger vm set dev --vcpu 4 --memory 4G --disk-size 32G && banger vm start dev"
    )]
    Set {
        name: String,
        #[arg(long)]
        vcpu: Option<u32>,
        /// e.g. 2048 (MiB) or 4G
        #[arg(long)]
        memory: Option<String>,
        /// Grow the work disk (/root) to this size, e.g. 32G (VM stopped)
        #[arg(long = "disk-size")]
        disk_size: Option<String>,
        /// Give the VM outbound network access
        #[arg(long, conflicts_with = "no_nat")]
        nat: bool,
        /// Remove outbound network access
        #[arg(long)]
        no_nat: bool,
        #[command(flatten)]
        egress: EgressArgs,
        /// Take a host out of the VM's egress allowances (repeatable)
        #[arg(long = "disallow-host", value_name = "NAME")]
        disallow_host: Vec<String>,
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
    /// What a VM's egress policy refused (names and connections)
    #[command(
        long_about = "A VM's egress policy and what it refused since the daemon started: names the\nguest asked for, connections (with the name they sent, TLS SNI or HTTP Host),\neach with a count. Grow the allowlist from it:\n\n  banger vm egress dev\n  banger vm egress dev --follow\n  banger vm set dev --allow-host registry.npmjs.org"
    )]
    Egress {
        name: String,
        #[arg(long)]
        json: bool,
        /// Keep printing refusals as they happen
        #[arg(long)]
        follow: bool,
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
    /// Does the VM's agent answer; restarts of its children
    #[command(
        long_about = "Asks the VM's agent now (3 s at most) and shows its boot id, uptime and init,\nplus how often the VM's host-side children (agent session, guest watch, VMM monitor) were restarted and why.\nExit code 1 when the agent does not answer.\n\n  banger vm health dev"
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
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = crate::cli::exec::parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (default: the workspace, else /root)
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
}

impl ExecArgs {
    pub(crate) fn opts(&self, auto_prepare: bool) -> crate::cli::exec::ExecOpts {
        crate::cli::exec::ExecOpts {
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
    /// Let this VM and the named one talk (repeatable); guests are
    /// otherwise out of each other's reach
    #[arg(long, value_name = "VM")]
    pub link: Vec<String>,
    /// auto, qemu or firecracker
    #[arg(long)]
    pub vmm: Option<VmmChoice>,
    /// Restore this snapshot (its image, kernel and shape) instead of booting
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["image", "kernel", "vcpu", "memory", "disk_size"])]
    pub from: Option<String>,
    /// Boot from scratch even when a warm-start snapshot exists
    #[arg(long, conflicts_with = "from")]
    pub cold: bool,
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// Egress policy flags (`vm create`, `vm run`, `vm set`).
#[derive(Debug, Clone, Default, Args)]
pub struct EgressArgs {
    /// deny: nothing leaves the VM but what --allow-host/--allow-net allow
    /// (through banger, refusals logged: banger vm egress NAME); open: no
    /// policy (with --nat the VM reaches anything)
    #[arg(long, value_name = "deny|open", value_parser = ["deny", "open"])]
    pub egress: Option<String>,
    /// A host the VM may reach by name (repeatable; *.example.com for every
    /// name under it); implies --egress deny
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// A network the VM may reach by address, CIDR[:PORT] (repeatable);
    /// implies --egress deny
    #[arg(long = "allow-net", value_name = "CIDR[:PORT]")]
    pub allow_net: Vec<String>,
    /// Keep a secret outside the VM (repeatable): the guest's NAME is a
    /// placeholder that banger swaps for the value in request headers to
    /// HOST (HTTPS) only; the value from $NAME, =env:VAR, =file:PATH or the
    /// config's [secrets]; implies --egress deny --allow-host HOST
    #[arg(long = "secret", value_name = "NAME@HOST[=env:VAR|=file:PATH]")]
    pub secret: Vec<String>,
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
    /// Skip `mise install` for a repo with a .mise.toml (run in images that have mise)
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
