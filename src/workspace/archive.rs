//! The transfer stream of a prepare (one tar, written incrementally) and the
//! guest-side scripts that unpack it and export edits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::git::Git;
use super::{Mode, Plan, WorkspaceError};

/// Starts a transfer: an empty staging directory `$1.banger-new` (with an
/// empty `.git`) next to the workspace `$1`.
pub const GUEST_BEGIN: &str = r#"set -eu
new="$1.banger-new"
rm -rf "$new"
mkdir -p "$new/.git"
"#;

/// Extracts one stream into `$1.banger-new/$2` (`.` or `.git`).
pub const GUEST_UNTAR: &str = r#"set -eu
cd "$1.banger-new/$2"
exec tar -x --no-same-owner -f -
"#;

/// Finishes a transfer: makes git trust the shipped index's stat data
/// (whole-second mtime and size, which tar preserved), rebuilds the index
/// when none was shipped (`--from`), with `$2` = `keep` moves the old
/// tree's git-ignored files (build outputs, dependencies) into the new one
/// where it has nothing of that name, then replaces `$1` in one rename.
pub const GUEST_FINISH: &str = r#"set -eu
dst="$1"; new="$1.banger-new"
cd "$new"
git config core.checkStat minimal
git config core.trustctime false
if [ ! -f .git/index ]; then git reset -q; fi
if [ "${2:-}" = keep ] && [ -d "$dst/.git" ]; then
  cd "$dst"
  git ls-files -z --others --ignored --exclude-standard --directory |
    xargs -0 -r -n1 sh -c 'p="${1%/}"; t="$0/$p"; [ -e "$t" ] || { mkdir -p "$(dirname "$t")" && mv "$p" "$t"; }' "$new"
fi
cd /
# Swap in the new tree at once; the old one is removed in the background.
old="$dst.banger-old.$$"
if [ -e "$dst" ]; then mv "$dst" "$old"; fi
mv "$new" "$dst"
# (Detached from our output pipes, or the agent would wait for it.)
if [ -e "$old" ]; then (rm -rf "$old" </dev/null >/dev/null 2>&1 &) ; fi
"#;

/// Prints a binary patch of the workspace `$1` against `$2`, new files
/// included, without touching the real index (a temporary index inside the
/// git directory, on the same filesystem as the real one).
pub const GUEST_EXPORT: &str = r#"set -eu
cd "$1"
gd=$(git rev-parse --git-dir)
tmp="$gd/banger-export-index"
trap 'rm -f "$tmp"' EXIT
if [ -f "$gd/index" ]; then cp "$gd/index" "$tmp"; else rm -f "$tmp"; fi
GIT_INDEX_FILE="$tmp" git add -A
GIT_INDEX_FILE="$tmp" git diff --cached --binary --full-index "$2"
"#;

/// Runs `inner` with mise when the guest has it and the directory has a
/// mise config (the repo's tools and env), plainly otherwise. The repo
/// was shipped by its owner into their own VM: its config is trusted.
pub const GUEST_MISE_WRAP: &str = r#"if command -v mise >/dev/null 2>&1 && { [ -f .mise.toml ] || [ -f mise.toml ]; }; then mise trust -q . >/dev/null 2>&1; exec mise exec -- "$@"; else exec "$@"; fi"#;

/// Appends files relative to `base`, as they are on disk (symlinks as
/// symlinks, mtimes kept: the shipped index relies on them).
fn add_files<W: Write>(
    t: &mut tar::Builder<W>,
    base: &Path,
    files: &[String],
) -> std::io::Result<()> {
    for f in files {
        let src = base.join(f);
        match std::fs::symlink_metadata(&src) {
            Ok(md) if md.is_file() || md.file_type().is_symlink() => {
                t.append_path_with_name(&src, f)?
            }
            // Vanished since inspection, or not a file: skip.
            _ => {}
        }
    }
    Ok(())
}

/// A git config without secrets: no `[credential]` sections, no
/// `extraheader` keys (in any section: `http.extraheader`,
/// `http.<url>.extraheader`), and the user information taken out of every
/// URL value (`https://user:token@host/x` → `https://host/x`).
pub fn clean_git_config(text: &str) -> String {
    let mut out = String::new();
    let mut in_credential = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(header) = t.strip_prefix('[') {
            let section = header
                .split(|c: char| c == ']' || c == '"' || c.is_whitespace() || c == '.')
                .next()
                .unwrap_or("");
            in_credential = section.eq_ignore_ascii_case("credential");
            if !in_credential {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        if in_credential {
            continue;
        }
        let key = t
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if key == "extraheader" {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if v.contains("://") && v.contains('@') => {
                out.push_str(k);
                out.push('=');
                out.push_str(&strip_userinfo(v));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `scheme://user:pass@host/path` → `scheme://host/path` (in a config
/// value, which may hold one URL).
fn strip_userinfo(v: &str) -> String {
    let Some(i) = v.find("://") else {
        return v.to_string();
    };
    let (head, rest) = v.split_at(i + 3);
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{head}{}", &rest[at + 1..]),
        None => v.to_string(),
    }
}

/// Appends the contents of directory `dir` (not the directory itself).
fn add_tree<W: Write>(t: &mut tar::Builder<W>, dir: &Path) -> std::io::Result<()> {
    add_tree_except(t, dir, &[])
}

/// [`add_tree`] without the top-level entries named in `skip`.
fn add_tree_except<W: Write>(
    t: &mut tar::Builder<W>,
    dir: &Path,
    skip: &[&str],
) -> std::io::Result<()> {
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, n)) = stack.pop() {
        if !n.is_empty() {
            t.append_dir(&n, &d)?;
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if n.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let child = if n.is_empty() {
                name.clone()
            } else {
                format!("{n}/{name}")
            };
            if ft.is_dir() {
                stack.push((e.path(), child));
            } else if (ft.is_file() || ft.is_symlink()) && name != "index.lock" {
                t.append_path_with_name(e.path(), &child)?;
            }
        }
    }
    Ok(())
}

fn tar_into<W: Write>(
    out: W,
    f: impl FnOnce(&mut tar::Builder<std::io::BufWriter<W>>) -> std::io::Result<()>,
) -> Result<(), WorkspaceError> {
    let mut t = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    t.follow_symlinks(false);
    f(&mut t)?;
    t.into_inner()?.flush()?;
    Ok(())
}

/// The working-tree stream: the files of the plan (the commit's files for
/// `--from`, via `git archive`).
pub fn write_worktree(plan: &Plan, mut out: impl Write) -> Result<(), WorkspaceError> {
    if plan.opts.from.is_some() {
        let g = Git::at(&plan.root)?;
        let mut child = g
            .command()
            .args(["archive", "--format=tar", &plan.head])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| WorkspaceError::Git(e.to_string()))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| WorkspaceError::Git("no archive output".into()))?;
        std::io::copy(&mut stdout, &mut out)?;
        if !child.wait()?.success() {
            return Err(WorkspaceError::Git(format!(
                "git archive {} failed",
                plan.head
            )));
        }
        return Ok(());
    }
    let mut files = plan.files.clone();
    if plan.opts.mode == Mode::FullCopy {
        // Submodule checkouts find their repositories through `.git` files.
        let g = Git::at(&plan.root)?;
        for sub in g.submodules()? {
            let gitfile = format!("{sub}/.git");
            if plan.root.join(&gitfile).is_file() {
                files.push(gitfile);
            }
        }
    }
    tar_into(out, |t| add_files(t, &plan.root, &files))
}

/// A temporary directory removed on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs git on the repository at `git_dir` (through [`Git::run`]).
fn git_in(g: &Git, git_dir: &Path, args: &[&str]) -> Result<(), WorkspaceError> {
    let gd = format!("--git-dir={}", git_dir.display());
    let mut all = vec![gd.as_str()];
    all.extend_from_slice(args);
    g.run(&all).map(|_| ())
}

/// Builds the guest's `.git` on the host for an overlay: a shallow repository
/// holding one pack of the commit (commit, trees, blobs), its refs, config,
/// and an index whose stat data matches the shipped files (so the guest does
/// no git work at all).
fn build_shallow_git_dir(plan: &Plan, dir: &Path) -> Result<(), WorkspaceError> {
    let g = Git::at(&plan.root)?;
    let gd = dir.display().to_string();
    let init = super::git::run_git(g.command().args(["init", "-q", "--bare", &gd]))?;
    if !init.status.success() {
        return Err(WorkspaceError::Git(
            String::from_utf8_lossy(&init.stderr).into_owned(),
        ));
    }
    let git_err = |e: std::io::Error| WorkspaceError::Git(e.to_string());
    let mut list = g
        .command()
        .args(["rev-list", "--objects", "-n", "1", &plan.head])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(git_err)?;
    let status = g
        .command()
        .args(["pack-objects", "-q", "--window=0"])
        .arg(dir.join("objects/pack/pack"))
        .stdin(
            list.stdout
                .take()
                .ok_or_else(|| WorkspaceError::Git("no rev-list output".into()))?,
        )
        .stdout(Stdio::null())
        .status()
        .map_err(git_err)?;
    if !status.success() || !list.wait().map_err(git_err)?.success() {
        return Err(WorkspaceError::Git(format!("packing {} failed", plan.head)));
    }
    std::fs::write(dir.join("shallow"), format!("{}\n", plan.head))?;
    let branch_ref = format!("refs/heads/{}", plan.branch);
    git_in(&g, dir, &["update-ref", &branch_ref, &plan.head])?;
    git_in(&g, dir, &["symbolic-ref", "HEAD", &branch_ref])?;
    git_in(&g, dir, &["config", "core.bare", "false"])?;
    git_in(
        &g,
        dir,
        &[
            "config",
            "user.name",
            plan.user_name.as_deref().unwrap_or("banger"),
        ],
    )?;
    let email = plan
        .user_email
        .clone()
        .unwrap_or_else(|| "root@banger.vm".into());
    git_in(&g, dir, &["config", "user.email", &email])?;
    if plan.opts.from.is_none() {
        // The index of the commit, with stat data from the host's files that
        // match it (changed ones stay unrefreshed, so they show as modified).
        let index = dir.join("index");
        let root = plan.root.display().to_string();
        let idx = |args: &[&str]| -> Result<(), WorkspaceError> {
            let out = super::git::run_git(
                g.command()
                    .env("GIT_DIR", dir)
                    .env("GIT_WORK_TREE", &root)
                    .env("GIT_INDEX_FILE", &index)
                    .args(args),
            )?;
            // `update-index --refresh` exits 1 when files differ: that is expected.
            if !out.status.success() && args[0] != "update-index" {
                return Err(WorkspaceError::Git(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
            Ok(())
        };
        idx(&["read-tree", &plan.head])?;
        idx(&["update-index", "-q", "--refresh"])?;
    }
    let _ = std::fs::remove_dir_all(dir.join("hooks"));
    Ok(())
}

/// The `.git` stream. Overlay: a shallow repository built on the host;
/// full_copy: the repository's own git directory.
pub fn write_git_dir(plan: &Plan, out: impl Write, scratch: &Path) -> Result<(), WorkspaceError> {
    let g = Git::at(&plan.root)?;
    if plan.opts.mode == Mode::FullCopy && plan.opts.from.is_none() {
        let gd = g.git_dir()?;
        // The repository's own config carries what must not enter a
        // guest (tokens in remote URLs, `http.extraheader`, credential
        // helpers): the guest gets a cleaned copy.
        let config = std::fs::read_to_string(gd.join("config")).unwrap_or_default();
        let clean = clean_git_config(&config);
        return tar_into(out, |t| {
            add_tree_except(t, &gd, &["config"])?;
            let mut h = tar::Header::new_gnu();
            h.set_size(clean.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            t.append_data(&mut h, "config", clean.as_bytes())
        });
    }
    use rand::RngExt;
    std::fs::create_dir_all(scratch)?;
    let dir = Scratch(scratch.join(format!("banger-git-{:016x}", rand::rng().random::<u64>())));
    build_shallow_git_dir(plan, &dir.0)?;
    tar_into(out, |t| add_tree(t, &dir.0))
}

fn sh(script: &str, name: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec!["sh".to_string(), "-c".into(), script.into(), name.into()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// Guest commands of a transfer into `guest_path`.
pub fn begin_argv(guest_path: &str) -> Vec<String> {
    sh(GUEST_BEGIN, "banger-prepare", &[guest_path])
}
pub fn untar_argv(guest_path: &str, sub: &str) -> Vec<String> {
    sh(GUEST_UNTAR, "banger-prepare", &[guest_path, sub])
}
pub fn finish_argv(guest_path: &str, keep_ignored: bool) -> Vec<String> {
    sh(
        GUEST_FINISH,
        "banger-prepare",
        &[guest_path, if keep_ignored { "keep" } else { "" }],
    )
}

/// The guest command that prints the export patch.
pub fn export_argv(guest_path: &str, base: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        GUEST_EXPORT.into(),
        "banger-export".into(),
        guest_path.into(),
        base.into(),
    ]
}

/// Wraps a user command for the workspace (mise when present).
pub fn exec_argv(user: &[String]) -> Vec<String> {
    let mut v = vec![
        "sh".into(),
        "-c".into(),
        GUEST_MISE_WRAP.into(),
        "banger-exec".into(),
    ];
    v.extend(user.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shipped_git_config_keeps_remotes_and_loses_secrets() {
        let config = "[core]\n\trepositoryformatversion = 0\n[remote \"origin\"]\n\turl = https://user:ghp_tok@github.com/o/r.git\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n[http]\n\textraHeader = AUTHORIZATION: basic c2VjcmV0\n[http \"https://x.example/\"]\n\textraheader = X-Token: abc\n[credential \"https://github.com\"]\n\thelper = store\n[credential]\n\thelper = cache\n[branch \"main\"]\n\tremote = origin\n";
        let clean = clean_git_config(config);
        for gone in [
            "ghp_tok",
            "user:",
            "c2VjcmV0",
            "X-Token",
            "helper",
            "credential",
        ] {
            assert!(!clean.contains(gone), "{gone} left in:\n{clean}");
        }
        for kept in [
            "url = https://github.com/o/r.git",
            "fetch = +refs/heads/*:refs/remotes/origin/*",
            "[branch \"main\"]",
            "remote = origin",
            "repositoryformatversion = 0",
        ] {
            assert!(clean.contains(kept), "{kept} missing from:\n{clean}");
        }
        // A URL without user information and an scp-like address stay.
        assert_eq!(strip_userinfo(" https://h/x@y"), " https://h/x@y");
        assert_eq!(
            clean_git_config("\turl = git@github.com:o/r.git\n"),
            "\turl = git@github.com:o/r.git\n"
        );
    }
}
