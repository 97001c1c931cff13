//! The CLI and daemon end to end: version lines, auto-start, status, stop,
//! other uids refused.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

fn version_line_ok(line: &str, program: &str) {
    // `<program> <version> (commit <short>, built <RFC3339>)`
    let rest = line
        .strip_prefix(&format!("{program} "))
        .unwrap_or_else(|| panic!("{line:?}"));
    let (ver, tail) = rest.split_once(" (commit ").unwrap();
    assert!(!ver.is_empty() && !ver.contains(' '), "{line:?}");
    let (commit, built) = tail.split_once(", built ").unwrap();
    assert!(!commit.is_empty() && commit.len() <= 8, "{line:?}");
    let built = built.strip_suffix(')').unwrap();
    humantime::parse_rfc3339(built).unwrap_or_else(|e| panic!("{line:?}: {e}"));
}

#[test]
fn version_flags_print_one_line() {
    for program in ["banger", "bangerd", "bangerd-root"] {
        let out = run_ok(Command::new(bin(program)).arg("--version"));
        let s = String::from_utf8(out.stdout).unwrap();
        assert_eq!(s.lines().count(), 1, "{s:?}");
        version_line_ok(s.trim_end(), program);
    }
    let out = run_ok(Command::new(bin("banger")).arg("version"));
    let s = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert!(lines[0].starts_with("banger "), "{s}");
    assert!(lines[1].starts_with("commit "), "{s}");
    assert!(lines[2].starts_with("built "), "{s}");
}

#[test]
fn fresh_tree_autostarts_daemon_and_helper_then_stop_stops_both() {
    let env = TestEnv::new();
    assert!(!env.daemon_socket().exists());
    let out = env.banger_ok(&["vm", "list", "--json"]);
    assert_eq!(out.trim(), "[]");
    let status = env.banger_ok(&["daemon", "status"]);
    assert!(
        status.contains(&format!("protocol  {}", banger::protocol::PROTOCOL_VERSION)),
        "{status}"
    );
    assert!(
        status.contains(&env.daemon_socket().display().to_string()),
        "{status}"
    );
    assert!(status.contains("helper    connected (pid"), "{status}");
    let daemon = env.pid_of("bangerd").expect("bangerd runs");
    let helper = env.pid_of("bangerd-root").expect("bangerd-root runs");
    let socket_mode = std::fs::metadata(env.daemon_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(socket_mode & 0o777, 0o600);
    let helper_mode = std::fs::metadata(env.helper_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(helper_mode & 0o777, 0o600);

    let out = env.banger_ok(&["daemon", "stop"]);
    assert!(
        out.contains(&format!("stopped bangerd (pid {daemon})")),
        "{out}"
    );
    assert!(
        !banger::host::process::pid_alive(daemon),
        "daemon still alive"
    );
    wait_for("helper exit", std::time::Duration::from_secs(10), || {
        (!banger::host::process::pid_alive(helper)).then_some(())
    });
    assert!(!env.daemon_socket().exists());
    // Stopping again is a no-op.
    assert!(env.banger_ok(&["daemon", "stop"]).contains("not running"));
}

#[test]
fn json_and_table_agree_and_errors_have_the_documented_shape() {
    let env = TestEnv::new();
    let table = env.banger_ok(&["ps"]);
    assert!(table.starts_with("NAME"), "{table}");
    let out = env.banger(&["vm", "show", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    // banger: <label>: <message> (request <request_id>)
    assert!(
        err.starts_with("banger: not found: no VM named \"ghost\""),
        "{err}"
    );
    let op = err
        .trim_end()
        .rsplit("(request ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    assert_eq!(op.len(), 8, "{err}");
    assert!(
        env.daemon_log().contains(op),
        "request id is in the daemon log"
    );
    // Names are validated before any request.
    let out = env.banger(&["vm", "show", "Bad.Name"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("banger: invalid name:"), "{err}");
    assert!(!err.contains('\x1b'), "no colour without a TTY");
}

#[test]
fn config_show_reports_provenance() {
    let env = TestEnv::new();
    let cfg = env.root().join("config/banger");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("config.toml"), "[vm_defaults]\nvcpu = 3\n").unwrap();
    let out = env.banger_ok(&["config", "show"]);
    let vcpu = out
        .lines()
        .find(|l| l.starts_with("vm_defaults.vcpu"))
        .unwrap();
    assert!(vcpu.ends_with("config") && vcpu.contains(" 3 "), "{out}");
    let mem = out
        .lines()
        .find(|l| l.starts_with("vm_defaults.memory_mib"))
        .unwrap();
    assert!(mem.ends_with("auto") || mem.ends_with("builtin"), "{out}");
    std::fs::write(cfg.join("config.toml"), "[vm_defaults]\nvpcu = 3\n").unwrap();
    let out = env.banger(&["config", "show"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vpcu"));
}

#[test]
fn completion_scripts_generate() {
    for sh in ["bash", "zsh", "fish"] {
        let out = run_ok(Command::new(bin("banger")).args(["completion", sh]));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("banger"),
            "{sh}"
        );
    }
}

fn as_nobody(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("banger"))
        .args(args)
        .envs(env.envs())
        .env("HOME", "/nonexistent");
    c.output().unwrap()
}

#[test]
fn another_uid_is_refused_and_the_owner_keeps_being_served() {
    if !is_root() {
        panic!("this test needs root (setpriv to another uid)");
    }
    let env = TestEnv::new();
    env.start();
    // The socket directory is private: the kernel refuses the connection.
    let out = as_nobody(&env, &["vm", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("banger: unauthorized:"), "{err}");
    assert!(err.contains("uid 0"), "{err}");

    // With the filesystem wide open, the daemon's own SO_PEERCRED check refuses.
    let mut p = env.daemon_socket();
    while p != env.root() {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        p = p.parent().unwrap().to_path_buf();
    }
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_nobody(&env, &["vm", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("banger: unauthorized: uid 65534 may not use this socket"),
        "{err}"
    );
    // Daemon keeps serving its owner.
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
    assert!(env
        .daemon_log()
        .contains("refused a connection from another uid"));
}

#[test]
fn a_non_root_daemon_explains_how_to_grant_the_helper() {
    if !is_root() {
        panic!("this test needs root (setpriv to another uid)");
    }
    let dir = tempfile::Builder::new()
        .prefix("banger-nobody-")
        .tempdir()
        .unwrap();
    nix::unistd::chown(
        dir.path(),
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let r = dir.path().display().to_string();
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("banger"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", format!("{r}/home"))
            .env("XDG_CONFIG_HOME", format!("{r}/config"))
            .env("XDG_STATE_HOME", format!("{r}/state"))
            .env("XDG_CACHE_HOME", format!("{r}/cache"))
            .env("XDG_RUNTIME_DIR", format!("{r}/run"))
            .env("BANGER_SYSTEM", "0")
            .output()
            .unwrap()
    };
    let out = nobody(&["daemon", "start"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("bangerd-root is not connected"), "{err}");
    assert!(
        err.contains("sudo ") && err.contains("--owner-uid 65534"),
        "{err}"
    );
    let out = nobody(&["daemon", "status"]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("helper    not connected: bangerd-root is not running"),
        "{status}"
    );
    assert_eq!(
        String::from_utf8_lossy(&nobody(&["vm", "list", "--json"]).stdout).trim(),
        "[]"
    );
    let out = nobody(&["daemon", "stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_migrations_reads_the_store_and_changes_nothing() {
    let env = TestEnv::new();
    let check = |env: &TestEnv| {
        Command::new(bin("bangerd"))
            .arg("--check-migrations")
            .envs(env.envs())
            .output()
            .unwrap()
    };
    let out = check(&env);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("absent"));
    assert!(
        !env.state_dir().join("state.redb").exists(),
        "nothing created"
    );
    // The first release's store (schema v2): the snapshots table is
    // pending, and the file is byte for byte the same after.
    std::fs::create_dir_all(env.state_dir()).unwrap();
    let store = env.state_dir().join("state.redb");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2.redb");
    std::fs::copy(&fixture, &store).unwrap();
    let out = check(&env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("schema v2; a start would apply") && said.contains("v3: snapshots"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        std::fs::read(&fixture).unwrap()
    );
    // Migrated (as a start would), it is up to date.
    drop(banger::store::Store::open(&store).unwrap());
    let out = check(&env);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    std::fs::write(&store, b"not a database").unwrap();
    assert_eq!(check(&env).status.code(), Some(2));
}
