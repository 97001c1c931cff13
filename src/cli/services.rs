//! `vm ports`, `vm stats`, `vm health`, `banger dns`, `banger ssh-config`
//! and the hidden `banger debug` test hooks.

use super::render::{self, CliError, Table};
use super::{client, out, style, Ctx};
use crate::protocol::cli::{Reply, Request, VmHealthView, VmStatsView};

async fn call(ctx: &Ctx, req: Request) -> Result<Reply, CliError> {
    let mut c = client::connect(&ctx.layout, true).await?;
    client::request(&mut c, &ctx.layout, req, |_| {}).await
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn x100(v: u32) -> f64 {
    v as f64 / 100.0
}

pub async fn ports(ctx: &Ctx, name: String, json: bool) -> Result<u8, CliError> {
    let ports = match call(ctx, Request::VmPorts { name }).await? {
        Reply::Ports(p) => p,
        other => return Err(client::unexpected(other)),
    };
    if json {
        out(&render::json(&ports))?;
        return Ok(0);
    }
    let mut t = Table::new(["PROTO", "ADDRESS", "PORT", "PROCESS", "ENDPOINT"]);
    for p in &ports {
        let process = match (&p.process, p.pid) {
            (Some(n), Some(pid)) => format!("{n} ({pid})"),
            (Some(n), None) => n.clone(),
            _ => "-".into(),
        };
        let endpoint = if p.endpoint.is_empty() {
            "(loopback only)".to_string()
        } else {
            p.endpoint.clone()
        };
        t.row([
            p.proto.clone(),
            p.address.clone(),
            p.port.to_string(),
            process,
            endpoint,
        ]);
    }
    out(&t.render())?;
    Ok(0)
}

fn stats_json(s: &VmStatsView) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "host": {
            "vmm_pid": s.host.vmm_pid,
            "cpu_percent": x100(s.host.cpu_percent_x100),
            "rss_bytes": s.host.rss_bytes,
            "disk_bytes": s.host.disk_bytes,
        },
        "guest": s.guest.as_ref().map(|g| serde_json::json!({
            "load": [x100(g.load_x100[0]), x100(g.load_x100[1]), x100(g.load_x100[2])],
            "mem_total_bytes": g.mem_total_bytes,
            "mem_available_bytes": g.mem_available_bytes,
            "disks": g.disks,
            "uptime_s": g.uptime_s,
            "processes": g.processes,
        })),
        "guest_error": s.guest_error,
    })
}

pub async fn stats(ctx: &Ctx, name: String, json: bool) -> Result<u8, CliError> {
    let s = match call(ctx, Request::VmStats { name }).await? {
        Reply::Stats(s) => s,
        other => return Err(client::unexpected(other)),
    };
    if json {
        out(&render::json(&stats_json(&s)))?;
        return Ok(0);
    }
    let mut t = Table::bare();
    let h = &s.host;
    t.row([
        "host".to_string(),
        format!(
            "VMM pid {}  cpu {:.1}%  rss {}  disk {}",
            h.vmm_pid.map(|p| p.to_string()).unwrap_or("-".into()),
            x100(h.cpu_percent_x100),
            human_bytes(h.rss_bytes),
            human_bytes(h.disk_bytes)
        ),
    ]);
    match (&s.guest, &s.guest_error) {
        (Some(g), _) => {
            t.row([
                "guest".to_string(),
                format!(
                    "load {:.2} {:.2} {:.2}  memory {} of {} available  {} processes  up {}",
                    x100(g.load_x100[0]),
                    x100(g.load_x100[1]),
                    x100(g.load_x100[2]),
                    human_bytes(g.mem_available_bytes),
                    human_bytes(g.mem_total_bytes),
                    g.processes,
                    render::human_duration(g.uptime_s * 1000)
                ),
            ]);
            for d in &g.disks {
                t.row([
                    format!("disk {}", d.mount),
                    format!(
                        "{} used of {}",
                        human_bytes(d.used_bytes),
                        human_bytes(d.total_bytes)
                    ),
                ]);
            }
        }
        (None, e) => t.row([
            "guest".to_string(),
            format!("unavailable: {}", e.clone().unwrap_or_default()),
        ]),
    }
    out(&t.render())?;
    Ok(0)
}

/// One line about a VM's agent, for `vm health` and the reminder after
/// `vm ssh`.
pub fn health_line(h: &VmHealthView) -> String {
    if h.agent_ok {
        format!(
            "agent answers in {:.1} ms, up {}",
            h.rtt_us.unwrap_or(0) as f64 / 1000.0,
            render::human_duration(h.uptime_s.unwrap_or(0) * 1000)
        )
    } else {
        format!(
            "agent unreachable: {}",
            h.agent_error.clone().unwrap_or_default()
        )
    }
}

pub async fn fetch_health(ctx: &Ctx, name: &str) -> Result<VmHealthView, CliError> {
    match call(ctx, Request::VmHealth { name: name.into() }).await? {
        Reply::Health(h) => Ok(*h),
        other => Err(client::unexpected(other)),
    }
}

/// Exit code 0 when the agent answers, 1 when not.
pub async fn health(ctx: &Ctx, name: String, json: bool) -> Result<u8, CliError> {
    let h = fetch_health(ctx, &name).await?;
    if json {
        out(&render::json(&h))?;
        return Ok(if h.agent_ok { 0 } else { 1 });
    }
    let color = ctx.style.stdout;
    let mut t = Table::bare();
    t.row(["state".to_string(), h.state.to_string()]);
    let line = health_line(&h);
    t.row([
        "agent".to_string(),
        if h.agent_ok {
            style::green(color, &line)
        } else {
            style::yellow(color, &line)
        },
    ]);
    if let Some(b) = &h.boot_id {
        t.row(["boot id".to_string(), b.clone()]);
    }
    if let Some(i) = &h.init {
        t.row(["init".to_string(), i.clone()]);
    }
    for e in &h.setup_errors {
        t.row(["setup error".to_string(), e.clone()]);
    }
    for hv in &h.children {
        t.row([
            format!("child {}", hv.name),
            format!(
                "{} restart{}{}",
                hv.restarts,
                if hv.restarts == 1 { "" } else { "s" },
                hv.last_error
                    .as_ref()
                    .map(|e| format!(", last: {e}"))
                    .unwrap_or_default()
            ),
        ]);
    }
    out(&t.render())?;
    Ok(if h.agent_ok { 0 } else { 1 })
}

/// `banger dashboard`: opens the loopback port if need be and prints the
/// URL that signs a browser in.
pub async fn dashboard(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    let (url, token) = match call(ctx, Request::Dashboard).await? {
        Reply::Dashboard { url, token } => (url, token),
        other => return Err(client::unexpected(other)),
    };
    if json {
        out(&render::json(
            &serde_json::json!({"url": url, "token": token}),
        ))?;
    } else {
        out(&format!(
            "{url}\nOpen it in a browser on this host; it signs the browser in. The link is\nvalid until the daemon restarts; keep it to yourself.\n"
        ))?;
    }
    Ok(0)
}

pub async fn dns(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    let d = match call(ctx, Request::Dns).await? {
        Reply::Dns(d) => d,
        other => return Err(client::unexpected(other)),
    };
    if json {
        out(&render::json(&d))?;
        return Ok(0);
    }
    let mut t = Table::bare();
    if !d.enabled {
        t.row(["dns".to_string(), "off (network.dns_port = 0)".to_string()]);
        out(&t.render())?;
        return Ok(0);
    }
    t.row([
        "listen".to_string(),
        format!(
            "{} (udp){}",
            d.listen,
            if d.serving {
                ""
            } else {
                "; not bound yet: the bridge appears with the first VM"
            }
        ),
    ]);
    t.row([
        "guests".to_string(),
        "ask the bridge address on port 53".to_string(),
    ]);
    t.row(["host resolver".to_string(), d.resolver.clone()]);
    for (n, ip) in &d.records {
        t.row([n.clone(), ip.clone()]);
    }
    out(&t.render())?;
    Ok(0)
}

/// The block `ssh-config --install` adds to `~/.ssh/config`.
pub const BEGIN: &str = "# >>> banger (banger ssh-config --uninstall removes this) >>>";
pub const END: &str = "# <<< banger <<<";

/// `text` with banger's block first (ssh reads `Include` where it stands:
/// before any `Host`, it applies to every host). Unchanged when present.
pub fn with_include(text: &str, include: &str) -> String {
    if text.lines().any(|l| l == BEGIN) {
        return text.to_string();
    }
    format!("{BEGIN}\nInclude {include}\n{END}\n{text}")
}

/// `text` without banger's block, everything else byte for byte.
pub fn without_include(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.strip_suffix('\n').unwrap_or(line);
        if !inside && bare == BEGIN {
            inside = true;
        } else if inside && bare == END {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    out
}

#[derive(Debug, Clone, clap::Args)]
pub struct SshConfigArgs {
    /// Add one Include of banger's ssh_config to ~/.ssh/config
    #[arg(long, conflicts_with = "uninstall")]
    pub install: bool,
    /// Remove exactly the block --install added
    #[arg(long)]
    pub uninstall: bool,
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail =
        |e: std::io::Error| CliError::local("ssh-config", format!("{}: {e}", path.display()));
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(fail)?;
    }
    // Through a temporary file in the same directory, keeping the mode.
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o600);
    let tmp = dir.join(format!(".config.banger-{}.tmp", std::process::id()));
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(fail)
}

pub async fn ssh_config(ctx: &Ctx, a: SshConfigArgs) -> Result<u8, CliError> {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .ok_or_else(|| CliError::local("ssh-config", "HOME is not set"))?;
    let user_config = home.join(".ssh/config");
    let current = match std::fs::read_to_string(&user_config) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(CliError::local(
                "ssh-config",
                format!("{}: {e}", user_config.display()),
            ))
        }
    };
    if a.uninstall {
        let Some(text) = current else {
            out("nothing to remove: ~/.ssh/config does not exist\n")?;
            return Ok(0);
        };
        let new = without_include(&text);
        if new == text {
            out("nothing to remove: no banger block in ~/.ssh/config\n")?;
        } else {
            write_private(&user_config, &new)?;
            out(&format!(
                "removed banger's Include from {}\n",
                user_config.display()
            ))?;
        }
        return Ok(0);
    }
    let path = match call(ctx, Request::SshConfig).await? {
        Reply::SshConfig { path } => path,
        other => return Err(client::unexpected(other)),
    };
    if !a.install {
        out(&format!(
            "{path}\n  use: ssh -F {path} <name>.vm   or: banger ssh-config --install (then ssh <name>.vm)\n"
        ))?;
        return Ok(0);
    }
    let text = current.unwrap_or_default();
    let new = with_include(&text, &path);
    if new == text {
        out(&format!("already installed in {}\n", user_config.display()))?;
    } else {
        write_private(&user_config, &new)?;
        out(&format!(
            "added `Include {path}` to {}; `ssh <name>.vm` works now\n",
            user_config.display()
        ))?;
    }
    Ok(0)
}

/// Fault injection for tests (built with the `test-hooks` feature; needs a
/// daemon started with `BANGER_TEST_HOOKS=1`).
#[cfg(feature = "test-hooks")]
#[derive(Debug, clap::Subcommand)]
pub enum DebugCommand {
    /// Make the DnsServer actor panic
    PanicDns,
    /// Make the DNS socket task panic
    PanicDnsTask,
    /// Make a VM's GuestWatch panic
    PanicWatch { name: String },
    /// Make a VM's VmmMonitor panic
    PanicMonitor { name: String },
    /// Kill the task driving a VM's agent session
    KillSession { name: String },
}

#[cfg(feature = "test-hooks")]
pub async fn debug(ctx: &Ctx, c: DebugCommand) -> Result<u8, CliError> {
    use crate::protocol::cli::TestHook;
    let hook = match c {
        DebugCommand::PanicDns => TestHook::PanicDns,
        DebugCommand::PanicDnsTask => TestHook::PanicDnsTask,
        DebugCommand::PanicWatch { name } => TestHook::PanicWatch { name },
        DebugCommand::PanicMonitor { name } => TestHook::PanicMonitor { name },
        DebugCommand::KillSession { name } => TestHook::KillSession { name },
    };
    match call(ctx, Request::TestHook(hook)).await? {
        Reply::Done => Ok(0),
        other => Err(client::unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_twice_is_one_block_and_uninstall_restores_byte_for_byte() {
        for original in [
            "",
            "Host work\n  User me\n",
            "Host *\n  ServerAliveInterval 30\n# no newline at the end",
            "\n\nHost x\r\n  User y\r\n",
        ] {
            let once = with_include(original, "/s/ssh_config");
            let twice = with_include(&once, "/s/ssh_config");
            assert_eq!(once, twice);
            assert_eq!(once.matches(BEGIN).count(), 1);
            assert!(once.starts_with(BEGIN), "before any Host block");
            assert!(once.contains("Include /s/ssh_config\n"));
            assert_eq!(without_include(&once), original);
        }
        // The user's own lines that merely look alike stay.
        let t = "# >>> banger\nHost a\n";
        assert_eq!(without_include(t), t);
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
