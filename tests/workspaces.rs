//! Workspaces end to end: a host repo in the guest, `vm exec`, export back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repo with a tracked file (and one in a subdirectory), an untracked
/// file and a gitignored `.env`.
fn repo(root: &Path) -> PathBuf {
    let r = root.join("myrepo");
    std::fs::create_dir_all(r.join("src")).unwrap();
    git(&r, &["init", "-q", "-b", "main"]);
    std::fs::write(r.join("smoke-file.txt"), "tracked content\n").unwrap();
    std::fs::write(r.join("src/lib.txt"), "line one\nline two\n").unwrap();
    std::fs::write(r.join(".gitignore"), ".env\n").unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "-q", "-m", "initial"]);
    std::fs::write(r.join("untracked.txt"), "not committed\n").unwrap();
    std::fs::write(r.join(".env"), "SECRET=1\n").unwrap();
    r
}

/// The interrupted case (the smoke suite's `export-patch` covers a failing
/// command and applying the patch).
#[test]
fn export_patch_keeps_an_interrupted_runs_edits_and_the_vm_goes() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    let r = repo(env.root());
    // Ctrl-C during the command: it is interrupted, the patch still written,
    // the VM still removed.
    let patch2 = env.root().join("interrupted.patch");
    let child = env
        .banger_cmd(&[
            "vm",
            "run",
            "--rm",
            "--name",
            "ctrlc",
            r.to_str().unwrap(),
            "--export-patch",
            patch2.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo edited >> smoke-file.txt; exec sleep 600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the command to run",
        std::time::Duration::from_secs(120),
        || {
            let ps = env.banger(&["vm", "exec", "ctrlc", "--", "pgrep", "-x", "sleep"]);
            (ps.status.success() && !ps.stdout.is_empty()).then_some(())
        },
    );
    interrupt_expecting_130(child);
    assert!(std::fs::read_to_string(&patch2)
        .unwrap()
        .contains("+edited"));
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
}

/// The CLI killed (SIGKILL) while the command runs: the run is the
/// daemon's operation, so the command is killed, the patch is still written
/// where it was asked, the VM deleted, and no tap, VMM or kept patch is
/// left.
#[test]
fn a_run_whose_client_is_killed_still_writes_its_patch_and_deletes_its_vm() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    let r = repo(env.root());
    let patch = env.root().join("killed.patch");
    let mut child = crate::vms::start_until_started(
        &env,
        &[
            "vm",
            "run",
            "--rm",
            "--name",
            "orphan",
            r.to_str().unwrap(),
            "--export-patch",
            patch.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo edited >> smoke-file.txt; echo started; exec sleep 600",
        ],
    );
    assert_eq!(crate::vms::vmm_pids(&env).len(), 1);
    // The pool's warm taps and the VM's.
    let during = crate::vms::taps(&env);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(
        "the run to delete its VM",
        std::time::Duration::from_secs(180),
        || (env.banger_ok(&["vm", "list", "--json"]).trim() == "[]").then_some(()),
    );
    let written = std::fs::read_to_string(&patch).unwrap_or_default();
    assert!(written.contains("+edited"), "the patch: {written:?}");
    assert!(crate::vms::vmm_pids(&env).is_empty());
    // The VM's tap went with it (the pool keeps its warm ones).
    let after = crate::vms::taps(&env);
    assert!(
        after.len() < during.len() && after.iter().all(|t| during.contains(t)),
        "taps during the run {during:?}, after {after:?}"
    );
    let kept = std::fs::read_dir(env.state_dir().join("patches"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(kept, 0, "the daemon's own copy is removed once written");
    assert!(env.daemon_log().contains("the client went away"));
}
