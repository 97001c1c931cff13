//! The `banger` command line: parsing (clap derive), one function per
//! command, rendering. No business logic: every command is one request to
//! `bangerd` (started on demand) and a rendering of its events and reply.

pub mod artifacts;
pub mod client;
pub mod exec;
pub mod mcp;
pub mod progress;
pub mod render;
pub mod run;
pub mod services;
pub mod style;
pub mod system;
pub mod update;
pub mod vm;

use std::io::Write;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{Config, HostFacts};
use crate::paths::Layout;
use crate::protocol::cli::{HelperState, Reply, Request};
use render::{CliError, ErrorKind, Table};
use style::Style;

static VERSION_TAIL: LazyLock<String> = LazyLock::new(|| {
    crate::version::version_line("banger")
        .trim_start_matches("banger ")
        .to_string()
});

const ROOT_LONG: &str = "\
banger gives you a throwaway Linux microVM in one command.

The 80% command:
  banger vm run --rm ./myrepo -- make test
creates a VM, copies the repo's tracked files in, runs the command, streams
its output, exits with its exit code and deletes the VM.

Start here:
  banger vm list              what exists (alias: banger ps)
  banger daemon status        is the daemon up, is the root helper connected
  banger config show          the VM defaults and where each comes from

The daemon (bangerd) starts on demand; the root helper (bangerd-root) does
the privileged work (bridge, taps) for it.";

/// banger: throwaway Linux microVMs in one command.
#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version = VERSION_TAIL.as_str(),
    about = "Throwaway Linux microVMs in one command",
    long_about = ROOT_LONG,
    propagate_version = false,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, run and manage VMs
    #[command(long_about = vm::VM_LONG, subcommand)]
    Vm(vm::VmCommand),
    /// List VMs (alias of `banger vm list`)
    Ps(ListArgs),
    /// Images VMs boot from: build, import, export
    #[command(long_about = artifacts::IMAGE_LONG, subcommand)]
    Image(artifacts::ImageCommand),
    /// Kernels VMs boot: pull, import
    #[command(long_about = artifacts::KERNEL_LONG, subcommand)]
    Kernel(artifacts::KernelCommand),
    /// Saved VMs to start new ones from: list, show, delete
    #[command(long_about = artifacts::SNAPSHOT_LONG, subcommand)]
    Snapshot(artifacts::SnapshotCommand),
    /// Start, stop and inspect the banger daemon
    #[command(long_about = DAEMON_LONG, subcommand)]
    Daemon(DaemonCommand),
    /// Show the resolved configuration
    #[command(long_about = CONFIG_LONG, subcommand)]
    Config(ConfigCommand),
    /// The <name>.vm DNS server: address, host resolver, names
    #[command(long_about = DNS_LONG)]
    Dns {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// banger's ssh_config: print its path, or Include it in ~/.ssh/config
    #[command(name = "ssh-config", long_about = SSH_CONFIG_LONG)]
    SshConfig(services::SshConfigArgs),
    /// Check this host: KVM, tools, store, images, network, space, services
    #[command(long_about = DOCTOR_LONG)]
    Doctor {
        /// Print JSON (an array of checks)
        #[arg(long)]
        json: bool,
    },
    /// Install banger as system services for daily use without sudo
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Serve the Model Context Protocol on stdio (tools: create_vm, exec, run, files, export_patch, ...)
    #[command(
        long_about = "A Model Context Protocol server on stdin/stdout for agents: its tools create\nand delete VMs, ship a repository into one, run commands, read, write and\nlist files and export the patch of the guest's edits, through banger's HTTP\nAPI. Configure an MCP client to start `banger mcp`."
    )]
    Mcp,
    /// Open the web dashboard: prints a loopback URL that signs a browser in
    #[command(long_about = DASHBOARD_LONG)]
    Dashboard {
        /// Print JSON (url and the API's bearer token)
        #[arg(long)]
        json: bool,
    },
    /// Print version, commit and build time
    Version,
    /// Install a newer signed release (or --check for one)
    #[command(long_about = update::UPDATE_LONG)]
    Update(update::UpdateArgs),
    /// Fault injection for tests (needs BANGER_TEST_HOOKS=1 on the daemon)
    #[cfg(feature = "test-hooks")]
    #[command(subcommand, hide = true)]
    Debug(services::DebugCommand),
    /// Print a shell completion script
    #[command(long_about = COMPLETION_LONG)]
    Completion {
        /// Shell to generate for
        shell: Shell,
    },
}

const DASHBOARD_LONG: &str = "\
The daemon serves its HTTP API and a web dashboard on a loopback port: VMs
with their state, address, image and uptime, the stages of every create,
run and pull as they happen (whichever client asked), a terminal into a
VM, the serial log, images, kernels and snapshots; create, pull, stop,
start and delete. The port
opens when this command first asks (on a free port, or on [api] listen from
the config). Every request needs the daemon's token: the printed URL sets
it as a cookie in the browser that opens it; other clients send
Authorization: Bearer TOKEN (--json prints it).";

const DOCTOR_LONG: &str = "\
Check what this host can do and say what to fix; changes nothing.

Rows: architecture, KVM (hardware, nested, none — and what that means),
every tool banger drives with its version, Firecracker's version, the
store, VM defaults, the default image and kernel, the bridge subnet against
the host's routes, free space, and in system mode the services and sockets.
Exit code 1 when any row FAILs.

  banger doctor
  banger doctor --json";

const DNS_LONG: &str = "\
banger answers <name>.vm for its running VMs on the bridge address
(UDP, port network.dns_port, default 42069; guests ask on port 53).

  banger dns                      where it listens, what the host resolver does
  dig @172.16.0.1 -p 42069 dev.vm

Where systemd-resolved runs, bangerd-root routes *.vm to it on the bridge
link; elsewhere this prints the line to add to your resolver.";

const SSH_CONFIG_LONG: &str = "\
banger keeps its own ssh_config (a Host block per VM, and Host *.vm with
banger's key and known_hosts).

  banger ssh-config               print its path
  banger ssh-config --install     add one Include line to ~/.ssh/config
                                  (then: ssh dev.vm)
  banger ssh-config --uninstall   remove exactly that block

Nothing else in ~/.ssh is ever touched.";

const DAEMON_LONG: &str = "\
Start, stop and inspect bangerd, the daemon that owns VM state.

You rarely need this: every command starts the daemon when it is not running.

  banger daemon status     pid, uptime, socket, protocol, root helper
  banger daemon stop       stop the daemon (and the helper it started);
                           running VMs keep running
  banger daemon start      start it now instead of on first use
  banger daemon socket     print the socket path";

const CONFIG_LONG: &str = "\
Show the resolved configuration.

  banger config show

prints each VM default with its source: `config` (your config.toml), `auto`
(derived from this host: cpus/4 up to 4 vCPUs, RAM/8 up to 8 GiB) or
`builtin` (the floor). Edit ~/.config/banger/config.toml to override, e.g.:

  [vm_defaults]
  vcpu = 2
  memory_mib = 2048
  disk_size = \"16G\"";

const COMPLETION_LONG: &str = "\
Print a completion script for your shell.

  banger completion bash > ~/.local/share/bash-completion/completions/banger
  banger completion zsh  > \"${fpath[1]}/_banger\"
  banger completion fish > ~/.config/fish/completions/banger.fish";

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print JSON (an array of VMs)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start the daemon if it is not running
    Start,
    /// Stop the daemon (running VMs keep running)
    Stop,
    /// Show daemon status
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon socket path
    Socket,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Show VM defaults and network settings with their sources
    Show {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Everything a command needs from outside: paths and styling.
pub struct Ctx {
    pub layout: Layout,
    pub style: Style,
}

pub(crate) fn out(s: &str) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`banger vm list | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::local("output failed", e.to_string())),
    }
}

/// Runs a parsed command; returns the process exit code.
pub async fn run(cli: Cli, ctx: &Ctx) -> Result<u8, CliError> {
    match cli.command {
        Command::Version => {
            out(&format!(
                "{}\nprotocol {}\n",
                crate::version::version_block("banger"),
                crate::protocol::PROTOCOL_VERSION
            ))?;
            Ok(0)
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            let sh = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(sh, &mut cmd, "banger", &mut buf);
            out(&String::from_utf8_lossy(&buf))?;
            Ok(0)
        }
        Command::Config(ConfigCommand::Show { json }) => config_show(ctx, json),
        Command::Daemon(c) => daemon(ctx, c).await,
        Command::Image(c) => artifacts::image(ctx, c).await,
        Command::Kernel(c) => artifacts::kernel(ctx, c).await,
        Command::Snapshot(c) => artifacts::snapshot(ctx, c).await,
        Command::Ps(a) => vm::list(ctx, a.json).await,
        Command::Dns { json } => services::dns(ctx, json).await,
        Command::Mcp => mcp::serve(ctx).await,
        Command::Dashboard { json } => services::dashboard(ctx, json).await,
        Command::Doctor { json } => system::doctor(ctx, json).await,
        Command::Update(a) => update::update(ctx, a).await,
        Command::System(c) => system::system(ctx, c).await,
        Command::SshConfig(a) => services::ssh_config(ctx, a).await,
        #[cfg(feature = "test-hooks")]
        Command::Debug(c) => services::debug(ctx, c).await,
        Command::Vm(c) => vm::run(ctx, c).await,
    }
}

fn config_show(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    let cfg = Config::load(&ctx.layout.config_file(), HostFacts::probe())
        .map_err(|e| CliError::usage("bad config", e.to_string()))?;
    if json {
        let v = serde_json::json!({
            "path": cfg.path,
            "exists": cfg.file_exists,
            "vm_defaults": cfg.vm_defaults,
            "network": cfg.network,
        });
        out(&render::json(&v))?;
        return Ok(0);
    }
    let mut t = Table::new(["KEY", "VALUE", "SOURCE"]);
    for (k, v, s) in crate::config::describe(&cfg) {
        t.row([k, v, s]);
    }
    let note = if cfg.file_exists {
        format!("config file: {}\n", cfg.path.display())
    } else {
        format!(
            "config file: {} (absent; defaults apply)\n",
            cfg.path.display()
        )
    };
    out(&(t.render() + &note))?;
    Ok(0)
}

async fn daemon(ctx: &Ctx, cmd: DaemonCommand) -> Result<u8, CliError> {
    let layout = &ctx.layout;
    match cmd {
        DaemonCommand::Socket => {
            out(&format!("{}\n", layout.daemon_socket().display()))?;
            Ok(0)
        }
        DaemonCommand::Start => {
            let mut c = client::connect(layout, true).await?;
            out(&format!(
                "bangerd running (pid {}) on {}\n",
                c.server.pid,
                layout.daemon_socket().display()
            ))?;
            // Say at once when the root helper is missing, and how to fix it.
            if let Reply::Status(st) =
                client::request(&mut c, layout, Request::Status, |_| {}).await?
            {
                if let HelperState::NotConnected { reason } = st.helper {
                    eprintln!(
                        "{} bangerd-root is not connected: {reason}",
                        style::yellow(ctx.style.stderr, "warning:")
                    );
                }
            }
            Ok(0)
        }
        DaemonCommand::Stop => {
            match stop_daemon(layout).await? {
                Some(pid) => out(&format!("stopped bangerd (pid {pid})\n"))?,
                None => out("bangerd is not running\n")?,
            }
            Ok(0)
        }
        DaemonCommand::Status { json } => {
            let mut c = client::connect(layout, true).await?;
            let st = match client::request(&mut c, layout, Request::Status, |_| {}).await? {
                Reply::Status(s) => s,
                other => return Err(client::unexpected(other)),
            };
            if json {
                out(&render::json(&st))?;
                return Ok(0);
            }
            let color = ctx.style.stdout;
            let mut t = Table::bare();
            t.row(["pid".to_string(), st.pid.to_string()]);
            t.row([
                "version".to_string(),
                format!(
                    "{} (commit {})",
                    st.version,
                    &st.commit[..st.commit.len().min(8)]
                ),
            ]);
            t.row(["uptime".to_string(), render::human_duration(st.uptime_ms)]);
            t.row(["socket".to_string(), st.socket.clone()]);
            t.row(["protocol".to_string(), st.protocol_version.to_string()]);
            t.row(["store".to_string(), st.store.clone()]);
            t.row([
                "mode".to_string(),
                if st.system_mode { "system" } else { "user" }.to_string(),
            ]);
            t.row(["vms".to_string(), st.vm_count.to_string()]);
            let helper = match &st.helper {
                HelperState::Connected {
                    pid,
                    version,
                    socket,
                } => format!(
                    "{} (pid {pid}, {version}) on {socket}",
                    style::green(color, "connected")
                ),
                HelperState::NotConnected { reason } => {
                    format!("{}: {reason}", style::yellow(color, "not connected"))
                }
            };
            t.row(["helper".to_string(), helper]);
            out(&t.render())?;
            Ok(0)
        }
    }
}

/// Stops the daemon (and the helper it started) and waits for it to exit;
/// its pid, or None when none was running. Running VMs keep running.
pub(crate) async fn stop_daemon(layout: &crate::paths::Layout) -> Result<Option<u32>, CliError> {
    let mut c = match client::connect(layout, false).await {
        Ok(c) => c,
        Err(e) if e.kind == ErrorKind::DaemonNotRunning => return Ok(None),
        Err(e) => return Err(e),
    };
    let server_pid = c.server.pid;
    // The daemon may close the connection as it exits: the pid from the
    // handshake is enough to wait on.
    let pid = match client::request(&mut c, layout, Request::Shutdown, |_| {}).await {
        Ok(Reply::ShuttingDown { pid }) => pid,
        Ok(other) => return Err(client::unexpected(other)),
        Err(e) if e.kind == ErrorKind::Connection => server_pid,
        Err(e) => return Err(e),
    };
    drop(c);
    if !crate::host::process::wait_exit(pid, Duration::from_secs(30)).await {
        return Err(CliError::local(
            "timeout",
            format!(
                "bangerd (pid {pid}) did not exit within 30s; see {}",
                layout.daemon_log().display()
            ),
        ));
    }
    Ok(Some(pid))
}

/// `vm create|run --help` names the defaults that apply on this host
/// (config, else derived from the host) rather than only where they come from.
pub fn with_resolved_defaults(cmd: clap::Command, cfg: &Config) -> clap::Command {
    let d = &cfg.vm_defaults;
    let helps = [
        (
            "vcpu",
            format!("vCPUs [here: {} ({})]", d.vcpu.value, d.vcpu.source),
        ),
        (
            "memory",
            format!(
                "Memory, e.g. 2048 (MiB) or 4G [here: {} MiB ({})]",
                d.memory_mib.value, d.memory_mib.source
            ),
        ),
        (
            "disk_size",
            format!(
                "Work disk (/root) size, e.g. 8G [here: {} ({})]",
                crate::size::format_size(d.disk_bytes.value),
                d.disk_bytes.source
            ),
        ),
    ];
    let patch = |mut c: clap::Command| {
        for (id, help) in &helps {
            if c.get_arguments().any(|a| a.get_id() == id) {
                let help = help.clone();
                c = c.mut_arg(id, move |a| a.help(help));
            }
        }
        c
    };
    cmd.mut_subcommand("vm", |vm| {
        vm.mut_subcommand("create", patch)
            .mut_subcommand("run", patch)
    })
}

/// Entry point of the `banger` binary: parse, run, print errors.
pub fn main() -> std::process::ExitCode {
    use clap::FromArgMatches;
    let layout = Layout::from_process();
    let mut cmd = Cli::command();
    // Only help pays for reading the config and probing the host.
    let help = std::env::args().any(|a| a == "--help" || a == "-h");
    if help {
        if let Ok(cfg) = Config::load(&layout.config_file(), HostFacts::probe()) {
            cmd = with_resolved_defaults(cmd, &cfg);
        }
    }
    let cli = Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit());
    let style = Style::detect();
    let ctx = Ctx { layout, style };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger: cannot start: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli, &ctx)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("{}", e.render(style.stderr));
            std::process::ExitCode::from(e.exit_code)
        }
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;

    #[test]
    fn create_and_run_help_name_the_defaults_that_apply_here() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("config.toml");
        std::fs::write(&path, "[vm_defaults]\nvcpu = 3\n").unwrap();
        let cfg = Config::load(
            &path,
            HostFacts {
                cpus: 8,
                memory_bytes: 16 << 30,
            },
        )
        .unwrap();
        let mut cmd = with_resolved_defaults(Cli::command(), &cfg);
        for sub in ["create", "run"] {
            let vm = cmd.find_subcommand_mut("vm").unwrap();
            let help = vm
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("[here: 3 (config)]"), "{sub}: {help}");
            assert!(help.contains("[here: 2048 MiB (auto)]"), "{sub}: {help}");
        }
    }
}
