//! VM lifecycle end to end on real QEMU (TCG here), inside the test's
//! network namespace.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// A namespaced tree with the kernel and default image in place (from the
/// shared cache: no network needed inside the namespace).
pub fn vm_env() -> TestEnv {
    vm_env_with("")
}

/// [`vm_env`] with more top-level config lines.
pub fn vm_env_with(extra: &str) -> TestEnv {
    vm_env_from(TestEnv::new(), extra)
}

/// [`vm_env_with`] for a tree made elsewhere.
pub fn vm_env_from(env: TestEnv, extra: &str) -> TestEnv {
    artifacts();
    // Small guests: two may run at once on two cores. Cold boots: a test
    // counts what runs, and a warm-start snapshot made in the background
    // would be one more VM (the warm path has its own test in
    // snapshots.rs). Written before the daemon first starts: it reads its
    // config once.
    let cfg = env.root().join("config/banger");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        format!("warm_start = false\n{extra}[vm_defaults]\nvcpu = 2\nmemory_mib = 1024\ndisk_size = \"2G\"\n"),
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

/// Sends `sig` to every VMM of the test's tree.
fn signal_vmms(env: &TestEnv, sig: nix::sys::signal::Signal) -> Vec<u32> {
    let pids = vmm_pids(env);
    for p in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), sig).unwrap();
    }
    pids
}

/// Starts `args` and waits (bounded) until its stdout has a line `started`.
pub fn start_until_started(env: &TestEnv, args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = env
        .banger_cmd(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if l == "started" {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(400)).is_err() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "{} never printed `started`:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child
}

/// A guest that stops answering while a command runs in it (its VMM frozen
/// with SIGSTOP: the guest is stuck as in a soft lockup) is not waited on
/// forever: `vm exec` gives up after `unresponsive_after_secs` with exit
/// 125 and a message naming the VM, `vm show` says `unresponsive`, the VM
/// answers again once thawed; `vm run --rm` gives up the same way and
/// leaves nothing behind.
#[test]
fn a_guest_that_stops_answering_mid_command_is_given_up() {
    use nix::sys::signal::Signal;
    let _heavy = heavy();
    let env = vm_env_with("unresponsive_after_secs = 10\n");
    let bound = Duration::from_secs(10);

    // vm exec into a long-lived VM.
    env.banger_ok(&["vm", "create", "--name", "frozen"]);
    let child = start_until_started(
        &env,
        &[
            "vm",
            "exec",
            "frozen",
            "--",
            "sh",
            "-c",
            "echo started; sleep 600",
        ],
    );
    let stopped = signal_vmms(&env, Signal::SIGSTOP);
    assert_eq!(stopped.len(), 1, "one VMM: {stopped:?}");
    let t = std::time::Instant::now();
    let out = output_within(child, "vm exec on a frozen guest", Duration::from_secs(120));
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("VM frozen is unresponsive"), "{err}");
    assert!(err.contains("serial console ended with"), "{err}");
    // Counted from the last answer, which came at most one ping (2 s)
    // before the freeze.
    assert!(
        took + Duration::from_secs(3) >= bound && took < bound * 4,
        "given up after {took:?} (bound {bound:?})"
    );
    wait_for(
        "vm show to say unresponsive",
        Duration::from_secs(60),
        || (show(&env, "frozen")["state"] == "unresponsive").then_some(()),
    );
    signal_vmms(&env, Signal::SIGCONT);
    wait_for(
        "the thawed VM to answer again",
        Duration::from_secs(120),
        || (show(&env, "frozen")["state"] == "running").then_some(()),
    );
    assert_eq!(
        env.banger_ok(&["vm", "exec", "frozen", "--", "echo", "back"]),
        "back\n"
    );
    env.banger_ok(&["vm", "delete", "frozen"]);

    // vm run --rm: given up, and the VM, its VMM and its directory go.
    let child = start_until_started(
        &env,
        &[
            "vm",
            "run",
            "--rm",
            "--name",
            "stall",
            "--",
            "sh",
            "-c",
            "echo started; sleep 600",
        ],
    );
    let id = show(&env, "stall")["id"].as_str().unwrap().to_string();
    assert_eq!(signal_vmms(&env, Signal::SIGSTOP).len(), 1);
    let out = output_within(
        child,
        "vm run --rm on a frozen guest",
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("VM stall is unresponsive"), "{err}");
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
    assert!(vmm_pids(&env).is_empty(), "{:?}", vmm_pids(&env));
    assert!(
        !env.state_dir().join("vms").join(&id).exists(),
        "the VM's directory is gone"
    );
}

/// A second daemon of the same uid in the same network namespace, with
/// another state directory (a second checkout, a test run): it used to
/// delete the first one's taps as orphans (`keepme` stayed "running" but
/// unreachable). Now it refuses to start, naming the first daemon's pid
/// and state; the first one's VM keeps its tap and network, and its next
/// `vm run` succeeds.
#[test]
fn a_second_daemon_in_the_same_namespace_refuses_and_breaks_nothing() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "keepme"]);
    let taps_before = taps(&env);
    let first = env.pid_of("bangerd").expect("the first daemon runs");

    let other = tempfile::tempdir().unwrap();
    let (a, b) = (
        env.root().display().to_string(),
        other.path().display().to_string(),
    );
    let out = env
        .netns
        .command(bin("banger"))
        .args(["vm", "list"])
        .envs(env.envs().into_iter().map(|(k, v)| {
            // The same cache, another everything else.
            if k == "XDG_CACHE_HOME" {
                (k, v)
            } else {
                (k, v.replace(&a, &b))
            }
        }))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon started: {err}");
    assert!(
        err.contains(&format!(
            "another bangerd (pid {first}, state {}",
            env.state_dir().display()
        )),
        "{err}"
    );
    assert!(err.contains("banger daemon stop"), "{err}");
    // It left nothing running.
    let second_daemons: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|p| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default(),
            )
            .contains(&b)
        })
        .collect();
    assert!(second_daemons.is_empty(), "{second_daemons:?}");

    // The first daemon's VM keeps its tap and network.
    assert_eq!(taps(&env), taps_before);
    assert_eq!(show(&env, "keepme")["state"], "running");
    assert_eq!(ssh(&env, "keepme", &["echo", "reachable"]), "reachable\n");
    // And its next run gets a working tap.
    let out = env.banger_within(
        &["vm", "run", "--rm", "--", "echo", "next"],
        std::process::Stdio::null(),
        Duration::from_secs(400),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "next\n");
    env.banger_ok(&["vm", "delete", "keepme"]);
}

#[test]
fn guests_do_not_reach_each_other_and_their_vmms_are_sandboxed() {
    let _heavy = heavy();
    // The tree under /root, the owner's (root's) home: the VMMs' mount
    // namespace covers it and binds banger's own directories back.
    let env = vm_env_from(TestEnv::under(Path::new("/root")), "");
    for n in ["sib1", "sib2"] {
        env.banger_ok(&["vm", "create", "--name", n, "--vcpu", "1"]);
    }
    let ip1 = show(&env, "sib1")["ip"].as_str().unwrap().to_string();
    // The sibling's sshd is up (reachable from the host)...
    assert_eq!(ssh(&env, "sib1", &["echo", "up"]), "up\n");
    // ...but not from the other guest: neither on the bridge nor routed
    // through the host.
    let probe = |extra: &str| {
        env.banger(&[
            "vm",
            "exec",
            "sib2",
            "--",
            "sh",
            "-c",
            &format!("{extra}nc -zw2 {ip1} 22"),
        ])
    };
    let out = probe("");
    assert_eq!(
        out.status.code(),
        Some(1),
        "nc from one guest to its sibling must fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = probe(&format!(
        "ip neigh flush all; ip route add {ip1}/32 via 172.16.0.1; "
    ));
    assert_eq!(
        out.status.code(),
        Some(1),
        "nor through the host's routing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `--link` lets two named VMs talk, both ways, and nobody else.
    let out = env.banger(&["vm", "create", "--name", "nolink", "--link", "absent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no VM named absent"),
        "{err}"
    );
    assert!(!env.banger_ok(&["vm", "list"]).contains("nolink"));
    env.banger_ok(&[
        "vm", "create", "--name", "sib3", "--vcpu", "1", "--link", "sib1",
    ]);
    let ip3 = show(&env, "sib3")["ip"].as_str().unwrap().to_string();
    // Both ends show the link.
    assert_eq!(show(&env, "sib3")["links"], serde_json::json!(["sib1"]));
    assert_eq!(show(&env, "sib1")["links"], serde_json::json!(["sib3"]));
    let text = env.banger_ok(&["vm", "show", "sib1"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("links") && l.ends_with("sib3")),
        "{text}"
    );
    let nc = |from: &str, to: &str| {
        env.banger(&["vm", "exec", from, "--", "nc", "-zw2", to, "22"])
            .status
            .code()
    };
    assert_eq!(nc("sib3", &ip1), Some(0), "sib3 reaches its link sib1");
    assert_eq!(nc("sib1", &ip3), Some(0), "and sib1 reaches sib3");
    assert_eq!(nc("sib2", &ip1), Some(1), "sib2 still reaches nobody");
    assert_eq!(nc("sib2", &ip3), Some(1), "sib2 still reaches nobody");
    env.banger_ok(&["vm", "delete", "sib3"]);
    assert!(
        !nat_rules(&env).contains("banger-link:"),
        "the link's rules go with either VM"
    );
    // Each VMM runs under QEMU's seccomp sandbox, in its VM's own cgroup.
    let pids = vmm_pids(&env);
    assert_eq!(pids.len(), 2, "{pids:?}");
    let layout = banger::host::cgroup::Layout::detect().expect("a memory controller here");
    let mut groups: Vec<String> = pids.iter().filter_map(|p| layout.group_of(*p)).collect();
    groups.sort();
    let mut want: Vec<String> = ["sib1", "sib2"]
        .iter()
        .map(|n| format!("uid-0/vm-{}", show(&env, n)["id"].as_str().unwrap()))
        .collect();
    want.sort();
    assert_eq!(
        groups,
        want,
        "each VMM in its VM's group: {:?} {}",
        pids.iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default())
            .collect::<Vec<_>>(),
        env.helper_log()
    );
    let v1 = show(&env, "sib1");
    let dir = &layout.vm_dirs(0, v1["id"].as_str().unwrap())[0];
    let limit = ["memory.max", "memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .expect("the VM group's memory limit");
    // The guest's memory, the translation cache (128 MiB by default) and
    // the VMM's own 512 MiB.
    let mib = v1["memory_mib"].as_u64().unwrap() + 128 + 512;
    assert_eq!(limit.trim(), (mib << 20).to_string(), "{}", dir.display());
    for pid in pids {
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
            .replace('\0', " ");
        assert!(
            cmd.contains(&format!("-sandbox {}", banger::vmm::qemu::SANDBOX)),
            "{cmd}"
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status.contains("Seccomp:\t2"),
            "no seccomp filter on {pid}: {status}"
        );
        // From inside its mount namespace the owner's home holds only the
        // path down to banger's directories (the host's /root has more).
        let seen: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/root"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let tree = env
            .root()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(seen, vec![tree.clone()], "the VMM sees the owner's home");
        assert!(
            std::fs::read_dir("/root").unwrap().count() > 1,
            "the host's /root has more"
        );
        let inside: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/root/{tree}"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !inside.contains(&"config".to_string()),
            "only banger's roots: {inside:?}"
        );
        assert!(inside.contains(&"state".to_string()), "{inside:?}");
        // Of banger's runtime directory only the VM's own: no daemon or
        // helper socket to drive banger through.
        let ls = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root{}", p.display()))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ls(&env.runtime_dir()), vec!["vms".to_string()]);
        // Of banger's state only the VM's own directory (and what it reads,
        // read-only): not the store, the SSH key, nor the sibling's disks.
        let vms = ls(&env.state_dir().join("vms"));
        assert_eq!(vms.len(), 1, "{vms:?}");
        assert!(
            ls(&env.state_dir().join("vms").join(&vms[0])).contains(&"root.qcow2".to_string()),
            "its own disk"
        );
        let state = ls(&env.state_dir());
        assert!(
            !state.iter().any(|n| n == "ssh" || n.ends_with(".redb")),
            "{state:?}"
        );
        assert!(env.state_dir().join("ssh").exists(), "the host's has it");
        assert_eq!(
            std::fs::read_dir(env.state_dir().join("vms"))
                .unwrap()
                .count(),
            2
        );
        let own = ls(&env.runtime_dir().join("vms"));
        assert_eq!(own.len(), 1, "{own:?}");
        assert!(ls(&env.runtime_dir().join("vms").join(&own[0])).contains(&"qmp.sock".to_string()));
        assert!(
            env.runtime_dir().join("bangerd.sock").exists(),
            "the host's has it"
        );
    }

    // A VM whose tap vanishes is shown unhealthy, with what to do.
    // A VM's tap is the one whose guard chain names its address.
    let tap_of = |ip: &str| {
        taps(&env).into_iter().find(|t| {
            let (chain, _) = env.netns.exec(&["ebtables", "-L", t]);
            chain.contains(&format!("--ip-src {ip} "))
        })
    };
    let ip2 = show(&env, "sib2")["ip"].as_str().unwrap().to_string();
    let tap1 = tap_of(&ip1).expect("sib1's tap");
    let vm_taps = [tap1.clone(), tap_of(&ip2).expect("sib2's tap")];
    run_ok(Command::new("ip").args(["-n", &env.netns.name, "link", "del", &tap1]));
    let v = show(&env, "sib1");
    assert_eq!(v["state"], "degraded", "{v}");
    let err = v["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(&tap1) && err.contains("vm restart"), "{v}");
    // The warm taps vanish too: the next start takes a dead one from the
    // pool, sees it is gone and replaces it.
    for t in taps(&env).into_iter().filter(|t| !vm_taps.contains(t)) {
        run_ok(Command::new("ip").args(["-n", &env.netns.name, "link", "del", &t]));
    }
    env.banger_ok(&["vm", "restart", "sib1"]);
    assert_eq!(show(&env, "sib1")["state"], "running");
    assert_eq!(ssh(&env, "sib1", &["echo", "back"]), "back\n");
    let dirs: Vec<_> = ["sib1", "sib2"]
        .iter()
        .flat_map(|n| layout.vm_dirs(0, show(&env, n)["id"].as_str().unwrap()))
        .collect();
    for n in ["sib1", "sib2"] {
        env.banger_ok(&["vm", "delete", n]);
    }
    // Their groups go with their VMMs.
    wait_for("the VMs' cgroups to go", Duration::from_secs(10), || {
        dirs.iter().all(|d| !d.exists()).then_some(())
    });
}
