//! The HTTP API (`api.sock`), driven by the repository's Python client
//! (`clients/python`) against a real daemon and real guests in the test's
//! namespace; the owner check tried as another uid.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use crate::vms::vm_env;

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
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api_client_check.py");
    let child = env
        .netns
        .command("python3")
        .arg(&script)
        .arg(&sock)
        .arg(&repo)
        .env("PYTHONPATH", &client)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, "the API client checks", Duration::from_secs(1200));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "errors carry the CLI's code",
        "run with stdin and exit code",
        "20 MB output whole",
        "file round trip",
        "patch export",
        "four concurrent runs",
        "delete",
    ] {
        assert!(
            said.lines().any(|l| l == format!("ok {check}")),
            "{check}: {said}"
        );
    }
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
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_client_check.py");
    let child = env
        .netns
        .command(python)
        .arg(&script)
        .arg(bin("banger"))
        .arg(&repo)
        .envs(env.envs())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within(child, "the MCP client", Duration::from_secs(900));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["tools listed", "run in a fresh vm", "step by step"] {
        assert!(
            said.lines().any(|l| l == format!("ok {check}")),
            "{check}: {said}"
        );
    }
}
