//! The readiness contract on real guests: a command starts only when the
//! guest's boot can no longer change its world (boot-time /tmp cleanup,
//! hostname, sysctl, network), and a VM reported running is reachable
//! (sshd listens) — cold, restored `--from` a snapshot, and warm (the
//! warm-run scenario calls [`tmp_runs`], [`gcc_first`] and
//! [`detached_reachable`] on the warm path).

use std::time::Duration;

use super::vm::run_rm;
use crate::ctx::{Ctx, Res, BOOT_TIMEOUT};

/// Writes /tmp/x as the first thing, reads it back 10 s later (past the
/// boot's `systemd-tmpfiles --remove --boot`, which emptied /tmp under
/// commands that started mid-boot), and says whether the readiness unit
/// had run when the command started.
const TMP_SCRIPT: &str = "echo kept > /tmp/x; r=$(systemctl is-active banger-ready.service); \
     sleep 10; cat /tmp/x; echo \"$r\"";

/// A C program compiled as the first thing (gcc's temporaries live in
/// /tmp between cc1 and as), then run.
const GCC_SCRIPT: &str = "cd /root && printf '#include <stdio.h>\\nint main(void){puts(\"compiled\");return 0;}\\n' > t.c && \
     gcc -O1 -o t t.c && ./t";

/// Four `vm run --rm <extra> -- sh -c TMP_SCRIPT` at once; each must print
/// the file back and `active`.
pub fn tmp_runs(c: &mut Ctx, tag: &str, extra: &[&str]) -> Res {
    let names: Vec<String> = (1..=4).map(|i| c.vm_name(&format!("{tag}{i}"))).collect();
    let runs: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let mut a: Vec<String> = ["vm", "run", "--rm", "--name", n.as_str()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend(extra.iter().map(|s| s.to_string()));
            a.extend(["--", "sh", "-c", TMP_SCRIPT].iter().map(|s| s.to_string()));
            a
        })
        .collect();
    let outs = c.banger_parallel(&runs, Duration::from_secs(900))?;
    for (n, o) in names.iter().zip(&outs) {
        c.check(
            o.ok() && o.out() == "kept\nactive\n",
            format!(
                "{tag} run {n}: /tmp/x written first is there 10 s later, and the readiness unit had run (exit {:?}, stdout {:?}): {}",
                o.code,
                o.out(),
                o.err_line()
            ),
        )?;
    }
    let left = c.vm_names()?;
    c.check(
        names.iter().all(|n| !left.contains(n)),
        format!("none of the {tag} runs is left: {left:?}"),
    )?;
    Ok(())
}

/// A C program compiled and run as the first command of a `vm run --rm`.
pub fn gcc_first(c: &mut Ctx, tag: &str, extra: &[&str]) -> Res {
    let n = c.vm_name(tag);
    let o = run_rm(c, &n, extra, &["sh", "-c", GCC_SCRIPT])?;
    c.check(
        o.ok() && o.out() == "compiled\n",
        format!(
            "{tag}: gcc as the first command compiles and runs (exit {:?}, stdout {:?}): {}",
            o.code,
            o.out(),
            o.err_line()
        ),
    )?;
    Ok(())
}

/// `vm run -d <extra>`, then at once: `vm ports` lists sshd on 22 and
/// `vm ssh -- true` succeeds. The VM is deleted after.
pub fn detached_reachable(c: &mut Ctx, tag: &str, extra: &[&str]) -> Res {
    let n = c.vm_name(tag);
    let mut a = vec!["vm", "run", "-d", "--name", n.as_str()];
    a.extend_from_slice(extra);
    c.banger_ok_within(&a, BOOT_TIMEOUT)?;
    let t = c.banger_ok(&["vm", "ports", &n, "--json"])?;
    let ports = c.json(&t)?;
    let ssh = ports
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["port"] == 22 && p["proto"].as_str().unwrap_or("").starts_with("tcp"));
    c.check(
        ssh,
        format!("{tag}: right after vm run -d, vm ports lists 22: {ports}"),
    )?;
    let o = c.banger_within(&["vm", "ssh", &n, "--", "true"], Duration::from_secs(60))?;
    c.check(
        o.ok(),
        format!(
            "{tag}: right after vm run -d, vm ssh -- true exits 0: {}",
            o.err_line()
        ),
    )?;
    c.banger_ok(&["vm", "delete", &n])?;
    Ok(())
}

/// Cold runs: four at once keep their /tmp; gcc first; -d reachable.
pub fn cold(c: &mut Ctx) -> Res {
    tmp_runs(c, "cold", &[])?;
    gcc_first(c, "gcc", &[])?;
    detached_reachable(c, "det", &[])
}

/// Runs restored `--from` a snapshot of a VM taken right after its create
/// (the snapshot waits for the boot to settle): four at once keep their
/// /tmp, and a detached one is reachable at once.
pub fn from_snapshot(c: &mut Ctx) -> Res {
    let src = c.vm_name("src");
    c.create(&src, &[])?;
    let s = c.snapshot_name("rd");
    let out = c.banger_ok_within(&["vm", "snapshot", &src, "--name", &s], BOOT_TIMEOUT)?;
    c.check(
        out.contains(&format!("snapshot {s} of {src}")),
        format!("snapshot made: {out:?}"),
    )?;
    c.banger_ok(&["vm", "delete", &src])?;
    let r = tmp_runs(c, "from", &["--from", &s])
        .and_then(|_| detached_reachable(c, "fromd", &["--from", &s]));
    let _ = c.banger(&["snapshot", "delete", &s]);
    r
}
