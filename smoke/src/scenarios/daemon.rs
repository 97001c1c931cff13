//! The stack: doctor, daemon and helper restarts that keep VMs, the
//! store's migration check.

use std::process::Command;
use std::time::Duration;

use crate::ctx::{self, Ctx, Res};
use crate::runner;

pub fn doctor(c: &mut Ctx) -> Res {
    let o = c.banger(&["doctor"])?;
    c.check(
        o.ok(),
        format!("banger doctor exits 0, not {:?}: {}", o.code, o.err_line()),
    )?;
    let text = o.out();
    c.check(
        text.contains("PASS") && !text.lines().any(|l| l.contains("FAIL")),
        "the table has PASS rows and no FAIL",
    )?;
    let t = c.banger_ok(&["doctor", "--json"])?;
    let v = c.json(&t)?;
    let rows = v.as_array().cloned().unwrap_or_default();
    c.check(
        rows.len() >= 5,
        format!("doctor --json has its rows: {}", rows.len()),
    )?;
    c.check(
        rows.iter().all(|r| {
            r["name"].is_string() && matches!(r["status"].as_str(), Some("pass" | "warn" | "fail"))
        }),
        "each row has a name and a status",
    )?;
    c.check(!rows.iter().any(|r| r["status"] == "fail"), "no row fails")?;
    for name in ["default image", "kernel"] {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_default();
        c.check(
            row["status"] == "pass",
            format!("doctor finds the {name}: {row}"),
        )?;
    }
    Ok(())
}

fn daemon_pid(c: &mut Ctx) -> Result<u64, String> {
    let t = c.banger_ok(&["daemon", "status", "--json"])?;
    let v = c.json(&t)?;
    v["pid"]
        .as_u64()
        .ok_or_else(|| format!("no pid in daemon status: {t}"))
}

pub fn daemon_restart(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let v = c.create(&n, &[])?;
    let id = v["id"].as_str().unwrap_or("?").to_string();
    let boot = c.boot_id(&n)?;
    let before = daemon_pid(c)?;
    let out = c.banger_ok(&["daemon", "stop"])?;
    c.check(
        out.contains(&format!("stopped bangerd (pid {before})")),
        format!("daemon stop says what it stopped: {out:?}"),
    )?;
    let vmms = c.env.vmm_pids(Some(id.as_str()));
    c.check(!vmms.is_empty(), "the VMM runs on without the daemon")?;
    c.banger_ok(&["daemon", "start"])?;
    let after = daemon_pid(c)?;
    c.check(
        after != before,
        format!("a new daemon: {before} then {after}"),
    )?;
    let v = c.show(&n)?;
    c.check(
        v["state"] == "running",
        format!("the VM is running: {}", v["state"]),
    )?;
    let again = c.boot_id(&n)?;
    c.check(again == boot, format!("the same boot: {boot} then {again}"))?;
    let log = c.env.log_tail("bangerd.log", 400);
    c.check(
        log.contains("re-attached to a running VM"),
        "the daemon log says it re-attached",
    )?;
    Ok(())
}

fn helper_pid(c: &mut Ctx) -> Option<u32> {
    c.env.pids_of("bangerd-root").into_iter().next()
}

pub fn helper_restart(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let boot = c.boot_id(&n)?;
    let old = helper_pid(c).ok_or("bangerd-root runs")?;
    c.note(&format!("killing bangerd-root (pid {old}) with SIGKILL"));
    ctx::kill(old, libc::SIGKILL);
    c.wait_for("bangerd-root to die", Duration::from_secs(10), |_| {
        Ok(!ctx::pid_alive(old))
    })?;
    let again = c.boot_id(&n)?;
    c.check(
        again == boot,
        format!("the VM runs on: {boot} then {again}"),
    )?;
    // Privileged work brings the helper back: a new VM needs a tap.
    let m = c.vm_name("next");
    c.create(&m, &[])?;
    let status = c.banger_ok(&["daemon", "status"])?;
    let new = helper_pid(c);
    c.check(
        status.contains("connected (pid") && new.is_some_and(|p| p != old),
        format!("a new helper is connected: {new:?} after {old}"),
    )?;
    let again = c.boot_id(&n)?;
    c.check(again == boot, format!("still the same boot: {again}"))?;
    c.banger_ok(&["vm", "stop", &n])?;
    let v = c.show(&n)?;
    c.check(v["state"] == "stopped", "the new helper stops it")?;
    Ok(())
}

fn check_migrations_in(c: &mut Ctx, xdg_state: &str) -> Result<crate::ctx::Out, String> {
    let mut cmd = Command::new(c.env.bin("bangerd"));
    cmd.arg("--check-migrations")
        .envs(c.env.envs())
        .env("XDG_STATE_HOME", xdg_state);
    c.run_cmd(cmd, None, Duration::from_secs(60))
}

pub fn check_migrations(c: &mut Ctx) -> Res {
    // The store is the daemon's while it runs: check it stopped.
    runner::stop_stack(c)?;
    let r = check_inner(c);
    let back = c.banger_ok(&["daemon", "start"]);
    r?;
    back?;
    Ok(())
}

fn check_inner(c: &mut Ctx) -> Res {
    let state = c.env.run_dir.join("state");
    let store = c.env.state_dir().join("state.redb");
    let before = std::fs::read(&store).map_err(|e| format!("{}: {e}", store.display()))?;
    let o = check_migrations_in(c, &state.display().to_string())?;
    c.check(
        o.ok(),
        format!(
            "exits 0 on the run's store, not {:?}: {}",
            o.code,
            o.err_line()
        ),
    )?;
    c.check(
        o.out().contains("up to date"),
        format!("up to date: {:?}", o.out()),
    )?;
    let after = std::fs::read(&store).map_err(|e| e.to_string())?;
    c.check(before == after, "the store is byte for byte the same")?;
    // A fresh tree: absent, and nothing is created.
    let fresh = c.dir.join("fresh-state");
    std::fs::create_dir_all(&fresh).map_err(|e| e.to_string())?;
    let o = check_migrations_in(c, &fresh.display().to_string())?;
    c.check(
        o.ok() && o.out().contains("absent"),
        format!("a missing store is absent: {:?}", o.out()),
    )?;
    c.check(
        !fresh.join("banger/state.redb").exists(),
        "nothing was created",
    )?;
    // Not a database: exit 2.
    let bad = c.dir.join("bad-state/banger");
    std::fs::create_dir_all(&bad).map_err(|e| e.to_string())?;
    std::fs::write(bad.join("state.redb"), b"not a database").map_err(|e| e.to_string())?;
    let bad_root = c.dir.join("bad-state").display().to_string();
    let o = check_migrations_in(c, &bad_root)?;
    c.check(
        o.code == Some(2),
        format!("a damaged store exits 2, not {:?}", o.code),
    )?;
    Ok(())
}
