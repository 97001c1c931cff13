//! The fault matrix: SIGKILL the daemon at each stage of `vm create`, and the
//! helper in the middle of its calls; after the next start the host's
//! inventory equals what it was before, or the VM is whole and running (and
//! deleting it then leaves the inventory as it was before).

use std::io::BufRead;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use crate::vms::{show, vm_env, vmm_pids};

/// What banger may leave on the host, with the daemon stopped: interfaces,
/// firewall rules, VMM processes, files of VMs, records.
#[derive(Debug, PartialEq, Eq)]
struct Inventory {
    links: Vec<String>,
    iptables: String,
    ebtables: String,
    vmms: usize,
    vm_files: Vec<String>,
}

fn in_ns(env: &TestEnv, args: &[&str]) -> String {
    env.netns.exec(args).0
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// Taken with the daemon (and its helper) stopped: warm taps are given back
/// on a clean stop, so what remains is what leaked.
fn inventory(env: &TestEnv) -> Inventory {
    env.banger_ok(&["daemon", "stop"]);
    wait_for(
        "bangerd and bangerd-root to exit",
        Duration::from_secs(30),
        || (env.pid_of("bangerd").is_none() && env.pid_of("bangerd-root").is_none()).then_some(()),
    );
    let ipt = banger::host::nat::iptables().unwrap();
    let mut links: Vec<String> = env
        .netns
        .links_json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    links.sort();
    Inventory {
        links,
        iptables: in_ns(env, &[ipt, "-S"]) + &in_ns(env, &[ipt, "-t", "nat", "-S"]),
        ebtables: in_ns(env, &["ebtables", "-L"]),
        vmms: vmm_pids(env).len(),
        vm_files: [
            files_under(&env.state_dir().join("vms")),
            files_under(&env.runtime_dir().join("vms")),
        ]
        .concat(),
    }
}

/// Runs `vm create --name <name>` and SIGKILLs `victim` when the stage
/// `stage` begins (its first line on stderr). Returns the stderr seen.
fn create_and_kill(env: &TestEnv, name: &str, stage: &str, victim: &str) -> String {
    let mut child = env
        .banger_cmd(&["vm", "create", "--name", name])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let marker = format!("  {stage}: ");
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with(&marker) {
            let pid = env
                .pid_of(victim)
                .unwrap_or_else(|| panic!("no {victim} running"));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            break;
        }
    }
    for line in lines {
        seen.push_str(&line.unwrap_or_default());
        seen.push('\n');
    }
    let _ = child.wait();
    seen
}

/// After the fault, with banger started again: the VM is whole and running
/// (then deleted), or gone. Returns which.
fn settle(env: &TestEnv, name: &str) -> &'static str {
    env.banger_ok(&["daemon", "start"]);
    let state = wait_for("the VM to settle", Duration::from_secs(300), || {
        let list: serde_json::Value =
            serde_json::from_str(&env.banger_ok(&["vm", "list", "--json"])).unwrap();
        let vm = list
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned();
        match vm {
            None => Some("gone".to_string()),
            Some(v) if v["state"] == "starting" || v["state"] == "created" => None,
            Some(v) => Some(v["state"].as_str().unwrap().to_string()),
        }
    });
    match state.as_str() {
        "gone" => "gone",
        "running" => {
            let out = env.banger(&[
                "vm",
                "exec",
                name,
                "--",
                "cat",
                "/proc/sys/kernel/random/boot_id",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                show(env, name)["boot_id"].as_str().unwrap(),
                "the record describes the guest that runs"
            );
            assert_eq!(vmm_pids(env).len(), 1, "exactly one VMM");
            env.banger_ok(&["vm", "delete", name]);
            "whole and running"
        }
        other => panic!(
            "VM {name} was left {other}: {}\n{}",
            show(env, name),
            env.daemon_log()
        ),
    }
}

#[test]
fn sigkill_at_every_create_stage_loses_nothing_and_leaks_nothing() {
    let _heavy = heavy();
    let env = vm_env();
    // The bridge and its chains are made by the first VM and stay: the
    // baseline is taken after one.
    env.banger_ok(&["vm", "run", "--rm", "--", "true"]);
    let before = inventory(&env);
    let mut matrix = vec![];
    for (stage, victim) in [
        ("reserve", "bangerd"),
        ("network", "bangerd"),
        ("disks", "bangerd"),
        ("vmm", "bangerd"),
        ("agent", "bangerd"),
        ("network", "bangerd-root"),
        ("vmm", "bangerd-root"),
    ] {
        env.start();
        let name = format!("f-{stage}-{}", victim.len());
        let seen = create_and_kill(&env, &name, stage, victim);
        let outcome = settle(&env, &name);
        let after = inventory(&env);
        assert_eq!(
            after,
            before,
            "after SIGKILL of {victim} at {stage}:\n{seen}\n{}",
            env.daemon_log()
        );
        matrix.push(format!(
            "{victim:<13} at {stage:<8} -> {outcome}; inventory as before"
        ));
    }
    println!("fault matrix:\n{}", matrix.join("\n"));
}
