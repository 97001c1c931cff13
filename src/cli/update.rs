//! `banger update [--check] [--to VERSION] [--dry-run] [--allow-downgrade]`:
//! fetch a release from `[update] url`, verify its signature, then its
//! sha256, check its binaries run, swap all three in (keeping
//! `<name>.previous`), restart the daemon and helper with running VMs
//! kept, and health-check the new ones — rolling back and restarting the
//! old ones when anything after the swap fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::render::CliError;
use super::{client, out, Ctx};
use crate::protocol::cli::{HelperState, Reply, Request};
use crate::release::{self, install, semver::Version, verify};

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Only say whether a newer release is published; change nothing
    #[arg(long)]
    pub check: bool,
    /// Install this version instead of the newest (e.g. v0.3.1)
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// Download and verify everything, then stop before changing anything
    #[arg(long)]
    pub dry_run: bool,
    /// With --to: allow a version older than the installed one
    #[arg(long)]
    pub allow_downgrade: bool,
}

pub const UPDATE_LONG: &str = "\
Update banger, bangerd and bangerd-root to a signed release from the URL in
the config's [update] url (where scripts/release.sh's output is published).

Nothing is installed unless SHA256SUMS is signed by banger's release key
(built into this binary) and the tarball matches its signed sha256, and the
new binaries run here. The three are swapped in together (the old ones kept
as <name>.previous beside them); the daemon and helper restart on them with
running VMs kept running; if the new daemon does not come up healthy, the
old binaries are put back and restarted.

  banger update --check          is a newer release published?
  banger update --dry-run        download and verify, change nothing
  banger update                  install the newest release
  banger update --to v0.3.1 --allow-downgrade";

fn fail(label: &str, msg: impl Into<String>) -> CliError {
    CliError::local(label.to_string(), msg.into())
}

/// Where the running binaries are: all three must be there.
fn install_dir() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(|e| fail("install", e.to_string()))?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fail("install", "the running banger has no directory"))?;
    for b in release::BINARIES {
        if !dir.join(b).is_file() {
            return Err(fail(
                "install",
                format!(
                    "{} has no {b}: banger update replaces an installed banger (scripts/install.sh), not a build tree",
                    dir.display()
                ),
            ));
        }
    }
    Ok(dir)
}

/// The version to install and whether it is an update at all.
async fn target(http: &reqwest::Client, url: &str, args: &UpdateArgs) -> Result<Version, CliError> {
    let text = match &args.to {
        Some(v) => v.clone(),
        None => {
            let latest = release::fetch_small(http, &release::join_url(url, "latest"))
                .await
                .map_err(|e| fail("update", e))?;
            String::from_utf8_lossy(&latest).trim().to_string()
        }
    };
    Version::parse(&text).ok_or_else(|| {
        fail(
            "update",
            format!("{text:?} is not a release version (vMAJOR.MINOR.PATCH)"),
        )
    })
}

/// Whether going from `installed` to `want` is allowed; Ok(false) when
/// there is nothing to do.
fn decide(installed: &str, want: &Version, args: &UpdateArgs) -> Result<bool, CliError> {
    let Some(have) = Version::parse(installed) else {
        if args.to.is_none() {
            return Err(CliError::usage(
                "not a release",
                format!("this banger is a {installed} build (from a checkout), not a release; update the checkout (git pull && scripts/install.sh), or replace it with a release: banger update --to {want}"),
            ));
        }
        return Ok(true);
    };
    if *want == have {
        return Ok(false);
    }
    if *want < have && !(args.to.is_some() && args.allow_downgrade) {
        return Err(CliError::usage(
            "downgrade",
            format!("{want} is older than the installed {have}; refused. To go back on purpose: banger update --to {want} --allow-downgrade"),
        ));
    }
    Ok(true)
}

pub async fn update(ctx: &Ctx, args: UpdateArgs) -> Result<u8, CliError> {
    let cfg =
        crate::config::Config::load(&ctx.layout.config_file(), crate::config::HostFacts::probe())
            .map_err(|e| CliError::usage("config", e.to_string()))?;
    let url = cfg.update_url.clone().ok_or_else(|| {
        CliError::usage(
            "no release URL",
            format!(
                "banger update needs to know where releases are published: add\n  [update]\n  url = \"https://…/banger\"\nto {}",
                cfg.path.display()
            ),
        )
    })?;
    let installed = crate::version::version();
    let http = release::http_client().map_err(|e| fail("update", e))?;
    let want = target(&http, &url, &args).await?;
    if args.check && Version::parse(installed).is_none() {
        out(&format!(
            "a {installed} build (not a release); the newest release is {want}\n"
        ))?;
        return Ok(0);
    }
    let go = decide(installed, &want, &args)?;
    if args.check {
        let msg = if go {
            format!("installed {installed}; available {want} (install it with: banger update)\n")
        } else {
            format!("installed {installed} is the newest release\n")
        };
        out(&msg)?;
        return Ok(0);
    }
    if !go {
        out(&format!("banger {installed} is already installed\n"))?;
        return Ok(0);
    }
    let dir = install_dir()?;
    if ctx.layout.system && !nix::unistd::geteuid().is_root() {
        return Err(CliError::usage(
            "needs root",
            "this banger is installed as system services; update it with: sudo banger update",
        ));
    }
    let _one_at_a_time = lock_dir(&dir)?;
    // Staging an interrupted update left (only ours: the lock is held).
    crate::fsutil::sweep_temp_of(&dir, "update");
    let stage = crate::fsutil::TempDir::new_in(&dir, "update").map_err(|e| {
        CliError::usage(
            "needs root",
            format!(
                "cannot write to {}: {e}; run: sudo banger update",
                dir.display()
            ),
        )
    })?;
    fetch_and_stage(&http, &url, &want, stage.path()).await?;
    if args.dry_run {
        out(&format!(
            "{want} verified (signature, sha256, its binaries run here); --dry-run: nothing changed in {}\n",
            dir.display()
        ))?;
        return Ok(0);
    }
    swap_and_restart(ctx, &dir, stage.path(), installed, &want).await
}

/// One update of an install directory at a time: an exclusive lock on the
/// directory itself (nothing is left in it).
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, CliError> {
    let f =
        std::fs::File::open(dir).map_err(|e| fail("update", format!("{}: {e}", dir.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        fail(
            "busy",
            format!(
                "another banger update is installing into {}; wait for it",
                dir.display()
            ),
        )
    })
}

/// Signature, sums, tarball, unpacked binaries that run: all in `stage`.
async fn fetch_and_stage(
    http: &reqwest::Client,
    url: &str,
    want: &Version,
    stage: &Path,
) -> Result<(), CliError> {
    let base = release::join_url(url, want.as_str());
    let (sums, sig) = release::fetch_sums(http, &base)
        .await
        .map_err(|e| fail("update", e))?;
    let sums =
        verify::verify_sums(&sums, &sig, &verify::release_key()).map_err(|e| fail("refused", e))?;
    let name = release::tarball_name(want.as_str());
    let sha = sums.get(&name).ok_or_else(|| {
        fail(
            "refused",
            format!("the signed SHA256SUMS of {want} names no {name}"),
        )
    })?;
    let tar_url = release::join_url(&base, &name);
    let log = |m: String| eprintln!("{m}");
    let tarball = release::fetch_tarball(&tar_url, sha, &stage.join("download"), &log)
        .await
        .map_err(|e| fail("refused", e))?;
    let v = want.as_str().to_string();
    let st = stage.to_path_buf();
    tokio::task::spawn_blocking(move || {
        install::unpack(&tarball, &st, &v)?;
        install::check_binaries(&st, &v)
    })
    .await
    .map_err(|e| fail("update", e.to_string()))?
    .map_err(|e| fail("refused", e))
}

/// The installed daemon opens the store read-only (the old daemon has
/// stopped and released it): one that cannot read it fails the update.
fn check_migrations(layout: &crate::paths::Layout, dir: &Path) -> Result<(), String> {
    let mut cmd = std::process::Command::new(dir.join("bangerd"));
    cmd.arg("--check-migrations");
    if layout.system {
        cmd.arg("--system");
    }
    let o = crate::host::process::run_bounded(
        cmd.stdin(std::process::Stdio::null()),
        Duration::from_secs(60),
        64 << 10,
    )
    .map_err(|e| {
        format!(
            "running {} --check-migrations: {e}",
            dir.join("bangerd").display()
        )
    })?;
    if !o.status.success() {
        return Err(format!(
            "bangerd --check-migrations cannot open this host's store: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// What must survive the restart: each running VM's name, VMM pid and boot id.
type Running = Vec<(String, Option<u32>, Option<String>)>;

async fn running_vms(layout: &crate::paths::Layout) -> Result<Option<Running>, CliError> {
    let mut c = match client::connect(layout, false).await {
        Ok(c) => c,
        Err(e) if e.kind == super::render::ErrorKind::DaemonNotRunning => return Ok(None),
        Err(e) => return Err(e),
    };
    match client::request(&mut c, layout, Request::VmList, |_| {}).await? {
        Reply::Vms(vms) => {
            let mut r: Running = vms
                .into_iter()
                .filter(|v| v.state == crate::domain::VmState::Running)
                .map(|v| (v.name, v.pid, v.boot_id))
                .collect();
            r.sort();
            Ok(Some(r))
        }
        other => Err(client::unexpected(other)),
    }
}

async fn swap_and_restart(
    ctx: &Ctx,
    dir: &Path,
    stage: &Path,
    installed: &str,
    want: &Version,
) -> Result<u8, CliError> {
    let layout = &ctx.layout;
    let before = running_vms(layout).await?;
    install::swap(dir, stage).map_err(|e| fail("update", format!("{e}; nothing changed")))?;
    eprintln!(
        "installed {want} in {} (old binaries kept as *.previous)",
        dir.display()
    );
    match restart_and_check(ctx, dir, want.as_str(), before.as_ref()).await {
        Ok(()) => {
            let kept = before.map(|b| b.len()).unwrap_or(0);
            out(&format!(
                "updated banger {installed} → {want}; bangerd and bangerd-root restarted, {kept} running VM(s) kept\n"
            ))?;
            Ok(0)
        }
        Err(why) => {
            eprintln!(
                "the new release failed its health check: {why}; rolling back to {installed}"
            );
            install::restore_previous(dir).map_err(|e| {
                fail(
                    "rollback failed",
                    format!("{why}; and putting the old binaries back failed: {e}. They are in {}/*.previous", dir.display()),
                )
            })?;
            let back = restart_and_check(ctx, dir, installed, None).await;
            let state = match back {
                Ok(()) => format!("{installed} is running again"),
                Err(e) => format!(
                    "{installed} is back on disk but did not come up: {e}; see banger doctor"
                ),
            };
            Err(fail(
                "update failed",
                format!("{want}: {why}. Rolled back: {state}"),
            ))
        }
    }
}

/// Restarts the services on the binaries now in `dir` (the daemon
/// stopped, the store checked by the new one, then both started) and checks
/// that the daemon and helper run `version` and every VM in `before` still
/// runs.
async fn restart_and_check(
    ctx: &Ctx,
    dir: &Path,
    version: &str,
    before: Option<&Running>,
) -> Result<(), String> {
    use crate::system::{systemctl, DAEMON_UNIT, HELPER_UNIT};
    let layout = &ctx.layout;
    if layout.system {
        systemctl(&["stop", DAEMON_UNIT])?;
        check_migrations(layout, dir)?;
        systemctl(&["restart", HELPER_UNIT])?;
        systemctl(&["start", DAEMON_UNIT])?;
    } else {
        super::stop_daemon(layout).await.map_err(|e| e.message)?;
        check_migrations(layout, dir)?;
    }
    let mut c = client::connect(layout, true)
        .await
        .map_err(|e| format!("the daemon did not come up: {}", e.message))?;
    if c.server.version != version {
        return Err(format!(
            "the daemon answering is {}, not {version}",
            c.server.version
        ));
    }
    // The helper is connected once the daemon's link reaches it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = match client::request(&mut c, layout, Request::Status, |_| {}).await {
            Ok(Reply::Status(s)) => s,
            Ok(other) => return Err(format!("status answered {other:?}")),
            Err(e) => return Err(e.message),
        };
        match st.helper {
            HelperState::Connected { version: v, .. } if v == version => break,
            // A helper root started for a non-root owner (user mode) is
            // not ours to restart: say so rather than roll back.
            HelperState::Connected {
                version: v, pid, ..
            } if !layout.system && !nix::unistd::geteuid().is_root() => {
                eprintln!(
                    "warning: bangerd-root (pid {pid}) still runs {v}; restart it as root on the new binary: sudo kill {pid}, then sudo {} --owner-uid {} --runtime-dir {}",
                    dir.join("bangerd-root").display(),
                    nix::unistd::getuid(),
                    layout.runtime_dir.display()
                );
                break;
            }
            HelperState::Connected { version: v, .. } => {
                return Err(format!("bangerd-root runs {v}, not {version}"))
            }
            HelperState::NotConnected { reason } if std::time::Instant::now() > deadline => {
                return Err(format!("bangerd-root is not connected: {reason}"))
            }
            HelperState::NotConnected { .. } => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
        }
    }
    if let Some(before) = before {
        let after = running_vms(layout)
            .await
            .map_err(|e| e.message)?
            .unwrap_or_default();
        let lost: Vec<&str> = before
            .iter()
            .filter(|b| !after.contains(b))
            .map(|b| b.0.as_str())
            .collect();
        if !lost.is_empty() {
            return Err(format!(
                "these VMs no longer run as before: {}",
                lost.join(", ")
            ));
        }
    }
    Ok(())
}

/// `doctor`'s release row: the newest release at `[update] url` against
/// this build (a WARN when a newer one is published or the URL does not
/// answer; nothing is fetched without a URL).
pub async fn release_row(layout: &crate::paths::Layout) -> crate::doctor::Check {
    use crate::doctor::{row, Status};
    const NAME: &str = "banger release";
    let installed = crate::version::version();
    let url = crate::config::Config::load(&layout.config_file(), crate::config::HostFacts::probe())
        .ok()
        .and_then(|c| c.update_url);
    let Some(url) = url else {
        return row(
            NAME,
            Status::Pass,
            format!("{installed}; no [update] url set, so banger update has nowhere to look"),
            None,
        );
    };
    let latest = async {
        let http = release::http_client()?;
        let body = release::fetch_small(&http, &release::join_url(&url, "latest")).await?;
        let text = String::from_utf8_lossy(&body).trim().to_string();
        Version::parse(&text).ok_or_else(|| format!("{url}/latest says {text:?}, not a version"))
    };
    let latest = match tokio::time::timeout(Duration::from_secs(5), latest).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return row(
                NAME,
                Status::Warn,
                e,
                Some("check [update] url in the config".into()),
            )
        }
        Err(_) => {
            return row(
                NAME,
                Status::Warn,
                format!("{url} did not answer within 5 s"),
                None,
            )
        }
    };
    match Version::parse(installed) {
        Some(have) if latest > have => row(
            NAME,
            Status::Warn,
            format!("{latest} is available; {installed} is installed"),
            Some("banger update".into()),
        ),
        Some(_) => row(
            NAME,
            Status::Pass,
            format!("{installed} is the newest release at {url}"),
            None,
        ),
        None => row(
            NAME,
            Status::Pass,
            format!("a {installed} build; the newest release is {latest}"),
            None,
        ),
    }
}
