//! Reading the host repository with `git` (argv only, never a shell).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::WorkspaceError;

/// A repository, by its root.
pub struct Git {
    pub root: PathBuf,
}

fn git_cmd(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    c
}

/// How long one git run may take: a hung git (a held lock, a stalled
/// network filesystem) must not hold an operation forever.
pub const GIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);
/// The most of a git run's output kept (file lists of big repositories).
pub const GIT_OUTPUT_MAX: usize = 256 << 20;

/// Runs a git command to completion within [`GIT_DEADLINE`], its output
/// bounded by [`GIT_OUTPUT_MAX`].
pub fn run_git(cmd: &mut Command) -> Result<crate::host::process::Ran, WorkspaceError> {
    let r = crate::host::process::run_bounded(cmd, GIT_DEADLINE, GIT_OUTPUT_MAX)
        .map_err(|e| WorkspaceError::Git(format!("git: {e}")))?;
    if r.truncated {
        return Err(WorkspaceError::Git(format!(
            "git wrote more than {} MiB; refusing to go on",
            GIT_OUTPUT_MAX >> 20
        )));
    }
    Ok(r)
}

fn split_z(out: &[u8]) -> Vec<String> {
    out.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl Git {
    /// The repository containing `path` (a subdirectory is fine).
    pub fn at(path: &Path) -> Result<Git, WorkspaceError> {
        if !path.exists() {
            return Err(WorkspaceError::Refused(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(path).to_path_buf()
        };
        let out = crate::host::process::run_bounded(
            git_cmd(&dir).args(["rev-parse", "--show-toplevel"]),
            GIT_DEADLINE,
            1 << 20,
        )
        .map_err(|e| WorkspaceError::Git(format!("cannot run git: {e}; install git")))?;
        if !out.status.success() {
            return Err(WorkspaceError::NotARepo(path.display().to_string()));
        }
        Ok(Git {
            root: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        })
    }

    /// Runs git in the root; stdout on success.
    pub fn run(&self, args: &[&str]) -> Result<Vec<u8>, WorkspaceError> {
        let out = run_git(git_cmd(&self.root).args(args))?;
        if !out.status.success() {
            return Err(WorkspaceError::Git(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// A command in the root, for streaming callers.
    pub fn command(&self) -> Command {
        git_cmd(&self.root)
    }

    /// The full hash of `rev`, which must name a commit.
    pub fn resolve_commit(&self, rev: &str) -> Result<String, WorkspaceError> {
        let spec = format!("{rev}^{{commit}}");
        match self.run(&["rev-parse", "--verify", "-q", &spec]) {
            Ok(o) => Ok(String::from_utf8_lossy(&o).trim().to_string()),
            Err(_) if rev == "HEAD" => Err(WorkspaceError::Refused(format!(
                "{} has no commits yet; commit something first",
                self.root.display()
            ))),
            Err(_) => Err(WorkspaceError::Refused(format!(
                "{rev:?} is not a commit in {}",
                self.root.display()
            ))),
        }
    }

    /// The checked-out branch, if any.
    pub fn current_branch(&self) -> Option<String> {
        let o = self.run(&["symbolic-ref", "--short", "-q", "HEAD"]).ok()?;
        let s = String::from_utf8_lossy(&o).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    /// Refuses names git would not accept for a branch.
    pub fn check_branch_name(&self, name: &str) -> Result<(), WorkspaceError> {
        let ok =
            !name.starts_with('-') && self.run(&["check-ref-format", "--branch", name]).is_ok();
        if ok {
            Ok(())
        } else {
            Err(WorkspaceError::Refused(format!(
                "{name:?} is not a valid branch name"
            )))
        }
    }

    /// Paths of submodules (gitlinks in the index).
    pub fn submodules(&self) -> Result<Vec<String>, WorkspaceError> {
        let out = self.run(&["ls-files", "-s", "-z"])?;
        Ok(split_z(&out)
            .into_iter()
            .filter(|l| l.starts_with("160000 "))
            .filter_map(|l| l.split_once('\t').map(|(_, p)| p.to_string()))
            .collect())
    }

    /// Untracked files that are not ignored, from the root.
    pub fn untracked(&self) -> Result<Vec<String>, WorkspaceError> {
        Ok(split_z(&self.run(&[
            "ls-files",
            "-z",
            "--others",
            "--exclude-standard",
        ])?))
    }

    /// Tracked files present in the working tree (sorted). With
    /// `recurse_submodules`, files of submodules too.
    pub fn worktree_tracked(
        &self,
        recurse_submodules: bool,
    ) -> Result<Vec<String>, WorkspaceError> {
        let mut args = vec!["ls-files", "-z", "--cached"];
        if recurse_submodules {
            args.push("--recurse-submodules");
        }
        let subs = self.submodules()?;
        let deleted = self.deleted()?;
        let mut v: Vec<String> = split_z(&self.run(&args)?)
            .into_iter()
            .filter(|f| !subs.contains(f) && deleted.binary_search(f).is_err())
            .filter(|f| std::fs::symlink_metadata(self.root.join(f)).is_ok())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Tracked files deleted from the working tree (sorted).
    pub fn deleted(&self) -> Result<Vec<String>, WorkspaceError> {
        let mut v = split_z(&self.run(&["ls-files", "-z", "--deleted"])?);
        v.sort();
        Ok(v)
    }

    /// Tracked files whose working-tree or staged content differs from `commit`.
    pub fn changed_since(&self, commit: &str) -> Result<Vec<String>, WorkspaceError> {
        Ok(split_z(&self.run(&[
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            commit,
        ])?))
    }

    /// Files (blobs and symlinks) of a commit.
    pub fn tree_files(&self, commit: &str) -> Result<Vec<String>, WorkspaceError> {
        let out = self.run(&["ls-tree", "-r", "-z", commit])?;
        let mut v: Vec<String> = split_z(&out)
            .into_iter()
            .filter(|l| !l.starts_with("160000 "))
            .filter_map(|l| l.split_once('\t').map(|(_, p)| p.to_string()))
            .collect();
        v.sort();
        Ok(v)
    }

    /// A config value (user.name, ...), if set.
    pub fn config(&self, key: &str) -> Option<String> {
        let o = self.run(&["config", "--get", key]).ok()?;
        let s = String::from_utf8_lossy(&o).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    /// The absolute git directory.
    pub fn git_dir(&self) -> Result<PathBuf, WorkspaceError> {
        let o = self.run(&["rev-parse", "--absolute-git-dir"])?;
        Ok(PathBuf::from(String::from_utf8_lossy(&o).trim()))
    }
}
