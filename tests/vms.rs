//! VM lifecycle end to end on real QEMU (TCG here), inside the test's
//! network namespace.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// A namespaced tree with the kernel and default image in place (from the
/// shared cache: no network needed inside the namespace).
pub fn vm_env() -> TestEnv {
    artifacts();
    let env = TestEnv::new();
    // Small guests: two may run at once on two cores. Cold boots: a test
    // counts what runs, and a warm-start snapshot made in the background
    // would be one more VM (the warm path has its own test in
    // snapshots.rs). Written before the daemon first starts: it reads its
    // config once.
    let cfg = env.root().join("config/banger");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        "warm_start = false\n[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"2G\"\n",
    )
    .unwrap();
    env.banger_ok(&["kernel", "pull", "debian-cloud"]);
    env.banger_ok(&["image", "build", "debian-bookworm"]);
    env
}

pub fn show(env: &TestEnv, name: &str) -> serde_json::Value {
    serde_json::from_str(&env.banger_ok(&["vm", "show", name, "--json"])).unwrap()
}

pub fn taps(env: &TestEnv) -> Vec<String> {
    env.netns
        .links_json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("bgt"))
        .collect()
}

pub fn vmm_pids(env: &TestEnv) -> Vec<u32> {
    let root = env.root().display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmd = String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
            .into_owned();
            banger::host::process::pid_alive(*pid)
                && cmd.contains(&root)
                && (cmd.contains("qemu-system") || cmd.contains("firecracker"))
        })
        .collect()
}

fn ssh(env: &TestEnv, name: &str, cmd: &[&str]) -> String {
    let mut args = vec!["vm", "ssh", name, "--"];
    args.extend_from_slice(cmd);
    env.banger_ok(&args)
}

pub fn nat_rules(env: &TestEnv) -> String {
    let ipt = banger::host::nat::iptables().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &env.netns.name, ipt, "-S"])
        .output()
        .unwrap();
    let nat = Command::new("ip")
        .args(["netns", "exec", &env.netns.name, ipt, "-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&nat.stdout)
}

/// bangerd killed with SIGKILL while a VM runs and a stray tap exists: the
/// next daemon re-attaches to the VM (same boot) and deletes the tap; a
/// later `kill --signal KILL` still releases the NAT rules. (The smoke
/// suite's `lifecycle`, `vm-set`, `restart-boot-id`, `kill-signal` and
/// `helper-restart` scenarios cover the rest of the lifecycle.)
#[test]
fn a_killed_daemon_reattaches_its_vm_and_deletes_orphan_taps() {
    let _heavy = heavy();
    let env = vm_env();
    let out = env.banger(&["vm", "create", "--name", "life", "--vcpu", "2", "--nat"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = show(&env, "life");
    assert_eq!(v["state"], "running");
    assert!(nat_rules(&env).contains(&format!("banger:{}", v["id"].as_str().unwrap())));
    ssh(
        &env,
        "life",
        &["sh", "-c", "echo persisted > /root/marker && sync"],
    );
    let boot1 = v["boot_id"].as_str().unwrap().to_string();

    // An orphan: a banger tap no VM owns (as a crash could leave behind).
    run_ok(Command::new("ip").args([
        "-n",
        &env.netns.name,
        "tuntap",
        "add",
        "dev",
        "bgtstray01",
        "mode",
        "tap",
    ]));
    // kill -9 of bangerd: the VM keeps running and answers.
    let daemon = env.pid_of("bangerd").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("bangerd to die", Duration::from_secs(10), || {
        (!banger::host::process::pid_alive(daemon)).then_some(())
    });
    assert_eq!(show(&env, "life")["state"], "running");
    assert_eq!(show(&env, "life")["boot_id"].as_str(), Some(boot1.as_str()));
    assert_eq!(ssh(&env, "life", &["cat", "/root/marker"]), "persisted\n");
    assert!(
        env.daemon_log().contains("re-attached to a running VM"),
        "{}",
        env.daemon_log()
    );
    // The restarted daemon removed the orphan and kept the VM's own tap.
    assert!(
        !taps(&env).contains(&"bgtstray01".to_string()),
        "{:?}",
        taps(&env)
    );
    assert!(env.daemon_log().contains("deleting an orphan tap"));
    assert!(!taps(&env).is_empty(), "the VM's tap stays");
    // kill --signal KILL after all that: stopped, its VMM and NAT rules gone.
    env.banger_ok(&["vm", "kill", "life", "--signal", "KILL"]);
    let v = show(&env, "life");
    assert_eq!(v["state"], "stopped");
    assert!(v["pid"].is_null());
    assert!(vmm_pids(&env).is_empty(), "{:?}", vmm_pids(&env));
    assert!(!nat_rules(&env).contains("banger:"));
    env.banger_ok(&["vm", "delete", "life"]);
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
}

#[test]
fn bad_specs_are_refused_before_anything_is_created() {
    let env = vm_env();
    let cases: &[(&[&str], &str)] = &[
        (&["vm", "create", "--vcpu", "0"], "--vcpu 0 is out of range"),
        (&["vm", "create", "--memory", "1"], "at least 256 MiB"),
        (
            &["vm", "create", "--image", "nope"],
            "no image named \"nope\"",
        ),
        (&["vm", "create", "--name", "Bad_Name"], "invalid name"),
        (&["vm", "run", "-d", "--rm"], "contradict"),
        (
            &["vm", "run", "-d", "--", "true"],
            "-d does not take a command",
        ),
        (&["vm", "create", "--vmm", "firecracker"], "firecracker"),
    ];
    for (args, want) in cases {
        let out = env.banger(args);
        // `vm run` says 125 when banger fails before the command, like
        // `docker run`; other commands 1.
        let code = if args[1] == "run" { 125 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
    assert!(taps(&env).is_empty(), "{:?}", taps(&env));
    assert!(vmm_pids(&env).is_empty());
    assert!(
        std::fs::read_dir(env.state_dir().join("vms"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}
