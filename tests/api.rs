//! The HTTP API (`api.sock`), driven by the repository's Python client
//! (`clients/python`) against a real daemon and real guests in the test's
//! namespace; the owner check tried as another uid.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::vms::vm_env;

/// Runs a check script (`c`) to its end within `limit`, asserting it
/// succeeded and printed `ok <check>` for each of `checks`; its stdout.
fn checks(mut c: Command, what: &str, limit: Duration, checks: &[&str]) -> String {
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, what, limit);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in checks {
        assert!(
            said.lines().any(|l| l == format!("ok {check}")),
            "{what}, {check}: {said}"
        );
    }
    said
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn the_python_client_runs_execs_moves_files_and_exports_a_patch() {
    let _heavy = heavy();
    let env = vm_env();
    let repo = env.root().join("repo");
    git_repo(&repo, &[("README", "hello\n")]);
    // Any command starts the daemon (and with it the API socket).
    env.banger_ok(&["vm", "list"]);
    let sock = env.daemon_socket().with_file_name("api.sock");
    assert!(sock.exists(), "{}", sock.display());
    let mut c = env.netns.command("python3");
    c.arg(fixture("tests/fixtures/api_client_check.py"))
        .arg(&sock)
        .arg(&repo)
        .env("PYTHONPATH", fixture("clients/python"));
    checks(
        c,
        "the API client checks",
        Duration::from_secs(1200),
        &[
            "errors carry the CLI's code",
            "run with stdin and exit code",
            "20 MB output whole",
            "file round trip",
            "patch export",
            "four concurrent runs",
            "delete",
        ],
    );
}

#[test]
fn another_uid_is_refused_by_the_api() {
    const OTHER_UID: u32 = 4242;
    let env = TestEnv::new();
    env.banger_ok(&["daemon", "status"]);
    let sock = env.daemon_socket().with_file_name("api.sock");
    // Let the other uid reach the socket: only the daemon's own check is
    // left to refuse it.
    let mut d = sock.clone();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    while d.pop() {
        if d == std::path::Path::new("/") {
            break;
        }
        let m = std::fs::metadata(&d).unwrap().permissions().mode();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(m | 0o711)).unwrap();
    }
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ntry:\n  s.sendall(b'GET /v1/vms HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\nexcept BrokenPipeError:\n  pass\nd=b''\nwhile True:\n  b=s.recv(4096)\n  if not b: break\n  d+=b\nprint(d.decode())",
        sock.display().to_string()
    );
    use std::os::unix::process::CommandExt;
    let out = Command::new("python3")
        .args(["-c", &code])
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("HTTP/1.1 403"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("unauthorized"), "{said}");
    assert!(!said.contains("\"name\""), "no VM data: {said}");
}

#[test]
fn an_mcp_client_lists_the_tools_and_works_a_repository_through_them() {
    let _heavy = heavy();
    let Some(python) = std::env::var_os("BANGER_MCP_PYTHON") else {
        panic!("BANGER_MCP_PYTHON (a python with the MCP SDK) is set by scripts/test.sh");
    };
    let env = vm_env();
    let repo = env.root().join("repo");
    git_repo(&repo, &[("README", "hello\n")]);
    let mut c = env.netns.command(python);
    c.arg(fixture("tests/fixtures/mcp_client_check.py"))
        .arg(bin("banger"))
        .arg(&repo)
        .envs(env.envs());
    checks(
        c,
        "the MCP client",
        Duration::from_secs(900),
        &["tools listed", "run in a fresh vm", "step by step"],
    );
}

/// `banger dashboard --json`: the loopback URL and the bearer token.
fn dashboard(env: &TestEnv) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(&env.banger_ok(&["dashboard", "--json"])).unwrap();
    (
        v["url"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_loopback_port_refuses_wrong_tokens_foreign_pages_and_big_bodies() {
    const OTHER_UID: u32 = 4243;
    let env = TestEnv::new();
    let (url, token) = dashboard(&env);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with(&format!("/login?token={token}")), "{url}");
    // Asked again, the same port: it opens once.
    assert_eq!(dashboard(&env).0, url);
    let script = fixture("tests/fixtures/dashboard_guard_check.py");
    let mut c = env.netns.command("/usr/bin/python3");
    c.arg(&script).arg(&url).arg(&token);
    checks(
        c,
        "the dashboard guard checks",
        Duration::from_secs(300),
        &[
            "no token is refused",
            "a wrong cookie is refused",
            "a wrong bearer token is refused",
            "a wrong sign-in link is refused",
            "a foreign Host is refused",
            "a foreign Origin is refused",
            "a terminal from another origin is refused",
            "a cookie-only change without X-Banger is refused",
            "a cookie change with X-Banger passes the guard",
            "the bearer token lists VMs",
            "the cookie opens the dashboard",
            "a body over 64 MiB is refused",
        ],
    );
    // Another uid on the same port, without the owner's token (the daemon
    // hands it out only on its owner's socket), gets nothing.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", env.netns.name))
        .arg(format!("--setuid={OTHER_UID}"))
        .arg(format!("--setgid={OTHER_UID}"))
        .arg("--")
        .arg("/usr/bin/python3")
        // As text: the checkout need not be readable by that uid.
        .arg("-c")
        .arg(std::fs::read_to_string(&script).unwrap())
        .arg(&url)
        .arg("not-the-token")
        .arg("other-uid");
    checks(
        c,
        "another uid's requests",
        Duration::from_secs(120),
        &["no token is refused"],
    );
    let log = env.daemon_log();
    assert!(!log.contains(&token), "the token is not logged");
}

#[test]
fn the_dashboard_shows_a_vm_a_create_and_a_delete_in_chromium() {
    let _heavy = heavy();
    let env = vm_env();
    env.banger_ok(&["vm", "create", "--name", "shown"]);
    let (url, _) = dashboard(&env);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut c = env.netns.command("/usr/bin/python3");
    c.arg(fixture("tests/fixtures/dashboard_browser_check.py"))
        .arg(&url)
        .arg(&shots)
        .arg("shown")
        .arg("made-in-browser")
        .arg(bin("banger"))
        .envs(env.envs());
    checks(
        c,
        "the browser",
        Duration::from_secs(1200),
        &[
            "lists a running vm",
            "serial log",
            "terminal",
            "a create progresses to running",
            "a delete removes it",
            "activity shows a create from the cli",
        ],
    );
    for png in [
        "01-running.png",
        "01b-terminal.png",
        "02-creating.png",
        "03-created.png",
        "04-deleted.png",
        "05-activity.png",
    ] {
        let b = std::fs::read(shots.join(png)).unwrap();
        assert!(b.starts_with(b"\x89PNG"), "{png}");
    }
    // The VM the page deleted is gone from the daemon, too.
    let list = env.banger_ok(&["vm", "list"]);
    assert!(!list.contains("made-in-browser"), "{list}");
    env.banger_ok(&["vm", "delete", "shown"]);
}

/// The same pull through the HTTP API (what the dashboard's pull form
/// sends): its stages stream as NDJSON, then the image. `tests/oci.rs`
/// calls it with its registry serving `banger/tiny:v1`.
pub fn api_pull_streams_its_stages(env: &TestEnv) {
    let sock = env.daemon_socket().with_file_name("api.sock");
    let out = Command::new("curl")
        .args(["-sS", "--no-buffer", "--max-time", "600", "--unix-socket"])
        .arg(&sock)
        .args([
            "-H",
            "Accept: application/x-ndjson",
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "-d",
            r#"{"reference": "127.0.0.1:5000/banger/tiny:v1", "name": "tiny-api"}"#,
        ])
        .arg("http://banger/v1/images")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = said
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "stage" && l["done"] == true),
        "{said}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["result"]["name"], "tiny-api", "{said}");
    let list = env.banger_ok(&["image", "list"]);
    assert!(list.contains("tiny-api"), "{list}");
    env.banger_ok(&["image", "delete", "tiny-api"]);
}
