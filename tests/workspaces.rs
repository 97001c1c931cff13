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

const PROBE: &str = "cat smoke-file.txt; pwd; test -e untracked.txt && echo UNTRACKED; test -e .env && echo ENV; true";

#[test]
fn vm_run_with_a_repo_ships_tracked_files_and_only_opted_in_untracked_ones() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    let r = repo(env.root());
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        r.to_str().unwrap(),
        "--",
        "cat",
        "smoke-file.txt",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tracked content\n");
    assert!(
        err.contains("1 untracked file") && err.contains("--include-untracked"),
        "{err}"
    );
    // Untracked absent, .env absent; the command ran in /root/repo.
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        r.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        PROBE,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tracked content\n/root/repo\n"
    );
    // With the flag the untracked file is there, .env still not.
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        "--include-untracked",
        r.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        PROBE,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tracked content\n/root/repo\nUNTRACKED\n"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("--include-untracked"));
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
}

fn guest_files(env: &TestEnv, vm: &str) -> Vec<String> {
    let out = env.banger_ok(&[
        "vm", "ssh", vm, "--", "sh", "-c",
        "cd /root/repo && find . -path ./.git -prune -o \\( -type f -o -type l \\) -print | sed 's|^./||' | sort",
    ]);
    out.lines().map(str::to_string).collect()
}

fn dry_run_files(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .split_once("):\n")
        .unwrap()
        .1
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn prepare_exec_export_and_persistence() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    let r = repo(env.root());
    env.banger_ok(&["vm", "create", "--name", "ws"]);

    // Errors first: a non-repo path; a repo with a submodule in overlay mode.
    let plain = env.root().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let out = env.banger(&["vm", "workspace", "prepare", "ws", plain.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not inside a git repository"));

    // --dry-run from a subdirectory: the whole repo, no VM contacted.
    let dry = env.banger_ok(&[
        "vm",
        "workspace",
        "prepare",
        "ws",
        r.join("src").to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(dry.starts_with("mode: overlay\n"), "{dry}");
    let listed = dry_run_files(&dry);
    assert_eq!(listed, [".gitignore", "smoke-file.txt", "src/lib.txt"]);
    let out = env.banger_ok(&[
        "vm",
        "workspace",
        "prepare",
        "ws",
        r.join("src").to_str().unwrap(),
    ]);
    assert!(out.starts_with("prepared "), "{out}");
    assert_eq!(
        guest_files(&env, "ws"),
        listed,
        "dry run lists exactly what shipped"
    );
    let vms = env.banger_ok(&["vm", "list"]);
    assert!(
        vms.lines().next().unwrap().contains("WORKSPACE") && vms.contains("myrepo"),
        "{vms}"
    );
    let head = git(&r, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(
        env.banger_ok(&["vm", "exec", "ws", "--", "git", "rev-parse", "HEAD"])
            .trim(),
        head
    );

    // vm exec: runs in /root/repo, exit codes verbatim.
    assert_eq!(
        env.banger_ok(&["vm", "exec", "ws", "--", "pwd"]).trim(),
        "/root/repo"
    );
    for code in [0, 1, 42] {
        let out = env.banger(&[
            "vm",
            "exec",
            "ws",
            "--",
            "sh",
            "-c",
            &format!("exit {code}"),
        ]);
        assert_eq!(out.status.code(), Some(code), "exit {code}");
    }

    // Edit and add in the guest; export; apply in a clean clone of the host repo.
    env.banger_ok(&[
        "vm",
        "exec",
        "ws",
        "--",
        "sh",
        "-c",
        "echo 'line three' >> src/lib.txt && echo new > added.txt",
    ]);
    let status_before = env.banger_ok(&["vm", "exec", "ws", "--", "git", "status", "--porcelain"]);
    let patch = env.root().join("guest.patch");
    env.banger_ok(&[
        "vm",
        "workspace",
        "export",
        "ws",
        "-o",
        patch.to_str().unwrap(),
    ]);
    let status_after = env.banger_ok(&["vm", "exec", "ws", "--", "git", "status", "--porcelain"]);
    assert_eq!(
        status_before, status_after,
        "export must not touch the guest's index"
    );
    let clone = env.root().join("clone");
    git(
        env.root(),
        &["clone", "-q", r.to_str().unwrap(), clone.to_str().unwrap()],
    );
    git(&clone, &["apply", "--check", patch.to_str().unwrap()]);
    git(&clone, &["apply", patch.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(clone.join("src/lib.txt")).unwrap(),
        "line one\nline two\nline three\n"
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("added.txt")).unwrap(),
        "new\n"
    );

    // A commit made in the guest: only with --base-commit.
    env.banger_ok(&[
        "vm",
        "exec",
        "ws",
        "--",
        "sh",
        "-c",
        "echo c > committed.txt && git add committed.txt && git commit -q -m 'in the guest'",
    ]);
    let plain_patch = env.banger_ok(&["vm", "workspace", "export", "ws"]);
    assert!(!plain_patch.contains("committed.txt"), "{plain_patch}");
    let based = env.banger_ok(&["vm", "workspace", "export", "ws", "--base-commit", &head]);
    assert!(
        based.contains("committed.txt") && based.contains("added.txt"),
        "{based}"
    );

    // Stop and start: the workspace is still there and recorded.
    env.banger_ok(&["vm", "stop", "ws"]);
    env.banger_ok(&["vm", "start", "ws"]);
    assert_eq!(
        env.banger_ok(&["vm", "exec", "ws", "--", "cat", "smoke-file.txt"]),
        "tracked content\n"
    );

    // A host commit: exec warns; --auto-prepare brings it in.
    std::fs::write(r.join("later.txt"), "from a later host commit\n").unwrap();
    git(&r, &["add", "later.txt"]);
    git(&r, &["commit", "-q", "-m", "later"]);
    let out = env.banger(&["vm", "exec", "ws", "--", "true"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--auto-prepare"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.banger_ok(&[
        "vm",
        "exec",
        "ws",
        "--auto-prepare",
        "--",
        "cat",
        "later.txt",
    ]);
    assert_eq!(out, "from a later host commit\n");
    let out = env.banger(&["vm", "exec", "ws", "--", "true"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("moved"));

    // Submodules: refused in overlay mode, accepted with full_copy.
    let sub = env.root().join("subrepo");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, &["init", "-q", "-b", "main"]);
    std::fs::write(sub.join("inner.txt"), "inner\n").unwrap();
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "sub"]);
    git(
        &r,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            sub.to_str().unwrap(),
            "vendor/sub",
        ],
    );
    git(&r, &["commit", "-q", "-m", "add submodule"]);
    let out = env.banger(&["vm", "workspace", "prepare", "ws", r.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("submodules") && err.contains("full_copy"),
        "{err}"
    );
    env.banger_ok(&[
        "vm",
        "workspace",
        "prepare",
        "ws",
        r.to_str().unwrap(),
        "--mode",
        "full_copy",
    ]);
    assert_eq!(
        env.banger_ok(&["vm", "exec", "ws", "--", "cat", "vendor/sub/inner.txt"]),
        "inner\n"
    );
    let log = env.banger_ok(&["vm", "exec", "ws", "--", "git", "log", "--format=%s"]);
    assert!(
        log.contains("initial") && log.contains("add submodule"),
        "full history: {log}"
    );

    // A stopped VM refuses exec.
    env.banger_ok(&["vm", "stop", "ws"]);
    let out = env.banger(&["vm", "exec", "ws", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    env.banger_ok(&["vm", "delete", "ws"]);
}

#[test]
fn mise_repos_need_nat_or_no_bootstrap_and_nothing_is_created() {
    let env = crate::vms::vm_env();
    let r = repo(env.root());
    std::fs::write(r.join(".mise.toml"), "[tools]\n").unwrap();
    git(&r, &["add", ".mise.toml"]);
    git(&r, &["commit", "-q", "-m", "mise"]);
    let out = env.banger(&["vm", "run", "--rm", r.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--nat") && err.contains("--no-bootstrap"),
        "{err}"
    );
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");
    // Dry run needs no VM and shows the mode.
    let out = env.banger_ok(&["vm", "run", r.to_str().unwrap(), "--dry-run"]);
    assert!(
        out.contains(".mise.toml") && out.starts_with("mode: overlay"),
        "{out}"
    );
}

#[test]
fn export_patch_keeps_a_failed_or_interrupted_runs_edits_and_the_vm_goes() {
    let _heavy = heavy();
    let env = crate::vms::vm_env();
    let r = repo(env.root());
    let patch = env.root().join("out.patch");
    // A failing command's edits are in the patch, and it applies to a clone.
    let out = env.banger(&[
        "vm",
        "run",
        "--rm",
        r.to_str().unwrap(),
        "--export-patch",
        patch.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo changed >> smoke-file.txt; echo fresh > added.txt; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&patch).unwrap();
    assert!(
        text.contains("+changed") && text.contains("added.txt"),
        "{text}"
    );
    let clone = env.root().join("clone");
    run_ok(
        Command::new("git")
            .arg("clone")
            .arg("-q")
            .arg(&r)
            .arg(&clone),
    );
    git(&clone, &["apply", patch.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(clone.join("added.txt")).unwrap(),
        "fresh\n"
    );
    assert_eq!(env.banger_ok(&["vm", "list", "--json"]).trim(), "[]");

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

    // banger's own failure before the command: 125.
    let out = env.banger(&["vm", "run", "--rm", "--image", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
}
