//! When a guest is ready for a command, and when its boot is over.
//!
//! **Ready** (the readiness contract, docs/ARCHITECTURE.md): the guest's
//! boot can no longer change the world a command runs in. On a systemd
//! image PID 1 (`--init`) installs a runtime unit, `banger-ready.service`,
//! in `/run/systemd/system` before it hands over to systemd. The unit is
//! wanted by `multi-user.target` and ordered after `sysinit.target` (which
//! holds `systemd-tmpfiles-setup` — the `--remove --boot` pass that empties
//! /tmp —, sysctl, sysusers, the mounts of /tmp and /var/tmp), after
//! `basic.target`, and after the units that configure the network, name
//! servers and logins, and after sshd (a VM reported running can be
//! reached with `vm ssh` at once); it runs `banger-agent --mark-ready`, which writes
//! [`READY_FILE`]. On an image whose init is the agent's own (no init),
//! or an init banger cannot hook, ready is when the agent's own set-up is
//! done: nothing else runs at boot that banger knows of.
//!
//! A restored clone is ready only once its own SSH host key is in place
//! and sshd listens again with it (`identity.rs`): running means
//! reachable, by the clone's key and not the snapshot's.
//!
//! **Settled**: ready, and systemd has no boot job left
//! (`systemctl is-system-running --wait` says `running` or `degraded`):
//! sshd listens, every unit of the boot has started. Automatic snapshots
//! are taken only of settled guests, so a clone restored from one has
//! nothing of its boot left to replay.

use std::path::Path;
use std::time::{Duration, Instant};

/// Written by `banger-agent --mark-ready` (the readiness unit).
pub const READY_FILE: &str = "/run/banger/ready";

/// The runtime unit's name.
pub const UNIT: &str = "banger-ready.service";

/// The readiness unit for an agent at `agent` (its absolute path).
pub fn unit_text(agent: &str) -> String {
    format!(
        "\
# Written by banger-agent --init at every boot (a runtime unit: /run).
# banger runs no user command before this unit has run.
[Unit]
Description=banger: the boot can no longer change a command's world
DefaultDependencies=no
After=sysinit.target basic.target local-fs.target tmp.mount var-tmp.mount
After=systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service
After=systemd-sysctl.service systemd-sysusers.service systemd-remount-fs.service
After=systemd-hostnamed.service systemd-user-sessions.service
After=network.target systemd-networkd.service networking.service systemd-resolved.service
# Running means reachable: sshd listens (where the image has it).
After=ssh.service sshd.service
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={agent} --mark-ready
"
    )
}

/// Installs the readiness unit under `root` (the guest's `/`): the unit in
/// `run/systemd/system`, wanted by `multi-user.target` and the default
/// target.
pub fn install_unit(root: &Path, agent: &str) -> Result<(), String> {
    let dir = root.join("run/systemd/system");
    let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(&dir).map_err(|e| err("creating", &dir, e))?;
    let unit = dir.join(UNIT);
    std::fs::write(&unit, unit_text(agent)).map_err(|e| err("writing", &unit, e))?;
    for target in ["multi-user.target.wants", "default.target.wants"] {
        let wants = dir.join(target);
        std::fs::create_dir_all(&wants).map_err(|e| err("creating", &wants, e))?;
        let link = wants.join(UNIT);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{UNIT}"), &link)
            .map_err(|e| err("linking", &link, e))?;
    }
    Ok(())
}

/// `--mark-ready`: records that the readiness unit ran.
pub fn mark_ready(root: &Path) -> Result<(), String> {
    let file = root.join(READY_FILE.trim_start_matches('/'));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = file.with_extension("tmp");
    let now = crate::uptime();
    std::fs::write(&tmp, format!("{now:.3}\n"))
        .and_then(|_| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// How the agent learns the guest is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The readiness unit was installed: wait for its file.
    Unit,
    /// Nothing to wait for past the agent's own set-up.
    None,
}

/// Waits (bounded by `wait`) until the guest is ready and, with `settled`,
/// until its boot is over. Answers what it found.
pub async fn wait(
    root: &Path,
    hook: Hook,
    settled: bool,
    ssh: Option<&crate::identity::HostKeys>,
    wait: Duration,
) -> crate::api::Readiness {
    let start = Instant::now();
    let deadline = start + wait;
    let file = root.join(READY_FILE.trim_start_matches('/'));
    // With `ssh`, a restored clone is ready once its own SSH host key is
    // served too (`identity.rs`): before that, sshd is reloading or has
    // the snapshot's key.
    let ready = loop {
        let booted = match hook {
            Hook::None => true,
            Hook::Unit => file.exists(),
        };
        if booted && ssh.is_none_or(|k| k.served()) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut r = crate::api::Readiness {
        ready,
        ..Default::default()
    };
    if r.ready {
        r.ready_at_s = match hook {
            Hook::Unit => std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            Hook::None => None,
        };
    }
    r.settled = match (hook, r.ready) {
        (Hook::None, _) => true,
        (Hook::Unit, false) => false,
        (Hook::Unit, true) if !settled => false,
        (Hook::Unit, true) => {
            let left = deadline.saturating_duration_since(Instant::now());
            let state = system_state(left).await;
            let done = matches!(state.as_str(), "running" | "degraded");
            r.system_state = state;
            done
        }
    };
    r.waited_ms = start.elapsed().as_millis() as u64;
    r
}

/// `systemctl is-system-running --wait`, killed after `limit`: systemd's
/// word on whether the boot is over (`running`, `degraded`), or what went
/// wrong (`timeout`, the error).
async fn system_state(limit: Duration) -> String {
    let child = tokio::process::Command::new("systemctl")
        .args(["is-system-running", "--wait"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return format!("systemctl: {e}"),
    };
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect(),
        Ok(Err(e)) => format!("systemctl: {e}"),
        Err(_) => "timeout".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed when dropped.
    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("agent-ready-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_unit_is_ordered_after_the_units_that_change_a_commands_world() {
        let t = unit_text("/usr/local/bin/banger-agent");
        let after: Vec<&str> = t
            .lines()
            .filter_map(|l| l.strip_prefix("After="))
            .flat_map(|l| l.split_whitespace())
            .collect();
        for u in [
            "sysinit.target",
            "systemd-tmpfiles-setup.service",
            "systemd-sysctl.service",
            "systemd-sysusers.service",
            "tmp.mount",
            "network.target",
            "systemd-user-sessions.service",
            "ssh.service",
        ] {
            assert!(after.contains(&u), "not ordered after {u}:\n{t}");
        }
        assert!(t.contains("ExecStart=/usr/local/bin/banger-agent --mark-ready"));
        // Wanted by multi-user.target and ordered after basic.target: no
        // DefaultDependencies, or the unit would order itself into a cycle
        // with the network services (After=basic.target themselves).
        assert!(t.contains("DefaultDependencies=no"));
    }

    #[test]
    fn install_writes_the_unit_and_its_wants_links() {
        let d = Dir::new("t1");
        install_unit(d.path(), "/a/agent").unwrap();
        // Twice: a second boot of the same tree (no tmpfs) replaces it.
        install_unit(d.path(), "/a/agent").unwrap();
        let sys = d.path().join("run/systemd/system");
        assert!(std::fs::read_to_string(sys.join(UNIT))
            .unwrap()
            .contains("ExecStart=/a/agent --mark-ready"));
        for t in ["multi-user.target.wants", "default.target.wants"] {
            let l = std::fs::read_link(sys.join(t).join(UNIT)).unwrap();
            assert_eq!(l, Path::new("../banger-ready.service"));
            assert!(sys.join(t).join(UNIT).is_file(), "{t} link resolves");
        }
    }

    #[tokio::test]
    async fn a_unit_hook_waits_for_the_mark_and_times_out_without_it() {
        let d = Dir::new("t2");
        let r = wait(
            d.path(),
            Hook::Unit,
            false,
            None,
            Duration::from_millis(150),
        )
        .await;
        assert!(!r.ready && !r.settled);
        assert!(r.waited_ms >= 150, "{r:?}");
        let root = d.path().to_path_buf();
        let marker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            mark_ready(&root).unwrap();
        });
        let r = wait(d.path(), Hook::Unit, false, None, Duration::from_secs(10)).await;
        marker.await.unwrap();
        assert!(r.ready, "{r:?}");
        assert!(r.ready_at_s.is_some());
        assert!(!r.settled, "settled was not asked for");
    }

    #[tokio::test]
    async fn no_hook_is_ready_and_settled_at_once() {
        let d = Dir::new("t3");
        let r = wait(d.path(), Hook::None, true, None, Duration::from_secs(5)).await;
        assert!(r.ready && r.settled, "{r:?}");
        assert!(r.waited_ms < 1000);
    }
}
