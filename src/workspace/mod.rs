//! Workspaces: a host git repository shipped into a guest at `/root/repo`,
//! and the guest's edits exported back as a patch.
//!
//! `inspect` decides what ships (a pure read of the host repo, also used by
//! `--dry-run` without a daemon). `archive` streams it as one tar (never held
//! in memory): in overlay mode a pack of HEAD's objects plus the files that
//! differ from HEAD, which the guest checks out and lays over; in full_copy
//! mode the whole `.git` plus the working tree. Gitignored files never ship.

pub mod archive;
pub mod git;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::domain::WorkspaceMode as Mode;
use crate::domain::WorkspaceMode;

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub include_untracked: bool,
    /// `--from <commit> --branch <name>`: ship that commit on a new branch.
    pub from: Option<(String, String)>,
}

/// Workspace failures, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{0} is not inside a git repository; give the path of a repo (or a directory in one)")]
    NotARepo(String),
    #[error("{0}")]
    Refused(String),
    #[error("git failed: {0}")]
    Git(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Everything `prepare` will ship, decided on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub root: PathBuf,
    pub head: String,
    pub branch: String,
    pub opts: Options,
    /// Working-tree files that arrive in the guest (relative, sorted).
    pub files: Vec<String>,
    /// Files that differ from HEAD and ship on top of the checkout (overlay).
    pub overlay: Vec<String>,
    /// Tracked files missing from the working tree (overlay: removed after checkout).
    pub deleted: Vec<String>,
    /// Untracked, non-ignored files left out (without --include-untracked).
    pub untracked_skipped: usize,
    pub user_name: Option<String>,
    pub user_email: Option<String>,
}

/// Where workspaces live in the guest.
pub const GUEST_PATH: &str = "/root/repo";

/// Inspects `path` and plans a prepare.
pub fn inspect(path: &Path, opts: &Options) -> Result<Plan, WorkspaceError> {
    let g = git::Git::at(path)?;
    if let Some((_, branch)) = &opts.from {
        g.check_branch_name(branch)?;
    }
    let submodules = g.submodules()?;
    if !submodules.is_empty() && opts.mode == Mode::Overlay {
        return Err(WorkspaceError::Refused(format!(
            "{} has submodules ({}); overlay mode cannot ship them: use --mode full_copy",
            g.root.display(),
            submodules.join(", ")
        )));
    }
    let (head, branch) = match &opts.from {
        Some((commit, branch)) => (g.resolve_commit(commit)?, branch.clone()),
        None => (
            g.resolve_commit("HEAD")?,
            g.current_branch().unwrap_or_else(|| "banger".into()),
        ),
    };
    let untracked = if opts.from.is_none() {
        g.untracked().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (mut files, overlay, deleted) = match (&opts.from, opts.mode) {
        (Some(_), _) => (g.tree_files(&head)?, Vec::new(), Vec::new()),
        (None, Mode::Overlay) => {
            let present = g.worktree_tracked(opts.mode == Mode::FullCopy)?;
            let mut over = g.changed_since(&head)?;
            over.retain(|f| present.binary_search(f).is_ok());
            (present, over, g.deleted()?)
        }
        (None, Mode::FullCopy) => (g.worktree_tracked(true)?, Vec::new(), Vec::new()),
    };
    let mut overlay = overlay;
    if opts.include_untracked {
        files.extend(untracked.iter().cloned());
        if opts.mode == Mode::Overlay {
            overlay.extend(untracked.iter().cloned());
        }
    }
    files.sort();
    files.dedup();
    overlay.sort();
    overlay.dedup();
    Ok(Plan {
        user_name: g.config("user.name"),
        user_email: g.config("user.email"),
        root: g.root.clone(),
        head,
        branch,
        opts: opts.clone(),
        files,
        overlay,
        deleted,
        untracked_skipped: if opts.include_untracked {
            0
        } else {
            untracked.len()
        },
    })
}

/// The one-line notice about skipped untracked files (none when nothing is
/// skipped). Counting never fails a prepare.
pub fn untracked_notice(plan: &Plan) -> Option<String> {
    (plan.untracked_skipped > 0).then(|| {
        format!(
            "note: {} untracked file{} in {} not shipped; add --include-untracked to ship {} (gitignored files never ship)",
            plan.untracked_skipped,
            if plan.untracked_skipped == 1 { "" } else { "s" },
            plan.root.display(),
            if plan.untracked_skipped == 1 { "it" } else { "them" },
        )
    })
}

/// What `--dry-run` prints.
pub fn dry_run_text(plan: &Plan) -> String {
    let mut s = format!(
        "mode: {}\nrepo: {}\ncommit: {}\nbranch: {}\n",
        plan.opts.mode.as_str(),
        plan.root.display(),
        plan.head,
        plan.branch
    );
    match plan.opts.mode {
        Mode::Overlay => s.push_str("history: shallow (this commit only)\n"),
        Mode::FullCopy => s.push_str("history: the whole .git directory\n"),
    }
    s.push_str(&format!("files ({}):\n", plan.files.len()));
    for f in &plan.files {
        s.push_str(f);
        s.push('\n');
    }
    s
}

/// The host repo's HEAD now (for "moved since prepare" warnings).
pub fn host_head(path: &Path) -> Option<String> {
    git::Git::at(path).ok()?.resolve_commit("HEAD").ok()
}

impl Options {
    /// From the wire form.
    pub fn of(spec: &WorkspaceSpec) -> Options {
        Options {
            mode: spec.mode,
            include_untracked: spec.include_untracked,
            from: spec.from.clone(),
        }
    }
}

/// What `vm workspace prepare` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkspaceSpec {
    /// Absolute path of the repository (or a directory inside it).
    pub path: String,
    pub mode: WorkspaceMode,
    pub include_untracked: bool,
    /// `--from <commit> --branch <name>`.
    pub from: Option<(String, String)>,
    /// Keep the guest's git-ignored files of an earlier prepare (a warm
    /// workspace: its dependencies and build outputs).
    pub keep_ignored: bool,
}
