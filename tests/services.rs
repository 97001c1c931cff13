//! Guest services on real QEMU guests in the test's namespace: `<name>.vm`
//! DNS (from the host with dig, from a guest through its resolver), the
//! host resolver routing (a fake `resolvectl`), `vm ports`, `vm stats`,
//! `vm health`, the per-VM children's restarts, and `ssh-config`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::vms::{show, vm_env};

fn dig(env: &TestEnv, name: &str) -> (String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &env.netns.name, "dig"])
        .args(["@172.16.0.1", "-p", "42069", "+time=1", "+tries=1", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string();
    let answer = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("")
        .to_string();
    (status, answer)
}

fn ip_of(env: &TestEnv, name: &str) -> String {
    show(env, name)["ip"].as_str().unwrap().to_string()
}

/// Starts the stack in a private mount namespace whose /usr/local/sbin
/// holds a `resolvectl` that records its arguments (the helper, started by
/// the daemon, inherits it; systemd-resolved does not run here).
fn start_with_fake_resolvectl(env: &TestEnv) -> std::path::PathBuf {
    let log = env.root().join("resolvectl.log");
    let fake = env.root().join("resolvectl");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .unwrap();
    // vm_env's image checks started one outside the namespace.
    env.banger_ok(&["daemon", "stop"]);
    let script = format!(
        "mount -t tmpfs tmpfs /usr/local/sbin && install -m 0755 {} /usr/local/sbin/resolvectl && exec \"$0\" daemon start",
        fake.display()
    );
    let out = env
        .netns
        .command("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(bin("banger"))
        .envs(env.envs())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    log
}

/// `<name>.vm` from the host and from a guest, the host resolver routed
/// through the helper and reverted on stop, and the DNS server or its
/// socket task killed and restarted (needs a fake resolvectl and test
/// hooks; the smoke suite's `dns` scenario covers the rest).
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "breaks actors through `banger debug`: run with --features test-hooks (scripts/test.sh does)"
)]
fn dns_answers_host_and_guests_survives_its_restarts_and_reverts_on_stop() {
    let _heavy = heavy();
    let env = vm_env();
    let resolvectl = start_with_fake_resolvectl(&env);
    env.banger_ok(&["vm", "create", "--name", "alpha"]);
    env.banger_ok(&["vm", "create", "--name", "beta"]);
    let (alpha, beta) = (ip_of(&env, "alpha"), ip_of(&env, "beta"));

    // From the host: each running VM's name, NXDOMAIN for others.
    assert_eq!(dig(&env, "alpha.vm"), ("NOERROR".into(), alpha.clone()));
    assert_eq!(dig(&env, "beta.vm"), ("NOERROR".into(), beta.clone()));
    assert_eq!(dig(&env, "nosuch.vm").0, "NXDOMAIN");
    assert_eq!(dig(&env, "example.com").0, "REFUSED");
    // The host resolver was routed through the helper.
    let routed = wait_for("resolvectl to be run", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&resolvectl).unwrap_or_default();
        t.contains("domain").then_some(t)
    });
    assert!(
        routed.contains("dns banger0 172.16.0.1:42069\n")
            && routed.contains("domain banger0 ~vm\n"),
        "{routed}"
    );
    // From a guest, through its own resolver (port 53, redirected).
    let got = env.banger_ok(&["vm", "exec", "alpha", "--", "getent", "hosts", "beta.vm"]);
    assert!(got.starts_with(&beta), "{got}");

    // The DNS actor or its socket task dies: answering resumes.
    let started = |env: &TestEnv| -> Option<u64> {
        let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(
            &env.banger(&["dns", "--json"]).stdout,
        ))
        .ok()?;
        v["started_unix_ms"].as_u64()
    };
    for hook in ["panic-dns", "panic-dns-task"] {
        let before = started(&env).unwrap();
        env.banger_ok(&["debug", hook]);
        let t = Instant::now();
        wait_for("a new DNS server to answer", Duration::from_secs(5), || {
            (started(&env).is_some_and(|s| s != before) && dig(&env, "alpha.vm").1 == alpha)
                .then_some(())
        });
        eprintln!("dns: a new server answers {:?} after {hook}", t.elapsed());
    }

    // Records follow the lifecycle: stopped and deleted VMs are gone.
    env.banger_ok(&["vm", "stop", "beta"]);
    assert_eq!(dig(&env, "beta.vm").0, "NXDOMAIN");
    env.banger_ok(&["vm", "delete", "beta"]);
    assert_eq!(dig(&env, "beta.vm").0, "NXDOMAIN");
    assert_eq!(dig(&env, "alpha.vm").1, alpha);

    env.banger_ok(&["vm", "delete", "alpha"]);
    assert_eq!(dig(&env, "alpha.vm").0, "NXDOMAIN");
    // Shutdown reverts the host resolver's settings.
    env.banger_ok(&["daemon", "stop"]);
    let log = std::fs::read_to_string(&resolvectl).unwrap();
    assert!(log.ends_with("revert banger0\n"), "{log}");
}

/// Every per-VM child (agent session, guest watch, VMM monitor) killed in
/// turn: restarted, the guest's boot the same, exec works, and the other
/// VM never notices.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "breaks actors through `banger debug`: run with --features test-hooks (scripts/test.sh does)"
)]
fn every_per_vm_child_is_restarted_without_touching_the_guest() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "alpha"]);
    env.banger_ok(&["vm", "create", "--name", "beta"]);

    // Every per-VM child killed in turn: restarted, same boot, exec works.
    let boot = show(&env, "alpha")["boot_id"].clone();
    for hook in ["kill-session", "panic-watch", "panic-monitor"] {
        env.banger_ok(&["debug", hook, "alpha"]);
        wait_for(
            &format!("{hook} to be restarted"),
            Duration::from_secs(30),
            || {
                // (Exit 1 while the agent is unreachable: the JSON says why.)
                let out = env.banger(&["vm", "health", "alpha", "--json"]);
                let h: serde_json::Value =
                    serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).ok()?;
                let name = match hook {
                    "kill-session" => "agent-session",
                    "panic-watch" => "guest-watch",
                    _ => "vmm-monitor",
                };
                let restarted = h["children"]
                    .as_array()?
                    .iter()
                    .any(|x| x["name"] == name && x["restarts"].as_u64() >= Some(1));
                (restarted && h["agent_ok"] == true).then_some(())
            },
        );
        let out = env.banger_ok(&[
            "vm",
            "exec",
            "alpha",
            "--",
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ]);
        assert_eq!(serde_json::Value::String(out.trim().into()), boot, "{hook}");
    }
    let v = show(&env, "alpha");
    assert!(v["child_restarts"].as_u64().unwrap() >= 3, "{v}");
    // The monitor watches again: a VMM killed now is noticed and released.
    // (beta is left to check that the other VM never noticed.)
    let h: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["vm", "health", "beta", "--json"])).unwrap();
    assert_eq!(h["agent_ok"], true, "{h}");
    assert!(h["children"].as_array().unwrap().is_empty(), "{h}");
    let pid = show(&env, "alpha")["pid"]
        .as_u64()
        .expect("alpha's VMM pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "the killed VMM to be noticed",
        Duration::from_secs(30),
        || {
            let v = show(&env, "alpha");
            (v["state"] != "running" && v["pid"].is_null()).then_some(())
        },
    );
    env.banger_ok(&["vm", "delete", "alpha"]);
    env.banger_ok(&["vm", "delete", "beta"]);
}

/// The guest's agent frozen: `vm health` says so and the VM shows
/// `degraded`; thawed, both recover; killed, the guest's own supervisor
/// starts it again (all through SSH, which does not need the agent).
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "breaks actors through `banger debug`: run with --features test-hooks (scripts/test.sh does)"
)]
fn a_frozen_or_killed_agent_is_reported_and_recovers() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "alpha"]);
    let boot = show(&env, "alpha")["boot_id"].clone();

    // The guest's agent frozen: health says so, the VM shows degraded;
    // thawed, both recover. Then killed: its supervisor in the guest starts
    // it again and health recovers. (Through SSH, which does not need it.)
    let ps = env.banger_ok(&["vm", "ssh", "alpha", "--", "ps", "-eo", "pid=,args="]);
    let pid = ps
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[1].ends_with("banger-agent") && w[2] == "--serve")
                .then(|| w[0].to_string())
        })
        .unwrap_or_else(|| panic!("the agent in {ps}"));
    env.banger_ok(&["vm", "ssh", "alpha", "--", "kill", "-STOP", &pid]);
    let out = env.banger(&["vm", "health", "alpha"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent unreachable"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for("alpha to show degraded", Duration::from_secs(60), || {
        (show(&env, "alpha")["state"] == "degraded").then_some(())
    });
    env.banger_ok(&["vm", "ssh", "alpha", "--", "kill", "-CONT", &pid]);
    wait_for("alpha to be running again", Duration::from_secs(60), || {
        (show(&env, "alpha")["state"] == "running").then_some(())
    });
    env.banger_ok(&["vm", "ssh", "alpha", "--", "kill", "-KILL", &pid]);
    wait_for("the agent to answer again", Duration::from_secs(60), || {
        env.banger(&["vm", "health", "alpha"])
            .status
            .success()
            .then_some(())
    });
    let out = env.banger_ok(&[
        "vm",
        "exec",
        "alpha",
        "--",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert_eq!(serde_json::Value::String(out.trim().into()), boot);

    env.banger_ok(&["vm", "delete", "alpha"]);
}
