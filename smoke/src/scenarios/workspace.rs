//! Workspaces: a host repository in the guest, `vm exec`, export back.
//! Scenarios that commit on the host do it in their own clone of the
//! fixture; the fixture itself is only read.

use std::path::{Path, PathBuf};

use crate::ctx::{Ctx, Res, BOOT_TIMEOUT, GUEST_TIMEOUT};
use crate::runner::{git_in, TRACKED};
use crate::scenarios::vm::run_rm;

const PROBE: &str = "cat smoke-file.txt; pwd; test -e untracked.txt && echo UNTRACKED; test -e .env && echo ENV; true";

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A clone of the fixture in the scenario's directory (for host commits).
fn own_clone(c: &mut Ctx, name: &str) -> Result<PathBuf, String> {
    let dst = c.dir.join(name);
    let (src, dir) = (c.repo(), c.dir.clone());
    git_in(c, &dir, &["clone", "-q", &p(&src), &p(&dst)])?;
    Ok(dst)
}

fn gone(c: &mut Ctx, name: &str) -> Res {
    let names = c.vm_names()?;
    c.check(
        !names.iter().any(|n| n == name),
        format!("VM {name} is gone: {names:?}"),
    )?;
    Ok(())
}

/// The files of the guest's /root/repo (without .git), sorted.
fn guest_files(c: &mut Ctx, vm: &str) -> Result<Vec<String>, String> {
    let out = c.sh_ok(
        vm,
        "cd /root/repo && find . -path ./.git -prune -o \\( -type f -o -type l \\) -print | sed 's|^./||' | sort",
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

fn dry_run_files(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .split_once("):\n")
        .map(|(_, rest)| rest.lines().map(str::to_string).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn prepare(c: &mut Ctx, vm: &str, path: &Path, extra: &[&str]) -> Result<crate::ctx::Out, String> {
    let ps = p(path);
    let mut a = vec!["vm", "workspace", "prepare", vm, ps.as_str()];
    a.extend_from_slice(extra);
    c.banger_within(&a, GUEST_TIMEOUT)
}

pub fn workspace_run(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let r = p(&c.repo());
    let o = run_rm(c, &n, &[&r], &["cat", "smoke-file.txt"])?;
    c.check(o.ok(), format!("exits 0: {}", o.err_line()))?;
    c.check(
        o.out() == TRACKED,
        format!("the tracked file is there: {:?}", o.out()),
    )?;
    let err = o.err();
    c.check(
        err.contains("1 untracked file") && err.contains("--include-untracked"),
        "the untracked file is named, with the flag that ships it",
    )?;
    let o = run_rm(c, &n, &[&r], &["sh", "-c", PROBE])?;
    c.check(
        o.out() == format!("{TRACKED}/root/repo\n"),
        format!("runs in /root/repo; no untracked, no .env: {:?}", o.out()),
    )?;
    gone(c, &n)
}

pub fn dry_run(c: &mut Ctx) -> Res {
    let sub = p(&c.repo().join("src"));
    // From a subdirectory: the whole repo, no VM needed.
    let text = c.banger_ok(&["vm", "run", &sub, "--dry-run"])?;
    c.check(
        text.starts_with("mode: overlay\n"),
        format!("the mode first: {text:?}"),
    )?;
    let listed = dry_run_files(&text);
    c.check(
        listed == [".gitignore", "smoke-file.txt", "src/lib.txt"],
        format!("tracked files only: {listed:?}"),
    )?;
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    // A directory outside any repository is refused, saying why.
    let plain = c.dir.join("plain");
    std::fs::create_dir_all(&plain).map_err(|e| format!("creating {}: {e}", plain.display()))?;
    let o = prepare(c, &n, &plain, &[])?;
    c.check(
        !o.ok() && o.err().contains("is not inside a git repository"),
        format!("prepare of a plain directory is refused: {}", o.err_line()),
    )?;
    let src = c.repo().join("src");
    let o = prepare(c, &n, &src, &["--dry-run"])?;
    c.check(
        o.ok() && dry_run_files(&o.out()) == listed,
        format!("prepare --dry-run lists the same: {}", o.err_line()),
    )?;
    let o = prepare(c, &n, &src, &[])?;
    c.check(
        o.ok() && o.out().starts_with("prepared "),
        format!("prepared: {} {}", o.out(), o.err_line()),
    )?;
    let shipped = guest_files(c, &n)?;
    c.check(
        shipped == listed,
        format!("the dry run listed exactly what shipped: {shipped:?}"),
    )?;
    let table = c.banger_ok(&["vm", "list"])?;
    c.check(
        table.lines().next().unwrap_or("").contains("WORKSPACE") && table.contains("myrepo"),
        format!("vm list shows the workspace: {table}"),
    )?;
    Ok(())
}

pub fn include_untracked(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    let r = p(&c.repo());
    let o = run_rm(c, &n, &["--include-untracked", &r], &["sh", "-c", PROBE])?;
    c.check(o.ok(), format!("exits 0: {}", o.err_line()))?;
    c.check(
        o.out() == format!("{TRACKED}/root/repo\nUNTRACKED\n"),
        format!("the untracked file is there, .env is not: {:?}", o.out()),
    )?;
    c.check(
        !o.err().contains("--include-untracked"),
        "no untracked notice with the flag",
    )?;
    gone(c, &n)
}

/// A repository with a mise config: its `[env]` and a tool that lives in
/// the repository (`node` at `path:/root/repo/tools`: no network needed).
fn mise_repo(c: &mut Ctx) -> Result<PathBuf, String> {
    let r = own_clone(c, "repo")?;
    std::fs::write(
        r.join(".mise.toml"),
        "[env]\nBANGER_MISE = \"yes\"\n[tools]\nnode = \"path:/root/repo/tools\"\n",
    )
    .map_err(|e| e.to_string())?;
    let bin = r.join("tools/bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::write(bin.join("node"), "#!/bin/sh\necho node-from-the-repo\n")
        .map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("node"), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    git_in(c, &r, &["add", "."])?;
    git_in(c, &r, &["commit", "-q", "-m", "mise"])?;
    Ok(r)
}

/// In the default image (no mise): a repo's mise config is no reason to
/// refuse; the run says it is not applied. `--no-bootstrap` is quiet.
pub fn mise_precondition(c: &mut Ctx) -> Res {
    let r = mise_repo(c)?;
    let rs = p(&r);
    let n = c.vm_name("vm");
    let o = run_rm(c, &n, &[&rs], &["sh", "-c", "echo ${BANGER_MISE:-plain}"])?;
    c.check(
        o.ok(),
        format!("no refusal, no --nat needed: {}", o.err_line()),
    )?;
    c.check(
        o.out() == "plain\n" && o.err().contains("has no mise"),
        format!("runs plainly and says why: {:?} {}", o.out(), o.err_line()),
    )?;
    gone(c, &n)?;
    let text = c.banger_ok(&["vm", "run", &rs, "--dry-run"])?;
    c.check(
        text.starts_with("mode: overlay") && text.contains(".mise.toml"),
        "the dry run needs no VM and lists .mise.toml",
    )?;
    let o = run_rm(
        c,
        &n,
        &["--no-bootstrap", &rs],
        &["head", "-1", ".mise.toml"],
    )?;
    c.check(o.ok(), format!("--no-bootstrap runs: {}", o.err_line()))?;
    c.check(
        o.out() == "[env]\n" && !o.err().contains("has no mise"),
        format!("in the repo, no mise note: {:?} {}", o.out(), o.err_line()),
    )?;
    gone(c, &n)
}

/// In the sandbox image: `vm run` bootstraps the repo with mise offline
/// (no --nat), and `vm exec` in a prepared workspace runs through
/// `mise exec --` (the repo's env and tool).
pub fn mise_bootstrap(c: &mut Ctx) -> Res {
    let r = mise_repo(c)?;
    let rs = p(&r);
    let sandbox = "debian-bookworm-sandbox";
    let n = c.vm_name("vm");
    let o = run_rm(
        c,
        &n,
        &["--image", sandbox, &rs],
        &["sh", "-c", "echo $BANGER_MISE; node"],
    )?;
    c.check(
        o.ok(),
        format!("vm run bootstraps offline: {}", o.err_line()),
    )?;
    c.check(
        o.out() == "yes\nnode-from-the-repo\n",
        format!("the repo's env and tool: {:?}", o.out()),
    )?;
    gone(c, &n)?;
    let m = c.vm_name("ws");
    c.create(&m, &["--image", sandbox])?;
    c.banger_ok_within(&["vm", "workspace", "prepare", &m, &rs], BOOT_TIMEOUT)?;
    let o = c.exec(&m, &["node"])?;
    c.check(
        o.ok() && o.out() == "node-from-the-repo\n",
        format!(
            "vm exec goes through mise exec: {:?} {}",
            o.out(),
            o.err_line()
        ),
    )?;
    c.banger_ok_within(&["vm", "delete", &m], BOOT_TIMEOUT)?;
    Ok(())
}

pub fn full_copy(c: &mut Ctx) -> Res {
    let r = own_clone(c, "repo")?;
    let sub = c.dir.join("subrepo");
    std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
    git_in(c, &sub, &["init", "-q", "-b", "main"])?;
    std::fs::write(sub.join("inner.txt"), "inner\n").map_err(|e| e.to_string())?;
    git_in(c, &sub, &["add", "."])?;
    git_in(c, &sub, &["commit", "-q", "-m", "sub"])?;
    git_in(
        c,
        &r,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            &p(&sub),
            "vendor/sub",
        ],
    )?;
    git_in(c, &r, &["commit", "-q", "-m", "add submodule"])?;
    // Secrets a repository's config may hold never reach the guest.
    for (k, v) in [
        (
            "remote.tokened.url",
            "https://user:s3cret-token@example.invalid/r.git",
        ),
        ("http.extraheader", "AUTHORIZATION: bearer s3cret-header"),
        ("credential.helper", "store --file /tmp/s3cret-store"),
    ] {
        git_in(c, &r, &["config", k, v])?;
    }
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let o = prepare(c, &n, &r, &[])?;
    let err = o.err();
    c.check(
        !o.ok() && err.contains("submodules") && err.contains("full_copy"),
        format!(
            "overlay refuses submodules and names full_copy: {}",
            o.err_line()
        ),
    )?;
    let o = prepare(c, &n, &r, &["--mode", "full_copy"])?;
    c.check(o.ok(), format!("full_copy prepares: {}", o.err_line()))?;
    let inner = c.exec(&n, &["cat", "vendor/sub/inner.txt"])?.out();
    c.check(
        inner == "inner\n",
        format!("the submodule's file: {inner:?}"),
    )?;
    let log = c.exec(&n, &["git", "log", "--format=%s"])?.out();
    c.check(
        log.contains("initial") && log.contains("add submodule"),
        format!("the full history: {log:?}"),
    )?;
    let config = c.exec(&n, &["cat", ".git/config"])?.out();
    c.check(
        !config.contains("s3cret") && config.contains("url = https://example.invalid/r.git"),
        format!("the guest's .git/config holds no token, header or credential helper: {config:?}"),
    )?;
    Ok(())
}

pub fn export_base_commit(c: &mut Ctx) -> Res {
    let repo = c.repo();
    let dir = c.dir.clone();
    let head = git_in(c, &repo, &["rev-parse", "HEAD"])?.trim().to_string();
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let o = prepare(c, &n, &repo, &[])?;
    c.check(o.ok(), format!("prepared: {}", o.err_line()))?;
    c.sh_ok(
        &n,
        "echo 'line three' >> src/lib.txt && echo new > added.txt",
    )?;
    let before = c.exec(&n, &["git", "status", "--porcelain"])?.out();
    let patch = dir.join("guest.patch");
    c.banger_ok(&["vm", "workspace", "export", &n, "-o", &p(&patch)])?;
    let after = c.exec(&n, &["git", "status", "--porcelain"])?.out();
    c.check(
        before == after,
        format!("export leaves the guest's index alone: {before:?} vs {after:?}"),
    )?;
    let clone = dir.join("clone");
    git_in(c, &dir, &["clone", "-q", &p(&repo), &p(&clone)])?;
    git_in(c, &clone, &["apply", "--check", &p(&patch)])?;
    git_in(c, &clone, &["apply", &p(&patch)])?;
    let lib = std::fs::read_to_string(clone.join("src/lib.txt")).unwrap_or_default();
    let added = std::fs::read_to_string(clone.join("added.txt")).unwrap_or_default();
    c.check(
        lib == "line one\nline two\nline three\n" && added == "new\n",
        format!("the patch applies to a clone: {lib:?} {added:?}"),
    )?;
    c.sh_ok(
        &n,
        "echo c > committed.txt && git add committed.txt && git commit -q -m 'in the guest'",
    )?;
    let plain = c.banger_ok(&["vm", "workspace", "export", &n])?;
    c.check(
        !plain.contains("committed.txt"),
        "a plain export leaves the guest's commit out",
    )?;
    let based = c.banger_ok(&["vm", "workspace", "export", &n, "--base-commit", &head])?;
    c.check(
        based.contains("committed.txt") && based.contains("added.txt"),
        "--base-commit includes the guest's commit and the edits",
    )?;
    Ok(())
}

pub fn workspace_persists(c: &mut Ctx) -> Res {
    let repo = c.repo();
    let head = git_in(c, &repo, &["rev-parse", "HEAD"])?.trim().to_string();
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let o = prepare(c, &n, &repo, &[])?;
    c.check(o.ok(), format!("prepared: {}", o.err_line()))?;
    c.sh_ok(&n, "echo guest-edit > guest.txt && sync")?;
    c.banger_ok_within(&["vm", "stop", &n], BOOT_TIMEOUT)?;
    c.banger_ok_within(&["vm", "start", &n], BOOT_TIMEOUT)?;
    let t = c.exec(&n, &["cat", "smoke-file.txt", "guest.txt"])?.out();
    c.check(
        t == format!("{TRACKED}guest-edit\n"),
        format!("the workspace and the guest's edit survive: {t:?}"),
    )?;
    let h = c.exec(&n, &["git", "rev-parse", "HEAD"])?.out();
    c.check(h.trim() == head, format!("same commit: {h:?} vs {head}"))?;
    let v = c.show(&n)?;
    c.check(
        v["workspace"]
            .as_str()
            .is_some_and(|w| w.contains("myrepo")),
        format!("still recorded: {}", v["workspace"]),
    )?;
    Ok(())
}

pub fn exec(c: &mut Ctx) -> Res {
    let r = own_clone(c, "repo")?;
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let o = prepare(c, &n, &r, &[])?;
    c.check(o.ok(), format!("prepared: {}", o.err_line()))?;
    let pwd = c.exec(&n, &["pwd"])?.out();
    c.check(
        pwd.trim() == "/root/repo",
        format!("runs in the workspace: {pwd:?}"),
    )?;
    let o = c.banger_within(
        &["vm", "exec", &n, "-w", "/tmp", "--", "pwd"],
        GUEST_TIMEOUT,
    )?;
    c.check(
        o.out().trim() == "/tmp",
        format!("-w sets the directory: {:?}", o.out()),
    )?;
    for code in [0, 1, 42] {
        let o = c.exec(&n, &["sh", "-c", &format!("exit {code}")])?;
        c.check(
            o.code == Some(code),
            format!("exit {code} comes back, not {:?}", o.code),
        )?;
    }
    std::fs::write(r.join("later.txt"), "from a later host commit\n").map_err(|e| e.to_string())?;
    git_in(c, &r, &["add", "later.txt"])?;
    git_in(c, &r, &["commit", "-q", "-m", "later"])?;
    let o = c.exec(&n, &["true"])?;
    c.check(
        o.ok() && o.err().contains("--auto-prepare"),
        format!("a moved repo is warned about: {}", o.err_line()),
    )?;
    let o = c.banger_within(
        &["vm", "exec", &n, "--auto-prepare", "--", "cat", "later.txt"],
        GUEST_TIMEOUT,
    )?;
    c.check(
        o.ok() && o.out() == "from a later host commit\n",
        format!("--auto-prepare syncs first: {:?} {}", o.out(), o.err_line()),
    )?;
    let o = c.exec(&n, &["true"])?;
    c.check(!o.err().contains("moved"), "no warning once synced")?;
    c.banger_ok_within(&["vm", "stop", &n], BOOT_TIMEOUT)?;
    let o = c.exec(&n, &["true"])?;
    c.check(
        !o.ok() && o.err().contains("not running"),
        format!("a stopped VM refuses exec: {}", o.err_line()),
    )?;
    Ok(())
}

pub fn export_patch(c: &mut Ctx) -> Res {
    let repo = c.repo();
    let dir = c.dir.clone();
    let patch = dir.join("out.patch");
    let n = c.vm_name("vm");
    let rs = p(&repo);
    let ps = p(&patch);
    let o = run_rm(
        c,
        &n,
        &[&rs, "--export-patch", &ps],
        &[
            "sh",
            "-c",
            "echo changed >> smoke-file.txt; echo fresh > added.txt; exit 3",
        ],
    )?;
    c.check(
        o.code == Some(3),
        format!(
            "the command's exit code, 3, not {:?}: {}",
            o.code,
            o.err_line()
        ),
    )?;
    let text = std::fs::read_to_string(&patch).unwrap_or_default();
    c.check(
        text.contains("+changed") && text.contains("added.txt"),
        format!("the patch has the edits ({} bytes)", text.len()),
    )?;
    let clone = dir.join("clone");
    git_in(c, &dir, &["clone", "-q", &rs, &p(&clone)])?;
    git_in(c, &clone, &["apply", &ps])?;
    let added = std::fs::read_to_string(clone.join("added.txt")).unwrap_or_default();
    c.check(
        added == "fresh\n",
        format!("it applies to a clone: {added:?}"),
    )?;
    gone(c, &n)?;
    // Without a repository path it is refused before anything is made.
    let o = run_rm(c, &n, &["--export-patch", &ps], &["true"])?;
    c.check(
        o.code == Some(125),
        format!("--export-patch without a repo: 125, not {:?}", o.code),
    )?;
    gone(c, &n)
}

pub fn exit_codes_12x(c: &mut Ctx) -> Res {
    let n = c.vm_name("vm");
    c.create(&n, &[])?;
    let o = c.exec(&n, &["no-such-command"])?;
    c.check(
        o.code == Some(127),
        format!("not found: 127, not {:?}", o.code),
    )?;
    c.check(
        o.err().contains("command not found"),
        format!("says so: {}", o.err_line()),
    )?;
    let o = c.exec(&n, &["/etc/hostname"])?;
    c.check(
        o.code == Some(126),
        format!("not executable: 126, not {:?}", o.code),
    )?;
    c.check(
        o.err().contains("cannot run"),
        format!("says so: {}", o.err_line()),
    )?;
    let o = c.banger_within(
        &["vm", "exec", &n, "-w", "/nowhere", "--", "true"],
        GUEST_TIMEOUT,
    )?;
    c.check(
        o.code == Some(126),
        format!("a bad directory: 126, not {:?}", o.code),
    )?;
    let o = c.exec(&n, &["sh", "-c", "kill -KILL $$"])?;
    c.check(
        o.code == Some(137),
        format!("killed by KILL: 137, not {:?}", o.code),
    )?;
    let r = c.vm_name("run");
    let o = run_rm(c, &r, &[], &["no-such-command"])?;
    c.check(
        o.code == Some(127),
        format!("vm run of a missing command: 127, not {:?}", o.code),
    )?;
    let o = run_rm(c, &r, &["--image", "nope"], &["true"])?;
    c.check(
        o.code == Some(125),
        format!("banger's own failure: 125, not {:?}", o.code),
    )?;
    gone(c, &r)
}
