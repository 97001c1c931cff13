//! VMs: run, exit codes, argv, stdin, output, refusals, lifecycle, set,
//! restart, kill, prune, concurrency.

use std::time::Duration;

use crate::ctx::{Ctx, Res, BOOT_TIMEOUT};

/// `vm run --rm --name <name> <extra> -- <cmd>` with the boot deadline.
pub fn run_rm(
    c: &mut Ctx,
    name: &str,
    extra: &[&str],
    cmd: &[&str],
) -> Result<crate::ctx::Out, String> {
    let mut a = vec!["vm", "run", "--rm", "--name", name];
    a.extend_from_slice(extra);
    a.push("--");
    a.extend_from_slice(cmd);
    c.banger_within(&a, BOOT_TIMEOUT)
}

fn gone(c: &mut Ctx, name: &str) -> Res {
    let names = c.vm_names()?;
    c.check(
        !names.iter().any(|n| n == name),
        format!("VM {name} is gone from vm list: {names:?}"),
    )?;
    Ok(())
}

pub fn bare(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let o = run_rm(c, &n, &["--nat"], &["echo", "hi"])?;
    c.check(
        o.ok(),
        format!("vm run exits 0, not {:?}: {}", o.code, o.err_line()),
    )?;
    c.check(
        o.out() == "hi\n",
        format!("stdout is \"hi\\n\", not {:?}", o.out()),
    )?;
    let err = o.err();
    c.check(
        err.starts_with("spec: 1 vcpu | 512 MiB | 2G disk"),
        format!(
            "stderr starts with the spec line of the run's defaults: {:?}",
            err.lines().next()
        ),
    )?;
    for stage in ["reserve", "network", "disks", "vmm", "agent"] {
        c.check(
            err.contains(&format!("  {stage}: ")),
            format!("stage {stage} is shown"),
        )?;
    }
    c.check(err.contains("ready in "), "`ready in` is shown")?;
    gone(c, &n)?;
    // Its NAT rules went with it (other scenarios' VMs keep theirs).
    c.wait_for(
        "no NAT rule of a VM that is gone",
        Duration::from_secs(10),
        |c| Ok(crate::scenarios::net::orphan_rules(c)?.is_empty()),
    )?;
    Ok(())
}

pub fn exit_code(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let o = run_rm(c, &n, &[], &["sh", "-c", "exit 7"])?;
    c.check(
        o.code == Some(7),
        format!("exits 7, not {:?}: {}", o.code, o.err_line()),
    )?;
    gone(c, &n)
}

pub fn quoting(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let o = run_rm(
        c,
        &n,
        &[],
        &["printf", "%s|", "a b", "c'd", "$HOME", "\"q\"", ""],
    )?;
    c.check(o.ok(), format!("exits 0: {}", o.err_line()))?;
    c.check(
        o.out() == "a b|c'd|$HOME|\"q\"||",
        format!("argv arrives as given: {:?}", o.out()),
    )?;
    gone(c, &n)
}

pub fn stdin(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    // 4 MiB of varied bytes, then the guest counts and checks the tail.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .chain(b"\nEND-OF-INPUT\n".iter().copied())
        .collect();
    let want = data.len();
    let o = c.banger_stdin(
        &[
            "vm",
            "run",
            "--rm",
            "--name",
            n.as_str(),
            "--",
            "sh",
            "-c",
            "tee /root/in | wc -c; tail -n 1 /root/in",
        ],
        &data,
    )?;
    c.check(o.ok(), format!("exits 0: {}", o.err_line()))?;
    c.check(
        o.out() == format!("{want}\nEND-OF-INPUT\n"),
        format!("the guest got {want} bytes and the EOF: {:?}", o.out()),
    )?;
    gone(c, &n)
}

pub fn large_output(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let o = run_rm(
        c,
        &n,
        &[],
        &["sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' x"],
    )?;
    c.check(o.ok(), format!("exits 0: {}", o.err_line()))?;
    c.check(
        o.stdout.len() == 20_000_000,
        format!("20000000 bytes arrive, not {}", o.stdout.len()),
    )?;
    c.check(o.stdout.iter().all(|&b| b == b'x'), "every byte is an x")?;
    gone(c, &n)
}

pub fn detach_refusals(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let o = c.banger(&["vm", "run", "-d", "--rm", "--name", &n])?;
    c.check(
        o.code == Some(125),
        format!("-d --rm exits 125, not {:?}", o.code),
    )?;
    c.check(
        o.err().contains("contradict"),
        format!("-d --rm says why: {}", o.err_line()),
    )?;
    let o = c.banger(&["vm", "run", "-d", "--name", n.as_str(), "--", "true"])?;
    c.check(
        o.code == Some(125),
        format!("-d -- cmd exits 125, not {:?}", o.code),
    )?;
    c.check(
        o.err().contains("-d does not take a command"),
        format!("-d -- cmd says why: {}", o.err_line()),
    )?;
    gone(c, &n)?;
    // -d alone: the VM stays, running.
    let out = c.banger_ok_within(&["vm", "run", "-d", "--name", &n], BOOT_TIMEOUT)?;
    c.check(
        out.contains(&format!("VM {n} is running at")),
        format!("-d says where it runs: {out:?}"),
    )?;
    let v = c.show(&n)?;
    c.check(
        v["state"] == "running",
        format!("the VM runs: {}", v["state"]),
    )?;
    c.banger_ok(&["vm", "delete", &n])?;
    gone(c, &n)
}

pub fn invalid_spec(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (
            vec!["vm", "create", "--name", n.as_str(), "--vcpu", "0"],
            "--vcpu 0 is out of range",
            1,
        ),
        (
            vec!["vm", "create", "--name", n.as_str(), "--memory", "1"],
            "at least 256 MiB",
            1,
        ),
        (
            vec!["vm", "create", "--name", n.as_str(), "--image", "nope"],
            "no image named \"nope\"",
            1,
        ),
        (
            vec![
                "vm",
                "run",
                "--rm",
                "--name",
                n.as_str(),
                "--vcpu",
                "0",
                "--",
                "true",
            ],
            "--vcpu 0 is out of range",
            125,
        ),
        (
            vec![
                "vm",
                "run",
                "--rm",
                "--name",
                n.as_str(),
                "--image",
                "nope",
                "--",
                "true",
            ],
            "no image named \"nope\"",
            125,
        ),
        // More memory than the host has: refused before anything is made
        // (QEMU failing to allocate it left a VM in `error` behind).
        (
            vec![
                "vm",
                "run",
                "--rm",
                "--name",
                n.as_str(),
                "--memory",
                "900G",
                "--",
                "true",
            ],
            "of memory: use at most",
            125,
        ),
    ];
    for (args, want, code) in cases {
        let o = c.banger(&args)?;
        let what = args.join(" ");
        c.check(
            o.code == Some(code),
            format!("`{what}` exits {code}, not {:?}", o.code),
        )?;
        c.check(
            o.err().contains(want),
            format!("`{what}` says {want:?}: {}", o.err_line()),
        )?;
    }
    gone(c, &n)
}

pub fn invalid_name(c: &mut Ctx) -> Res {
    for (args, code) in [
        (vec!["vm", "create", "--name", "Bad_Name"], 1),
        (
            vec!["vm", "run", "--rm", "--name", "bad.name", "--", "true"],
            125,
        ),
    ] {
        let o = c.banger(&args)?;
        let what = args.join(" ");
        c.check(
            o.code == Some(code),
            format!("`{what}` exits {code}, not {:?}", o.code),
        )?;
        c.check(
            o.err().contains("invalid name"),
            format!("`{what}` says invalid name: {}", o.err_line()),
        )?;
    }
    let o = c.banger(&["vm", "show", "Bad_Name"])?;
    c.check(
        o.err().contains("invalid name"),
        "vm show refuses the name too",
    )?;
    let names = c.vm_names()?;
    c.check(
        !names
            .iter()
            .any(|n| n.eq_ignore_ascii_case("bad_name") || n.eq_ignore_ascii_case("bad.name")),
        format!("no row was made: {names:?}"),
    )?;
    Ok(())
}

pub fn lifecycle(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let v = c.create(&n, &[])?;
    c.check(
        v["state"] == "running",
        format!("created and running: {}", v["state"]),
    )?;
    let ssh = |c: &mut Ctx, cmd: &[&str]| -> Result<String, String> {
        let mut a = vec!["vm", "ssh", n.as_str(), "--"];
        a.extend_from_slice(cmd);
        c.banger_ok_within(&a, crate::ctx::GUEST_TIMEOUT)
    };
    ssh(c, &["sh", "-c", "echo persisted > /root/marker && sync"])?;
    c.banger_ok_within(&["vm", "stop", &n], BOOT_TIMEOUT)?;
    let v = c.show(&n)?;
    c.check(v["state"] == "stopped", format!("stopped: {}", v["state"]))?;
    c.check(
        v["pid"].is_null(),
        format!("no VMM pid once stopped: {}", v["pid"]),
    )?;
    let id = v["id"].as_str().unwrap_or("?").to_string();
    let vmms = c.env.vmm_pids(Some(id.as_str()));
    c.check(vmms.is_empty(), format!("its VMM is gone: {vmms:?}"))?;
    c.banger_ok_within(&["vm", "start", &n], BOOT_TIMEOUT)?;
    let got = ssh(c, &["cat", "/root/marker"])?;
    c.check(
        got == "persisted\n",
        format!("/root survives stop/start: {got:?}"),
    )?;
    let prompt = format!("{n} login:");
    c.wait_for(
        "the login prompt on the serial console",
        Duration::from_secs(120),
        |c| Ok(c.banger_ok(&["vm", "logs", &n])?.contains(&prompt)),
    )?;
    c.banger_ok_within(&["vm", "delete", &n], BOOT_TIMEOUT)?;
    gone(c, &n)?;
    let dir = c.env.state_dir().join("vms").join(&id);
    c.check(!dir.exists(), format!("{} is removed", dir.display()))?;
    Ok(())
}

pub fn vm_set(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    // Running: the shape is recorded for the next start; the disk waits.
    let o = c.banger_ok(&["vm", "set", &n, "--vcpu", "2"])?;
    c.check(
        o.contains("apply at the next start"),
        format!("vm set says when the shape applies: {o}"),
    )?;
    let o = c.banger(&["vm", "set", &n, "--disk-size", "12G"])?;
    c.check(
        !o.ok() && o.err().contains("only while it is stopped"),
        format!("the disk grows only while stopped: {}", o.err_line()),
    )?;
    let nproc = c.exec(&n, &["nproc"])?.out();
    c.check(
        nproc.trim() == "1",
        format!("1 vcpu until restarted: {nproc:?}"),
    )?;
    let df = |c: &mut Ctx| -> Result<u64, String> {
        let s = c.sh_ok(&n, "df -k --output=size /root | tail -1")?;
        s.trim().parse().map_err(|e| format!("df: {s:?}: {e}"))
    };
    let before = df(c)?;
    c.banger_ok_within(&["vm", "stop", &n], BOOT_TIMEOUT)?;
    let o = c.banger(&["vm", "set", &n, "--disk-size", "1G"])?;
    c.check(
        !o.ok() && o.err().contains("only grows"),
        format!("the work disk never shrinks: {}", o.err_line()),
    )?;
    c.banger_ok(&["vm", "set", &n, "--memory", "768", "--disk-size", "12G"])?;
    c.banger_ok_within(&["vm", "start", &n], BOOT_TIMEOUT)?;
    let after = df(c)?;
    c.check(
        after > 11 << 20 && after > before,
        format!("the guest's /root grew: {before} KiB, then {after} KiB"),
    )?;
    let nproc = c.exec(&n, &["nproc"])?.out();
    c.check(
        nproc.trim() == "2",
        format!("nproc follows vm set: {nproc:?}"),
    )?;
    let v = c.show(&n)?;
    c.check(
        v["vcpu"] == 2 && v["memory_mib"] == 768,
        format!(
            "the record has the new shape: {} vcpu, {} MiB",
            v["vcpu"], v["memory_mib"]
        ),
    )?;
    let mem = c.sh_ok(&n, "awk '/MemTotal/ {print $2}' /proc/meminfo")?;
    let kib: u64 = mem.trim().parse().unwrap_or(0);
    c.check(
        kib > 600 * 1024,
        format!("the guest has more than 600 MiB: {kib} KiB"),
    )?;
    Ok(())
}

pub fn restart_boot_id(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let b1 = c.boot_id(&n)?;
    let v = c.show(&n)?;
    c.check(
        v["boot_id"].as_str() == Some(b1.as_str()),
        format!("vm show has the guest's boot id: {} vs {b1}", v["boot_id"]),
    )?;
    c.banger_ok_within(&["vm", "restart", &n], BOOT_TIMEOUT)?;
    let b2 = c.boot_id(&n)?;
    c.check(
        !b2.is_empty() && b1 != b2,
        format!("a new boot id: {b1} then {b2}"),
    )?;
    let v = c.show(&n)?;
    c.check(
        v["state"] == "running" && v["boot_id"].as_str() == Some(b2.as_str()),
        format!(
            "running with the new boot id: {} {}",
            v["state"], v["boot_id"]
        ),
    )?;
    Ok(())
}

pub fn kill_signal(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let v = c.create(&n, &[])?;
    let pid = v["pid"].as_u64().ok_or("a running VM has a VMM pid")? as u32;
    let o = c.banger(&["vm", "kill", &n, "--signal", "STOP"])?;
    c.check(
        !o.ok() && o.err().contains("not allowed"),
        format!("STOP is not allowed: {}", o.err_line()),
    )?;
    c.banger_ok(&["vm", "kill", &n, "--signal", "KILL"])?;
    let v = c.show(&n)?;
    c.check(
        v["state"] == "stopped",
        format!("stopped after KILL: {}", v["state"]),
    )?;
    c.check(v["pid"].is_null(), format!("no pid: {}", v["pid"]))?;
    c.wait_for("the VMM to be gone", Duration::from_secs(10), |_| {
        Ok(!crate::ctx::pid_alive(pid))
    })?;
    // It starts again.
    c.banger_ok_within(&["vm", "start", &n], BOOT_TIMEOUT)?;
    let o = c.exec(&n, &["true"])?;
    c.check(
        o.ok(),
        format!("it boots again after a kill: {}", o.err_line()),
    )?;
    Ok(())
}

pub fn prune_keeps_running(c: &mut Ctx) -> Res {
    let keep = c.vm_name("keep");
    let gone_vm = c.vm_name("gone");
    c.create(&keep, &[])?;
    c.create(&gone_vm, &[])?;
    c.banger_ok_within(&["vm", "stop", &gone_vm], BOOT_TIMEOUT)?;
    // Without -f and without a terminal nothing happens.
    let o = c.banger(&["vm", "prune"])?;
    c.check(
        !o.ok() && o.err().contains("-f"),
        format!("prune asks for -f: {}", o.err_line()),
    )?;
    let names = c.vm_names()?;
    c.check(names.contains(&gone_vm), "nothing was pruned without -f")?;
    let out = c.banger_ok_within(&["vm", "prune", "-f"], BOOT_TIMEOUT)?;
    c.check(
        out.trim() == format!("deleted {gone_vm}"),
        format!("prune -f deletes the stopped VM: {out:?}"),
    )?;
    let names = c.vm_names()?;
    c.check(
        names == vec![keep.clone()],
        format!("only the running VM is left: {names:?}"),
    )?;
    let v = c.show(&keep)?;
    c.check(
        v["state"] == "running",
        format!("and it runs: {}", v["state"]),
    )?;
    Ok(())
}

pub fn concurrent_runs(c: &mut Ctx) -> Res {
    let names: Vec<String> = (1..=3).map(|i| c.vm_name(&format!("r{i}"))).collect();
    let runs: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            [
                "vm",
                "run",
                "--rm",
                "--name",
                n.as_str(),
                "--",
                "cat",
                "/proc/sys/kernel/random/boot_id",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        })
        .collect();
    let outs = c.banger_parallel(&runs, Duration::from_secs(900))?;
    let mut boots = Vec::new();
    for (n, o) in names.iter().zip(&outs) {
        c.check(o.ok(), format!("run {n} exits 0: {}", o.err_line()))?;
        boots.push(o.out().trim().to_string());
    }
    let mut uniq = boots.clone();
    uniq.sort();
    uniq.dedup();
    c.check(
        uniq.len() == 3 && uniq.iter().all(|b| b.len() == 36),
        format!("three distinct boots: {boots:?}"),
    )?;
    let left = c.vm_names()?;
    c.check(
        names.iter().all(|n| !left.contains(n)),
        format!("none is left: {left:?}"),
    )?;
    Ok(())
}
