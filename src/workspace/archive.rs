//! The transfer stream of a prepare (one tar, written incrementally) and the
//! guest-side scripts that unpack it and export edits.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use super::git::Git;
use super::{Mode, Plan, WorkspaceError};

/// Where transfer metadata sits inside the stream (removed after unpacking).
pub const META_DIR: &str = ".banger-workspace-transfer";

/// Unpacks an overlay stream into `$1` (replacing it only when complete).
pub const GUEST_UNPACK_OVERLAY: &str = r#"set -eu
dst="$1"; new="$dst.banger-new"; m=.banger-workspace-transfer
rm -rf "$new"; mkdir -p "$new"; cd "$new"
tar -x -f -
head=$(sed -n 1p $m/meta); branch=$(sed -n 2p $m/meta)
name=$(sed -n 3p $m/meta); email=$(sed -n 4p $m/meta)
git init -q .
git index-pack --stdin < $m/pack > /dev/null
echo "$head" > .git/shallow
git update-ref "refs/heads/$branch" "$head"
git symbolic-ref HEAD "refs/heads/$branch"
# Commits in the guest need an identity: the host's, else a banger one.
git config user.name "${name:-banger}"
git config user.email "${email:-root@$(hostname).vm}"
git reset -q --hard "$head"
if [ -d $m/overlay ]; then cp -a $m/overlay/. .; fi
if [ -s $m/deleted ]; then xargs -0 rm -f -- < $m/deleted; fi
rm -rf $m
cd /
rm -rf "$dst"
mv "$new" "$dst"
"#;

/// Unpacks a full-copy stream into `$1`.
pub const GUEST_UNPACK_FULL: &str = r#"set -eu
dst="$1"; new="$dst.banger-new"
rm -rf "$new"; mkdir -p "$new"; cd "$new"
tar -x -f -
git update-index -q --refresh > /dev/null 2>&1 || true
cd /
rm -rf "$dst"
mv "$new" "$dst"
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

/// Runs `inner` with mise when the guest has it (tools of the repo on PATH),
/// plainly otherwise.
pub const GUEST_MISE_WRAP: &str =
    r#"if command -v mise >/dev/null 2>&1; then exec mise exec -- "$@"; else exec "$@"; fi"#;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn add_bytes<W: Write>(t: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    t.append_data(&mut h, name, data)
}

/// Appends files relative to `base` under `prefix`, as they are on disk
/// (symlinks as symlinks).
fn add_files<W: Write>(
    t: &mut tar::Builder<W>,
    base: &Path,
    files: &[String],
    prefix: &str,
) -> std::io::Result<()> {
    for f in files {
        let src = base.join(f);
        let name = if prefix.is_empty() {
            f.clone()
        } else {
            format!("{prefix}/{f}")
        };
        match std::fs::symlink_metadata(&src) {
            Ok(md) if md.is_file() || md.file_type().is_symlink() => {
                t.append_path_with_name(&src, &name)?
            }
            // Vanished since inspection, or not a file: skip.
            _ => {}
        }
    }
    Ok(())
}

/// Appends a whole directory tree as `name`.
fn add_tree<W: Write>(t: &mut tar::Builder<W>, dir: &Path, name: &str) -> std::io::Result<()> {
    let mut stack = vec![(dir.to_path_buf(), name.to_string())];
    while let Some((d, n)) = stack.pop() {
        t.append_dir(&n, &d)?;
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            let child = format!("{n}/{}", e.file_name().to_string_lossy());
            if ft.is_dir() {
                stack.push((e.path(), child));
            } else if ft.is_file() || ft.is_symlink() {
                if e.file_name() == "index.lock" {
                    continue;
                }
                t.append_path_with_name(e.path(), &child)?;
            }
        }
    }
    Ok(())
}

/// Packs `commit`'s objects (commit, trees, blobs; no history) into `out`.
fn pack_commit(g: &Git, commit: &str, out: &Path) -> Result<(), WorkspaceError> {
    let git_err = |e: std::io::Error| WorkspaceError::Git(e.to_string());
    let mut list = g
        .command()
        .args(["rev-list", "--objects", "-n", "1", commit])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(git_err)?;
    let pack_file = std::fs::File::create(out)?;
    let status = g
        .command()
        .args([
            "-c",
            "pack.compression=1",
            "pack-objects",
            "--stdout",
            "-q",
            "--window=0",
        ])
        .stdin(
            list.stdout
                .take()
                .ok_or_else(|| WorkspaceError::Git("no rev-list output".into()))?,
        )
        .stdout(pack_file)
        .status()
        .map_err(git_err)?;
    let listed = list.wait().map_err(git_err)?;
    if !status.success() || !listed.success() {
        return Err(WorkspaceError::Git(format!("packing {commit} failed")));
    }
    Ok(())
}

/// Writes the whole transfer stream of `plan` into `out` (blocking; meant
/// for a thread feeding a pipe). Temporary data (the pack) goes to `scratch`.
pub fn write(plan: &Plan, out: impl Write, scratch: &Path) -> Result<(), WorkspaceError> {
    let g = Git::at(&plan.root)?;
    let mut t = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    t.follow_symlinks(false);
    match (plan.opts.mode, plan.opts.from.is_some()) {
        (Mode::FullCopy, false) => {
            add_tree(&mut t, &g.git_dir()?, ".git")?;
            add_files(&mut t, &plan.root, &plan.files, "")?;
        }
        _ => {
            let meta = format!(
                "{}\n{}\n{}\n{}\n",
                plan.head,
                plan.branch,
                plan.user_name.clone().unwrap_or_default(),
                plan.user_email.clone().unwrap_or_default()
            );
            add_bytes(&mut t, &format!("{META_DIR}/meta"), meta.as_bytes())?;
            std::fs::create_dir_all(scratch)?;
            let pack = scratch.join(format!("banger-pack-{}", std::process::id()));
            pack_commit(&g, &plan.head, &pack)?;
            let r = t.append_path_with_name(&pack, format!("{META_DIR}/pack"));
            let _ = std::fs::remove_file(&pack);
            r?;
            let deleted: Vec<u8> = plan
                .deleted
                .iter()
                .flat_map(|d| d.bytes().chain([0u8]))
                .collect();
            add_bytes(&mut t, &format!("{META_DIR}/deleted"), &deleted)?;
            add_files(
                &mut t,
                &plan.root,
                &plan.overlay,
                &format!("{META_DIR}/overlay"),
            )?;
        }
    }
    t.into_inner()?.flush()?;
    Ok(())
}

/// The guest command that unpacks `plan`'s stream into `guest_path`.
pub fn unpack_argv(plan: &Plan, guest_path: &str) -> Vec<String> {
    let script = match (plan.opts.mode, plan.opts.from.is_some()) {
        (Mode::FullCopy, false) => GUEST_UNPACK_FULL,
        _ => GUEST_UNPACK_OVERLAY,
    };
    vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "banger-prepare".into(),
        guest_path.into(),
    ]
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
