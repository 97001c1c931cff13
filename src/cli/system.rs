//! `banger doctor` and `banger system install|status|restart|uninstall`.

use clap::Subcommand;

use super::render::{self, CliError, ErrorKind, Table};
use super::{client, out, style, Ctx};
use crate::doctor::{self, Inventory, Status};
use crate::protocol::cli::{Reply, Request};
use crate::system::{self, InstallInfo};

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Install the binaries and the two services (root)
    #[command(long_about = INSTALL_LONG)]
    Install {
        /// Whose VMs these are (default: the user who ran sudo)
        #[arg(long)]
        owner: Option<String>,
    },
    /// Services, sockets, owner and versions
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Restart both services (running VMs keep running)
    Restart,
    /// Remove the services and binaries (root)
    Uninstall {
        /// Also delete all state: VMs, images, kernels, caches
        #[arg(long)]
        purge: bool,
        /// Do not ask before --purge
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

const INSTALL_LONG: &str = "\
Install banger for daily use without sudo: this build's binaries in
/usr/local/bin, /etc/banger/install.toml, and two systemd services —
bangerd-root (root, the only privileged part) and bangerd (as the owner).
Restarting either never stops a VM. Idempotent: a second run changes nothing.

  sudo banger system install --owner alice
  banger vm run --rm -- uname -a        (then as alice, no sudo)

Without systemd, prints how to run the two services by hand.";

fn need_root(what: &str) -> Result<(), CliError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(CliError::usage(
            "needs root",
            format!("banger system {what} changes /usr/local/bin, /etc and the services; run: sudo banger system {what}"),
        ))
    }
}

fn local(e: String) -> CliError {
    CliError::local("system", e)
}

pub async fn system(ctx: &Ctx, c: SystemCommand) -> Result<u8, CliError> {
    match c {
        SystemCommand::Install { owner } => install(ctx, owner).await,
        SystemCommand::Status { json } => status(ctx, json).await,
        SystemCommand::Restart => {
            need_root("restart")?;
            if !system::systemd_running() {
                return Err(local(
                    "systemd is not PID 1 here; restart the services the way you started them"
                        .into(),
                ));
            }
            system::systemctl(&["restart", system::HELPER_UNIT, system::DAEMON_UNIT])
                .map_err(local)?;
            out("restarted bangerd-root and bangerd (running VMs keep running)\n")?;
            Ok(0)
        }
        SystemCommand::Uninstall { purge, yes } => uninstall(ctx, purge, yes).await,
    }
}

/// `system install [--owner USER]`.
async fn install(ctx: &Ctx, owner: Option<String>) -> Result<u8, CliError> {
    need_root("install")?;
    let user = system::resolve_owner(owner.as_deref()).map_err(|e| CliError::usage("owner", e))?;
    let info = InstallInfo {
        owner: user.name.clone(),
        owner_uid: user.uid.as_raw(),
        owner_gid: user.gid.as_raw(),
        version: crate::version::version().into(),
        commit: crate::version::COMMIT.into(),
        bin_dir: system::BIN_DIR.into(),
        installed_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let systemd = system::systemd_running();
    out("banger system install will:\n")?;
    for l in system::plan(&info, systemd) {
        out(&format!("  {l}\n"))?;
    }
    let exe = std::env::current_exe().map_err(|e| local(e.to_string()))?;
    let from = exe.parent().unwrap_or(std::path::Path::new("."));
    let changed = system::install(&info, from).map_err(local)?;
    if changed.is_empty() {
        out("nothing to change: already installed\n")?;
    }
    for l in &changed {
        out(&format!(
            "{} {l}\n",
            style::green(ctx.style.stdout, "done:")
        ))?;
    }
    if !systemd {
        out(&format!("{}\n", system::manual_equivalent(&info)))?;
    } else {
        out(&format!(
            "{} can now run banger without sudo: banger vm run --rm -- uname -a\n",
            info.owner
        ))?;
    }
    Ok(0)
}

/// `system status [--json]`.
async fn status(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    let info = InstallInfo::read().map_err(local)?;
    let services: Vec<(String, String)> = [system::HELPER_UNIT, system::DAEMON_UNIT]
        .iter()
        .map(|u| {
            let s = if system::systemd_running() {
                system::unit_state(u)
            } else {
                "no systemd".into()
            };
            (u.to_string(), s)
        })
        .collect();
    let daemon = daemon_version(ctx).await;
    if json {
        out(&render::json(&serde_json::json!({
            "installed": info,
            "services": services,
            "cli_version": crate::version::version(),
            "daemon_version": daemon,
            "daemon_socket": ctx.layout.daemon_socket(),
            "helper_socket": ctx.layout.helper_socket(),
        })))?;
        return Ok(0);
    }
    let mut t = Table::bare();
    match &info {
        Some(i) => {
            t.row([
                "owner".to_string(),
                format!("{} (uid {})", i.owner, i.owner_uid),
            ]);
            t.row([
                "installed".to_string(),
                format!("{} ({})", i.version, render::age(i.installed_at_unix)),
            ]);
        }
        None => t.row([
            "installed".to_string(),
            "no (sudo banger system install --owner USER)".to_string(),
        ]),
    }
    for (u, s) in &services {
        t.row([u.clone(), s.clone()]);
    }
    t.row(["cli".to_string(), crate::version::version().to_string()]);
    t.row([
        "daemon".to_string(),
        daemon.unwrap_or_else(|| "not reachable".into()),
    ]);
    t.row([
        "sockets".to_string(),
        format!(
            "{} {}",
            ctx.layout.daemon_socket().display(),
            ctx.layout.helper_socket().display()
        ),
    ]);
    out(&t.render())?;
    Ok(0)
}

/// `system uninstall [--purge [--yes]]`: running VMs are stopped first.
async fn uninstall(ctx: &Ctx, purge: bool, yes: bool) -> Result<u8, CliError> {
    need_root("uninstall")?;
    if purge && !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(
                "confirm",
                "--purge deletes every VM, image and kernel; add --yes to confirm without a terminal",
            ));
        }
        eprint!("delete every VM, image, kernel and cache of banger? [y/N] ");
        let mut a = String::new();
        let _ = std::io::stdin().read_line(&mut a);
        if !matches!(a.trim(), "y" | "Y" | "yes") {
            out("nothing removed\n")?;
            return Ok(1);
        }
    }
    // VMs first, while the daemon still runs: each is stopped and said so.
    if let Ok(mut c) = client::connect(&ctx.layout, false).await {
        if let Ok(Reply::Vms(vms)) =
            client::request(&mut c, &ctx.layout, Request::VmList, |_| {}).await
        {
            for v in vms.iter().filter(|v| v.state.may_have_vmm()) {
                out(&format!("stopping VM {}\n", v.name))?;
                let _ = client::request(
                    &mut c,
                    &ctx.layout,
                    Request::VmStop {
                        name: v.name.clone(),
                    },
                    |_| {},
                )
                .await;
            }
        }
    }
    for l in system::uninstall(purge).map_err(local)? {
        out(&format!("{l}\n"))?;
    }
    Ok(0)
}

async fn daemon_version(ctx: &Ctx) -> Option<String> {
    daemon_status(ctx)
        .await
        .map(|s| format!("{} (pid {})", s.version, s.pid))
}

/// The running daemon's status, if one runs.
async fn daemon_status(ctx: &Ctx) -> Option<crate::protocol::cli::DaemonStatus> {
    let mut c = client::connect(&ctx.layout, false).await.ok()?;
    match client::request(&mut c, &ctx.layout, Request::Status, |_| {})
        .await
        .ok()?
    {
        Reply::Status(s) => Some(s),
        _ => None,
    }
}

/// doctor's rows about this user's set-up: one build throughout, and
/// banger's ssh_config included.
fn setup_rows(
    layout: &crate::paths::Layout,
    status: Option<&crate::protocol::cli::DaemonStatus>,
) -> (doctor::Check, Option<doctor::Check>) {
    use crate::doctor::setup::{ssh_row, version_row, Build};
    let daemon = status.map(|s| Build {
        version: s.version.clone(),
        commit: s.commit.clone(),
    });
    let helper = match status.map(|s| &s.helper) {
        Some(crate::protocol::cli::HelperState::Connected { version, .. }) => {
            Some(version.as_str())
        }
        _ => None,
    };
    let installed = layout
        .system
        .then(|| InstallInfo::read().ok().flatten().map(|i| i.version))
        .flatten();
    let version = version_row(
        &Build::this(),
        daemon.as_ref(),
        helper,
        installed.as_deref(),
    );
    (version, ssh_row(layout))
}

/// What the running daemon knows (so doctor never opens a store it holds).
async fn inventory(ctx: &Ctx) -> Option<Inventory> {
    let mut c = match client::connect(&ctx.layout, false).await {
        Ok(c) => c,
        Err(e) if e.kind == ErrorKind::DaemonNotRunning => return None,
        Err(_) => return None,
    };
    let images = match client::request(&mut c, &ctx.layout, Request::ImageList, |_| {})
        .await
        .ok()?
    {
        Reply::Images(i) => i,
        _ => return None,
    };
    let kernels = match client::request(&mut c, &ctx.layout, Request::KernelList, |_| {})
        .await
        .ok()?
    {
        Reply::Kernels(k) => k,
        _ => return None,
    };
    Some(Inventory {
        default_image: images.iter().find(|i| i.default).map(|i| i.name.clone()),
        images: images.into_iter().map(|i| (i.name, i.kernel_ref)).collect(),
        kernels: kernels.into_iter().map(|k| k.name).collect(),
    })
}

/// Exit 1 when any row FAILs.
pub async fn doctor(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    let inv = inventory(ctx).await;
    let status = daemon_status(ctx).await;
    let release = super::update::release_row(&ctx.layout).await;
    let layout = ctx.layout.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let (version, ssh) = setup_rows(&layout, status.as_ref());
        let mut rows = vec![version, release];
        rows.extend(doctor::run(&layout, inv));
        rows.extend(ssh);
        rows.extend(system::doctor_rows(&layout));
        rows
    })
    .await
    .map_err(|e| local(e.to_string()))?;
    let failed = rows.iter().any(|r| r.status == Status::Fail);
    if json {
        out(&render::json(&rows))?;
        return Ok(u8::from(failed));
    }
    let color = ctx.style.stdout;
    let mut t = Table::new(["", "CHECK", "DETAIL"]);
    for r in &rows {
        let s = match r.status {
            Status::Pass => style::green(color, "PASS"),
            Status::Warn => style::yellow(color, "WARN"),
            Status::Fail => style::red(color, "FAIL"),
        };
        let detail = match &r.hint {
            Some(h) => format!("{}\n  → {h}", r.detail),
            None => r.detail.clone(),
        };
        t.row([s, r.name.clone(), detail]);
    }
    let (w, f) = (
        rows.iter().filter(|r| r.status == Status::Warn).count(),
        rows.iter().filter(|r| r.status == Status::Fail).count(),
    );
    out(&format!(
        "{}{} checks: {} pass, {w} warn, {f} fail\n",
        t.render(),
        rows.len(),
        rows.len() - w - f
    ))?;
    Ok(u8::from(failed))
}
