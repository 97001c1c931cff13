//! Snapshots on real QEMU guests (TCG here): a restore carries the source's
//! files and processes, every clone takes its own identity (addresses,
//! MAC, hostname, machine-id, SSH host key, RNG state), parallel restores
//! of one snapshot work, and a damaged or deleted snapshot is refused with
//! nothing left behind.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::vms::{show, vm_env, vm_env_from};

fn exec_ok(env: &TestEnv, vm: &str, script: &str) -> String {
    let out = env.banger_within(
        &["vm", "exec", vm, "--", "sh", "-c", script],
        Stdio::null(),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What must differ between clones, as the guest itself reports it.
#[derive(Debug)]
struct Identity {
    random: String,
    host_key: String,
    addr: String,
    mac: String,
    hostname: String,
    machine_id: String,
}

fn identity(env: &TestEnv, vm: &str) -> Identity {
    let out = exec_ok(
        env,
        vm,
        "k=/etc/ssh/ssh_host_ed25519_key.pub; \
         for i in $(seq 600); do [ -s $k ] && break; sleep 0.2; done; \
         head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
         cut -d' ' -f2 $k; \
         ip -4 -o addr show dev eth0 | awk '{print $4}'; \
         cat /sys/class/net/eth0/address; hostname; cat /etc/machine-id",
    );
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l.len(), 6, "{out}");
    Identity {
        random: l[0].into(),
        host_key: l[1].into(),
        addr: l[2].into(),
        mac: l[3].into(),
        hostname: l[4].into(),
        machine_id: l[5].into(),
    }
}

#[test]
fn restored_clones_keep_state_and_get_their_own_identity() {
    let _heavy = heavy();
    // Under the owner's home, which the VMMs' mount namespace covers.
    let env = vm_env_from(TestEnv::under(std::path::Path::new("/root")), "");
    env.banger_ok(&["vm", "create", "--name", "src"]);
    // A file and a process that must survive into every clone.
    exec_ok(
        &env,
        "src",
        "echo kept > /root/file && cp /bin/sleep /root/snapproc && \
         (setsid /root/snapproc 100000 </dev/null >/dev/null 2>&1 &) && sync",
    );
    let src_id = identity(&env, "src");

    // The disk fills up mid-snapshot: nothing is listed, nothing is left,
    // and the VM runs on. (A small tmpfs on the snapshots directory; the
    // daemon starts after it is mounted, so its namespace has it.)
    let snaps_dir = env.state_dir().join("snapshots");
    std::fs::create_dir_all(&snaps_dir).unwrap();
    env.banger_ok(&["daemon", "stop"]);
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(&snaps_dir),
    );
    let full = env.banger(&["vm", "snapshot", "src", "--name", "full"]);
    let err = String::from_utf8_lossy(&full.stderr).into_owned();
    env.banger_ok(&["daemon", "stop"]);
    let left = std::fs::read_dir(&snaps_dir).unwrap().count();
    run_ok(Command::new("umount").arg(&snaps_dir));
    assert!(!full.status.success());
    assert!(
        err.contains("No space left") || err.contains("saving the VM's state"),
        "{err}"
    );
    assert_eq!(left, 0, "a partial snapshot was left");
    assert_eq!(env.banger_ok(&["snapshot", "list", "--json"]).trim(), "[]");
    assert_eq!(exec_ok(&env, "src", "cat /root/file"), "kept\n");

    let out = env.banger_ok(&["vm", "snapshot", "src", "--name", "s1"]);
    assert!(out.contains("snapshot s1 of src"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["snapshot", "list", "--json"])).unwrap();
    let s1 = &list.as_array().unwrap()[0];
    assert_eq!(s1["name"], "s1");
    assert_eq!(s1["source_vm"], "src");
    assert!(s1["size_bytes"].as_u64().unwrap() > 10 << 20, "{s1}");
    // The source runs on.
    assert_eq!(exec_ok(&env, "src", "cat /root/file"), "kept\n");

    // The round trip: file and process are there in a restored VM.
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        "--from",
        "s1",
        "--",
        "sh",
        "-c",
        "cat /root/file; pgrep -x snapproc >/dev/null && echo alive",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\nalive\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("from snapshot s1"), "{stderr}");
    assert!(stderr.contains("  restore: "), "{stderr}");

    // Two clones: their own addresses, MAC, name, machine-id, host key
    // and random state, and each matches its record.
    env.banger_ok(&["vm", "create", "--from", "s1", "--name", "c1"]);
    env.banger_ok(&["vm", "create", "--from", "s1", "--name", "c2"]);
    let (a, b) = (identity(&env, "c1"), identity(&env, "c2"));
    for (name, id) in [("c1", &a), ("c2", &b)] {
        let rec = show(&env, name);
        assert_eq!(
            id.addr.split('/').next(),
            rec["ip"].as_str(),
            "{name}: {id:?}"
        );
        assert_eq!(id.hostname, name);
        assert_ne!(id.machine_id, src_id.machine_id, "{name}");
        assert_ne!(id.host_key, src_id.host_key, "{name}");
        assert_ne!(id.mac, src_id.mac, "{name}");
    }
    assert_ne!(a.random, b.random);
    assert_ne!(a.host_key, b.host_key);
    assert_ne!(a.addr, b.addr);
    assert_ne!(a.mac, b.mac);
    assert_ne!(a.machine_id, b.machine_id);
    // A clone's VMM reads its overlay's backing files from the snapshot's
    // directory, bound read-only into its mount namespace; of the VMs' own
    // directories it sees only its own.
    let pid = show(&env, "c1")["pid"].as_u64().unwrap();
    let s1_dir = s1["dir"].as_str().expect("the snapshot's directory");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let opts = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(s1_dir))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_else(|| panic!("{s1_dir} is not bound for the clone: {mounts}"));
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    let vms = std::fs::read_dir(format!("/proc/{pid}/root{}/vms", env.state_dir().display()))
        .unwrap()
        .count();
    assert_eq!(vms, 1);
    // Its network works as itself: SSH to the new address, checked
    // against the new host key the agent reported.
    let out = env.banger(&["vm", "ssh", "c1", "--", "cat", "/etc/hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "c1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A snapshot of a clone (its overlay is backed by s1's) restores too,
    // and keeps s1 while it exists.
    env.banger_ok(&["vm", "snapshot", "c1", "--name", "s3"]);
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        "--from",
        "s3",
        "--",
        "cat",
        "/etc/hostname",
        "/root/file",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("kept\n") && !stdout.starts_with("c1"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.banger_ok(&["vm", "delete", "c2"]);
    env.banger_ok(&["vm", "delete", "c1"]);
    let out = env.banger(&["snapshot", "delete", "s1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.banger_ok(&["snapshot", "delete", "s3"]);
    env.banger_ok(&["vm", "create", "--from", "s1", "--name", "c1"]);

    // Refused while clones exist; then gone.
    let out = env.banger(&["snapshot", "delete", "s1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("c1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.banger_ok(&["vm", "delete", "c1"]);

    // Eight parallel restores of one snapshot.
    let children: Vec<_> = (0..8)
        .map(|_| {
            env.banger_cmd(&["vm", "run", "--rm", "--from", "s1", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = output_within(c, "a parallel restore", Duration::from_secs(600));
        assert!(
            out.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A damaged snapshot is refused and leaves no VM.
    env.banger_ok(&["vm", "snapshot", "src", "--name", "s2", "--stop"]);
    assert_eq!(show(&env, "src")["state"], "stopped");
    let dir: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["snapshot", "show", "s2", "--json"])).unwrap();
    std::fs::remove_file(std::path::Path::new(dir["dir"].as_str().unwrap()).join("state.bin"))
        .unwrap();
    let out = env.banger(&["vm", "create", "--from", "s2", "--name", "broken"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is damaged") && err.contains("state.bin"),
        "{err}"
    );
    let vms = env.banger_ok(&["vm", "list", "--json"]);
    assert!(!vms.contains("broken"), "{vms}");

    env.banger_ok(&["snapshot", "delete", "s1"]);
    env.banger_ok(&["snapshot", "delete", "s2"]);
    let out = env.banger(&["vm", "run", "--rm", "--from", "s1", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot named \"s1\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.banger_ok(&["snapshot", "list", "--json"]).trim(), "[]");
    env.banger_ok(&["vm", "delete", "src"]);
    let left = std::fs::read_dir(env.state_dir().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "snapshot files left behind");
}

#[test]
fn a_warm_workspace_runs_its_setup_once_and_keeps_what_it_built() {
    let _heavy = heavy();
    let env = vm_env();
    let git = crate::workspaces::git;
    let r = env.root().join("warmrepo");
    std::fs::create_dir_all(&r).unwrap();
    git(&r, &["init", "-q", "-b", "main"]);
    std::fs::write(r.join(".gitignore"), "deps/\n").unwrap();
    std::fs::write(r.join("lock"), "v1\n").unwrap();
    std::fs::write(r.join("src.txt"), "first\n").unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "-q", "-m", "initial"]);
    // "Dependencies": a random marker in a gitignored directory.
    let setup = "mkdir -p deps && head -c8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > deps/marker";
    let run = |probe: &str| {
        let out = env.banger(&[
            "vm",
            "run",
            "--rm",
            "--warm",
            setup,
            "--warm-key",
            "lock",
            r.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            probe,
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), err)
    };
    let probe = "cat deps/marker; echo; cat src.txt";
    let (first, err) = run(probe);
    assert!(
        err.contains("saved the warm workspace as snapshot warmws-"),
        "{err}"
    );
    let marker = first.lines().next().unwrap().to_string();
    assert_eq!(marker.len(), 16, "{first}");

    // Same key: restored (the setup does not run again: same marker), the
    // repo as it is now.
    std::fs::write(r.join("src.txt"), "edited\n").unwrap();
    let (second, err) = run(probe);
    assert!(
        err.contains("  restore: ") && !err.contains("saved the warm"),
        "{err}"
    );
    assert_eq!(second, format!("{marker}\nedited\n"));

    // A key file changed: the setup runs again, for a new snapshot.
    std::fs::write(r.join("lock"), "v2\n").unwrap();
    let (third, err) = run(probe);
    assert!(err.contains("saved the warm workspace"), "{err}");
    let main_marker = third.lines().next().unwrap().to_string();
    assert_ne!(main_marker, marker);

    // Another branch with the same key files gets a snapshot of its own:
    // what one branch's set-up ran (its Makefile, its scripts) never
    // reaches another branch's runs.
    git(&r, &["commit", "-qam", "v2"]);
    git(&r, &["checkout", "-qb", "other"]);
    let (fourth, err) = run(probe);
    assert!(
        err.contains("saved the warm workspace") && !err.contains("  restore: "),
        "{err}"
    );
    assert_ne!(fourth.lines().next().unwrap(), main_marker);
    // Back on main: main's own snapshot again.
    git(&r, &["checkout", "-q", "main"]);
    let (fifth, err) = run(probe);
    assert!(
        err.contains("  restore: ") && !err.contains("saved the warm"),
        "{err}"
    );
    assert_eq!(fifth.lines().next().unwrap(), main_marker);

    // A failing setup saves nothing and says so.
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        "--warm",
        "exit 3",
        r.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--warm command failed (exit 3)"), "{err}");
    let snaps: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["snapshot", "list", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 3, "{snaps}");
    assert!(env.banger_ok(&["vm", "list", "--json"]).trim() == "[]");
    // Both were used today: kept; unused ones go with --days 0.
    assert_eq!(env.banger_ok(&["snapshot", "prune"]), "nothing to prune\n");
    let out = env.banger_ok(&["snapshot", "prune", "--days", "0"]);
    assert!(out.starts_with("deleted warmws-"), "{out}");
    assert_eq!(env.banger_ok(&["snapshot", "list", "--json"]).trim(), "[]");
}
