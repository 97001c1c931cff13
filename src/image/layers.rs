//! OCI layers into an ext4 root file system, without root. Layers are
//! applied in order to a staging tree the daemon (the owner) writes: files,
//! directories, symlinks, hard links; whiteouts (`.wh.<name>`) and opaque
//! directories (`.wh..wh..opq`) remove what lower layers put there. What
//! the owner cannot set on its own files — owners, the real modes (setuid,
//! directories without write permission), device nodes, xattrs — is kept in
//! a [`Tree`] of metadata and written into the image after `mkfs.ext4 -d`
//! by a `debugfs` script. Nothing here runs as root, and the layer is
//! hostile data: every path is resolved inside the staging root (a symlink
//! in a parent is followed as the image would see it, never out of the
//! tree), `..` is refused, and names that cannot be written safely into the
//! script are refused.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

/// Layer failures: the message names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LayerError(pub String);

fn err(what: impl Into<String>) -> LayerError {
    LayerError(what.into())
}

/// What an entry is, beyond what the staging tree can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// The metadata of one path as the image has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Every path of the image (relative, `/`-separated; "" is the root).
#[derive(Debug, Default)]
pub struct Tree {
    pub meta: BTreeMap<String, Meta>,
    /// File bytes written by every layer so far (counted against
    /// [`MAX_IMAGE_BYTES`]).
    pub bytes: u64,
}

/// The most an image may unpack to, and the most paths it may have: a
/// registry's layers are hostile data (a few KB of gzip can expand to
/// terabytes), and the staging tree lives on the owner's cache disk.
pub const MAX_IMAGE_BYTES: u64 = 64 << 30;
pub const MAX_IMAGE_ENTRIES: usize = 4_000_000;

/// A relative path made of normal components only, or an error.
fn clean(p: &Path) -> Result<Vec<String>, LayerError> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| err(format!("{}: a path that is not UTF-8", p.display())))?
                    .to_string(),
            ),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(err(format!("{}: '..' in a layer path", p.display())))
            }
        }
    }
    Ok(out)
}

/// Refuses names the debugfs script could not carry safely.
fn check_name(rel: &str) -> Result<(), LayerError> {
    if rel
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
    {
        return Err(err(format!(
            "{rel:?}: a path with control characters, quotes or backslashes"
        )));
    }
    Ok(())
}

/// Resolves `parts` (a directory path of the image) inside `root`,
/// following symlinks the way the guest will (absolute targets from the
/// image's root), never leaving the tree. Returns the path relative to the
/// root. Missing directories are made (0755, root's).
fn resolve_dir(root: &Path, tree: &mut Tree, parts: &[String]) -> Result<Vec<String>, LayerError> {
    let mut todo: Vec<String> = parts.iter().rev().cloned().collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        let p = root.join(at.join("/")).join(&part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(err(format!("{}: too many symlinks", parts.join("/"))));
                }
                let target = std::fs::read_link(&p).map_err(|e| err(e.to_string()))?;
                if target.is_absolute() {
                    at.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => todo.push(s.to_string_lossy().into_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(m) if m.is_dir() => at.push(part),
            Ok(_) => {
                return Err(err(format!(
                    "{}: a file where a directory should be",
                    parts.join("/")
                )))
            }
            Err(_) if part == ".." => {
                at.pop();
            }
            Err(_) => {
                std::fs::create_dir(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
                at.push(part);
                tree.meta.insert(
                    at.join("/"),
                    Meta {
                        kind: Kind::Dir,
                        uid: 0,
                        gid: 0,
                        mode: 0o755,
                        xattrs: vec![],
                    },
                );
            }
        }
        // ".." as a component name (from a symlink target) goes up, at
        // most to the root.
        if at.last().map(String::as_str) == Some("..") {
            at.pop();
            at.pop();
        }
    }
    Ok(at)
}

/// Removes `rel` (and everything below it) from the tree and the disk.
fn remove(root: &Path, tree: &mut Tree, rel: &str) {
    let p = root.join(rel);
    if let Ok(m) = std::fs::symlink_metadata(&p) {
        if m.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
    let prefix = format!("{rel}/");
    tree.meta.retain(|k, _| k != rel && !k.starts_with(&prefix));
}

/// Applies one (decompressed) layer to `root`.
pub fn apply(layer: impl Read, root: &Path, tree: &mut Tree) -> Result<(), LayerError> {
    let mut ar = tar::Archive::new(TarGuard::new(layer));
    // Paths created by this layer (an opaque marker spares them).
    let mut ours: HashSet<String> = HashSet::new();
    tree.meta.entry(String::new()).or_insert(Meta {
        kind: Kind::Dir,
        uid: 0,
        gid: 0,
        mode: 0o755,
        xattrs: vec![],
    });
    for entry in ar
        .entries()
        .map_err(|e| err(format!("reading the layer: {e}")))?
    {
        let mut e = entry.map_err(|e| err(format!("reading the layer: {e}")))?;
        let path = e
            .path()
            .map_err(|e| err(format!("a layer path: {e}")))?
            .into_owned();
        let mut parts = clean(&path)?;
        let Some(name) = parts.pop() else {
            // The root itself: take its metadata.
            let h = e.header();
            if let Some(m) = tree.meta.get_mut("") {
                m.mode = h.mode().unwrap_or(0o755) & 0o7777;
                m.uid = h.uid().unwrap_or(0) as u32;
                m.gid = h.gid().unwrap_or(0) as u32;
            }
            continue;
        };
        let dir = resolve_dir(root, tree, &parts)?;
        let rel_of = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{}/{n}", dir.join("/"))
            }
        };
        if name == ".wh..wh..opq" {
            opaque(root, tree, &dir, &ours);
            continue;
        }
        if let Some(gone) = name.strip_prefix(".wh.") {
            if gone.is_empty() || gone == "." || gone == ".." || gone.contains('/') {
                return Err(err(format!("{}: a whiteout of nothing", path.display())));
            }
            remove(root, tree, &rel_of(gone));
            continue;
        }
        let rel = rel_of(&name);
        check_name(&rel)?;
        if tree.meta.len() >= MAX_IMAGE_ENTRIES {
            return Err(err(format!(
                "the image has more than {MAX_IMAGE_ENTRIES} paths; refused"
            )));
        }
        let target = root.join(&rel);
        // From the entry, not the raw header: PAX and GNU long link names.
        let link = e
            .link_name()
            .map_err(|e| err(format!("{rel}: a link name: {e}")))?
            .map(|c| c.into_owned());
        let h = e.header().clone();
        let et = h.entry_type();
        let existing = std::fs::symlink_metadata(&target).ok();
        let is_dir = et.is_dir();
        if let Some(m) = &existing {
            if !(m.is_dir() && is_dir) {
                remove(root, tree, &rel);
            }
        }
        let xattrs = pax_xattrs(&mut e);
        // (Their record is at most MAX_META_RECORD; they count as bytes.)
        tree.bytes = tree
            .bytes
            .saturating_add(xattrs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum());
        if et.is_hard_link() {
            hard_link(root, tree, &rel, link, &target)?;
            ours.insert(rel);
            continue;
        }
        let Some(kind) = create(&mut e, &h, existing.as_ref(), &target, &rel, link, tree)? else {
            // PAX/GNU headers are consumed by the tar crate; others skipped.
            continue;
        };
        // What the owner needs to keep working in the tree; the real mode
        // goes into the image afterwards.
        if kind != Kind::Symlink {
            let m = if kind == Kind::Dir { 0o755 } else { 0o644 };
            let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m));
        }
        tree.meta.insert(
            rel.clone(),
            Meta {
                kind,
                uid: h.uid().unwrap_or(0) as u32,
                gid: h.gid().unwrap_or(0) as u32,
                mode: h.mode().unwrap_or(0o644) & 0o7777,
                xattrs,
            },
        );
        ours.insert(rel);
    }
    Ok(())
}

/// `.wh..wh..opq` in `dir`: its children from earlier layers go (those
/// this layer made stay).
fn opaque(root: &Path, tree: &mut Tree, dir: &[String], ours: &HashSet<String>) {
    let d = dir.join("/");
    let prefix = if d.is_empty() {
        String::new()
    } else {
        format!("{d}/")
    };
    let children: Vec<String> = tree
        .meta
        .keys()
        .filter(|k| {
            !k.is_empty()
                && k.starts_with(&prefix)
                && !k[prefix.len()..].contains('/')
                && !ours.contains(*k)
        })
        .cloned()
        .collect();
    for c in children {
        remove(root, tree, &c);
    }
}

/// An entry's extended attributes (PAX `SCHILY.xattr.*`), each bounded.
fn pax_xattrs<R: Read>(e: &mut tar::Entry<R>) -> Vec<(String, Vec<u8>)> {
    let mut xattrs = Vec::new();
    if let Ok(Some(exts)) = e.pax_extensions() {
        for x in exts.flatten() {
            if let (Ok(k), v) = (x.key(), x.value_bytes()) {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    if name.len() <= 255 && v.len() <= 64 << 10 {
                        xattrs.push((name.to_string(), v.to_vec()));
                    }
                }
            }
        }
    }
    xattrs
}

/// A hard link `rel` to a file already in the tree (resolved inside it);
/// the link takes the target's metadata (one inode).
fn hard_link(
    root: &Path,
    tree: &mut Tree,
    rel: &str,
    link: Option<std::path::PathBuf>,
    target: &Path,
) -> Result<(), LayerError> {
    let to = link.ok_or_else(|| err(format!("{rel}: a hard link without a target")))?;
    let mut tp = clean(&to)?;
    let tname = tp
        .pop()
        .ok_or_else(|| err(format!("{rel}: a hard link to the root")))?;
    let tdir = resolve_dir(root, tree, &tp)?;
    let trel = if tdir.is_empty() {
        tname
    } else {
        format!("{}/{tname}", tdir.join("/"))
    };
    let src = root.join(&trel);
    match std::fs::symlink_metadata(&src) {
        Ok(m) if m.is_file() => {}
        _ => {
            return Err(err(format!(
                "{rel}: a hard link to {trel}, which is not a file"
            )))
        }
    }
    std::fs::hard_link(&src, target).map_err(|e| err(format!("{rel}: {e}")))?;
    if let Some(m) = tree.meta.get(&trel).cloned() {
        tree.meta.insert(rel.to_string(), m);
    }
    Ok(())
}

/// Makes the node of a directory, file, symlink or device entry at
/// `target`; None for entries that make nothing.
fn create<R: Read>(
    e: &mut tar::Entry<R>,
    h: &tar::Header,
    existing: Option<&std::fs::Metadata>,
    target: &Path,
    rel: &str,
    link: Option<std::path::PathBuf>,
    tree: &mut Tree,
) -> Result<Option<Kind>, LayerError> {
    let et = h.entry_type();
    let dev = || {
        (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        )
    };
    Ok(Some(if et.is_dir() {
        if existing.is_none_or(|m| !m.is_dir()) {
            std::fs::create_dir(target).map_err(|e| err(format!("{rel}: {e}")))?;
        }
        Kind::Dir
    } else if et.is_file() || et == tar::EntryType::Continuous {
        // The entry's size (a PAX `size` record overrides the raw
        // header's) is what the archive reader yields.
        tree.bytes = tree.bytes.saturating_add(e.size());
        if tree.bytes > MAX_IMAGE_BYTES {
            return Err(err(format!(
                "the image unpacks to more than {}; refused",
                crate::size::format_size(MAX_IMAGE_BYTES)
            )));
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map_err(|e| err(format!("{rel}: {e}")))?;
        std::io::copy(e, &mut f).map_err(|e| err(format!("{rel}: {e}")))?;
        Kind::File
    } else if et.is_symlink() {
        let to = link.ok_or_else(|| err(format!("{rel}: a symlink without a target")))?;
        std::os::unix::fs::symlink(&to, target).map_err(|e| err(format!("{rel}: {e}")))?;
        Kind::Symlink
    } else if et.is_character_special() || et.is_block_special() || et.is_fifo() {
        // A placeholder; debugfs makes the node.
        std::fs::File::create(target).map_err(|e| err(format!("{rel}: {e}")))?;
        let (ma, mi) = dev();
        if et.is_character_special() {
            Kind::Char(ma, mi)
        } else if et.is_block_special() {
            Kind::Block(ma, mi)
        } else {
            Kind::Fifo
        }
    } else {
        return Ok(None);
    }))
}

fn file_type_bits(k: &Kind) -> u32 {
    match k {
        Kind::File => 0o100000,
        Kind::Dir => 0o040000,
        Kind::Symlink => 0o120000,
        Kind::Char(..) => 0o020000,
        Kind::Block(..) => 0o060000,
        Kind::Fifo => 0o010000,
    }
}

/// The debugfs commands that give every path its owner, mode, xattrs and
/// (for nodes) its kind. `xattr_dir` receives the values of xattrs (debugfs
/// reads binary values from files).
pub fn debugfs_script(tree: &Tree, xattr_dir: &Path) -> Result<String, LayerError> {
    let mut s = String::new();
    let mut n = 0;
    for (rel, m) in &tree.meta {
        check_name(rel)?;
        let p = format!("\"/{rel}\"");
        // debugfs makes a node in its current directory, by base name.
        let (dir, base) = rel.rsplit_once('/').unwrap_or(("", rel));
        let node = |args: String| format!("rm {p}\ncd \"/{dir}\"\nmknod \"{base}\" {args}\ncd /\n");
        match m.kind {
            Kind::Char(ma, mi) => s.push_str(&node(format!("c {ma} {mi}"))),
            Kind::Block(ma, mi) => s.push_str(&node(format!("b {ma} {mi}"))),
            Kind::Fifo => s.push_str(&node("p".into())),
            _ => {}
        }
        s.push_str(&format!(
            "sif {p} mode 0{:o}\nsif {p} uid {}\nsif {p} gid {}\n",
            file_type_bits(&m.kind) | m.mode,
            m.uid,
            m.gid
        ));
        for (k, v) in &m.xattrs {
            if k.bytes()
                .any(|b| b <= 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
            {
                return Err(err(format!("/{rel}: an xattr name debugfs cannot take")));
            }
            n += 1;
            let f = xattr_dir.join(format!("x{n}"));
            std::fs::write(&f, v).map_err(|e| err(format!("{}: {e}", f.display())))?;
            s.push_str(&format!("ea_set -f \"{}\" {p} {k}\n", f.display()));
        }
    }
    Ok(s)
}

/// Makes `image` (ext4, `size_mib`) from the staged tree and its metadata.
pub fn make_ext4(
    root: &Path,
    tree: &Tree,
    image: &Path,
    size_mib: u64,
    label: &str,
    scratch: &Path,
) -> Result<(), LayerError> {
    let tool = |n: &str| {
        crate::host::system_tool(n)
            .ok_or_else(|| err(format!("{n} is not installed; install e2fsprogs")))
    };
    let run = |c: &mut std::process::Command, what: &str| -> Result<String, LayerError> {
        let out =
            crate::host::process::run_bounded(c.env("LC_ALL", "C"), super::TOOL_DEADLINE, 4 << 20)
                .map_err(|e| err(format!("{what}: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    super::mkfs_ext4(root, image, size_mib, label, tree.meta.len() as u64).map_err(err)?;
    let xdir = scratch.join("xattrs");
    std::fs::create_dir_all(&xdir).map_err(|e| err(e.to_string()))?;
    let script = scratch.join("fixup.debugfs");
    std::fs::write(&script, debugfs_script(tree, &xdir)?).map_err(|e| err(e.to_string()))?;
    let errs = run(
        std::process::Command::new(tool("debugfs")?)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(image),
        "debugfs",
    )?;
    // debugfs exits 0 even when a command fails; it says so on stderr.
    if let Some(l) = errs
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        return Err(err(format!("writing the image's metadata: {l}")));
    }
    Ok(())
}

/// Whether the staged tree has an sshd at /usr/sbin or /usr/bin, looked
/// up without following any symlink (a link in the tree names a path of
/// the guest, never of this host).
pub fn has_sshd(root: &Path) -> bool {
    ["usr/sbin/sshd", "usr/bin/sshd"].iter().any(|rel| {
        let mut p = root.to_path_buf();
        let parts: Vec<&str> = rel.split('/').collect();
        parts.iter().enumerate().all(|(i, c)| {
            p.push(c);
            match std::fs::symlink_metadata(&p) {
                Ok(md) if i + 1 < parts.len() => md.is_dir(),
                Ok(md) => md.is_file(),
                Err(_) => false,
            }
        })
    })
}

/// Bytes the staged tree takes (for sizing the file system).
pub fn tree_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            total += md.len().div_ceil(4096) * 4096 + 256;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The largest GNU long-name or PAX record a layer may carry: the tar
/// crate reads such a record whole into memory before the entry it
/// describes, so without this a few KB of gzip could claim gigabytes.
pub const MAX_META_RECORD: u64 = 1 << 20;

/// A pass-through reader that follows the tar stream's 512-byte blocks as
/// the tar crate will (a PAX `size` record overrides the next entry's raw
/// header size, so the guard reads PAX records too) and refuses a
/// long-name (`L`, `K`) or PAX (`x`, `g`) record over [`MAX_META_RECORD`]
/// before any of it is read.
pub(crate) struct TarGuard<R> {
    inner: R,
    header: [u8; 512],
    filled: usize,
    /// Bytes of the current entry's data (padded to blocks) still to pass.
    data_left: u64,
    /// A PAX record being collected: its bytes and its unpadded size.
    pax: Option<(Vec<u8>, u64)>,
    /// The `size` of the last PAX record, for the next real entry.
    pending_size: Option<u64>,
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            header: [0; 512],
            filled: 0,
            data_left: 0,
            pax: None,
            pending_size: None,
        }
    }

    /// A header's size field: octal, or base-256 when the high bit is set.
    fn size(h: &[u8; 512]) -> Option<u64> {
        let f = &h[124..136];
        if f[0] & 0x80 != 0 {
            let mut v: u64 = (f[0] & 0x7f) as u64;
            for &b in &f[1..] {
                v = v.checked_mul(256)?.checked_add(b as u64)?;
            }
            return Some(v);
        }
        let text = std::str::from_utf8(f).ok()?;
        let t = text.trim_matches(|c: char| c == '\0' || c == ' ');
        if t.is_empty() {
            return Some(0);
        }
        u64::from_str_radix(t, 8).ok()
    }

    /// The `size` record of a PAX extended header (`<len> size=<n>\n`),
    /// as the tar crate reads it; a malformed record is refused.
    fn pax_size(data: &[u8]) -> std::io::Result<Option<u64>> {
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "a malformed PAX record");
        let mut rest = data;
        let mut size = None;
        while !rest.is_empty() && rest.iter().any(|&b| b != 0) {
            let sp = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
            let len: usize = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|t| t.parse().ok())
                .filter(|&l| l > sp && l <= rest.len())
                .ok_or_else(bad)?;
            let record = &rest[sp + 1..len];
            let record = record.strip_suffix(b"\n").unwrap_or(record);
            if let Some(v) = record.strip_prefix(b"size=") {
                let v = std::str::from_utf8(v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(bad)?;
                size = Some(v);
            }
            rest = &rest[len..];
        }
        Ok(size)
    }

    fn pass(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.data_left > 0 {
                let n = (self.data_left.min(bytes.len() as u64)) as usize;
                if let Some((buf, want)) = self.pax.as_mut() {
                    let take = (*want as usize).saturating_sub(buf.len()).min(n);
                    buf.extend_from_slice(&bytes[..take]);
                }
                self.data_left -= n as u64;
                bytes = &bytes[n..];
                if self.data_left == 0 {
                    if let Some((buf, _)) = self.pax.take() {
                        self.pending_size = Self::pax_size(&buf)?;
                    }
                }
                continue;
            }
            let n = (512 - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled < 512 {
                continue;
            }
            self.filled = 0;
            if self.header.iter().all(|&b| b == 0) {
                continue;
            }
            let raw = Self::size(&self.header).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a tar header with an unreadable size",
                )
            })?;
            let kind = self.header[156];
            let meta = matches!(kind, b'L' | b'K' | b'x' | b'g');
            if meta && raw > MAX_META_RECORD {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a long-name or PAX record of {raw} bytes (at most {MAX_META_RECORD})"),
                ));
            }
            // The size the tar crate uses: a PAX `size` for the entry the
            // records describe, the raw one for the records themselves.
            let size = if meta {
                raw
            } else {
                self.pending_size.take().unwrap_or(raw)
            };
            if kind == b'x' {
                self.pax = Some((Vec::with_capacity(raw as usize), raw));
                if raw == 0 {
                    self.pax = None;
                    self.pending_size = None;
                }
            }
            self.data_left = size.div_ceil(512).saturating_mul(512);
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pass(&buf[..n])?;
        Ok(n)
    }
}

/// A decompressing reader for a layer of `media_type`.
pub fn decoder<'a>(media_type: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>, LayerError> {
    let m = media_type;
    if m.ends_with("+gzip") || m.ends_with(".tar.gzip") || m.ends_with("tar.gz") {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if m.ends_with("+zstd") || m.ends_with(".tar.zstd") {
        Ok(Box::new(
            zstd::stream::read::Decoder::new(r).map_err(|e| err(format!("zstd: {e}")))?,
        ))
    } else if m.ends_with(".tar") || m.ends_with("layer.v1.tar") || m.ends_with(".diff.tar") {
        Ok(Box::new(r))
    } else {
        Err(err(format!(
            "layer media type {m} is not supported (tar, tar+gzip, tar+zstd are)"
        )))
    }
}

/// The relative paths of the tree, for tests and logs.
pub fn paths(tree: &Tree) -> Vec<&str> {
    tree.meta.keys().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer built with the tar crate: (path, kind, data/target, mode, uid).
    fn layer(entries: &[(&str, char, &str, u32, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, mode, uid) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_uid(*uid);
            h.set_gid(*uid);
            h.set_mtime(0);
            match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
                'f' if path.contains("..") => {
                    // The tar crate refuses to write such a name: a
                    // hostile archive has it in the raw header.
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    let raw = &mut h.as_old_mut().name;
                    raw[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                }
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
                'l' => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                'h' => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                'c' => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_size(0);
                    h.set_device_major(1).unwrap();
                    h.set_device_minor(3).unwrap();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    fn debugfs(image: &Path, cmd: &str) -> String {
        let out = std::process::Command::new(crate::host::system_tool("debugfs").unwrap())
            .args(["-R", cmd])
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_long_name_record_past_the_bound_is_refused_before_it_is_read() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // A GNU long-name record claiming 2 MiB (its data present: the
        // guard refuses on the header, before the tar crate reads it).
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_path("././@LongLink").unwrap();
        h.set_size(2 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend(std::iter::repeat_n(b'a', 2 << 20));
        raw.extend(layer(&[("after", 'f', "x", 0o644, 0)]));
        let e = apply(&raw[..], &root, &mut Tree::default()).unwrap_err();
        assert!(
            e.0.contains("long-name or PAX record of 2097152 bytes"),
            "{}",
            e.0
        );
        // One within the bound is an ordinary long name.
        let dir = "d".repeat(150);
        let name = format!("{dir}/{}", "n".repeat(150));
        let ok = layer(&[(&dir, 'd', "", 0o755, 0), (&name, 'f', "x", 0o644, 0)]);
        let mut tree = Tree::default();
        apply(&ok[..], &root, &mut tree).unwrap();
        assert!(root.join(&name).is_file());
    }

    /// A PAX `size=0` before an entry whose raw header claims 3 blocks:
    /// the tar crate reads the next header at once (an `L` record of 2
    /// MiB), where a guard following raw sizes saw data.
    #[test]
    fn a_pax_size_cannot_hide_a_long_name_record_from_the_guard() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let block = |kind: tar::EntryType, path: &str, size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_path(path).unwrap();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_cksum();
            h.as_bytes().to_vec()
        };
        let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(512) * 512, 0);
        let mut raw = Vec::new();
        let rec = b"10 size=0\n".to_vec();
        raw.extend(block(tar::EntryType::XHeader, "pax", rec.len() as u64));
        raw.extend(&rec);
        pad(&mut raw);
        raw.extend(block(tar::EntryType::Regular, "cover", 1536));
        raw.extend(block(tar::EntryType::GNULongName, "././@LongLink", 2 << 20));
        raw.extend(std::iter::repeat_n(b'a', 2 << 20));
        pad(&mut raw);
        raw.extend(layer(&[("after", 'f', "x", 0o644, 0)]));
        let e = apply(&raw[..], &root, &mut Tree::default()).unwrap_err();
        assert!(
            e.0.contains("long-name or PAX record of 2097152 bytes"),
            "{}",
            e.0
        );
        // PAX records parse as the crate reads them.
        assert_eq!(
            TarGuard::<&[u8]>::pax_size(b"11 size=42\n19 path=some/thing\n").unwrap(),
            Some(42)
        );
        assert_eq!(
            TarGuard::<&[u8]>::pax_size(b"19 path=some/thing\n").unwrap(),
            None
        );
        assert!(TarGuard::<&[u8]>::pax_size(b"99 size=1\n").is_err());
    }

    #[test]
    fn a_tree_of_many_small_files_gets_the_inodes_it_needs() {
        // 64 MiB gets 16,384 inodes by mke2fs's ratio for small file
        // systems: 20,000 files do not fit without -N.
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for i in 0..20_000 {
            std::fs::write(root.join(format!("f{i}")), b"").unwrap();
        }
        let img = d.path().join("x.ext4");
        crate::image::mkfs_ext4(&root, &img, 64, "t", 20_001).unwrap();
        let stat = debugfs(&img, "stat /f19999");
        assert!(stat.contains("Type: regular"), "{stat}");
    }

    #[test]
    fn an_image_that_unpacks_past_the_bound_is_refused_across_layers() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // Earlier layers wrote all but 10 bytes of the budget.
        let mut tree = Tree {
            bytes: MAX_IMAGE_BYTES - 10,
            ..Tree::default()
        };
        apply(
            &layer(&[("a", 'f', "0123456789", 0o644, 0)])[..],
            &root,
            &mut tree,
        )
        .unwrap();
        assert_eq!(tree.bytes, MAX_IMAGE_BYTES);
        let e = apply(&layer(&[("b", 'f', "x", 0o644, 0)])[..], &root, &mut tree).unwrap_err();
        assert!(e.0.contains("unpacks to more than"), "{}", e.0);
        assert!(
            !root.join("b").exists(),
            "nothing of the refused file is written"
        );
        // A PAX `size` record counts, not the raw header's 0.
        let mut tree = Tree {
            bytes: MAX_IMAGE_BYTES - 10,
            ..Tree::default()
        };
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"11"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_path("c").unwrap();
        h.set_cksum();
        b.append(&h, &b"01234567890"[..]).unwrap();
        let e = apply(&b.into_inner().unwrap()[..], &root, &mut tree).unwrap_err();
        assert!(e.0.contains("unpacks to more than"), "{}", e.0);
    }

    #[test]
    fn layers_apply_with_whiteouts_opaque_dirs_links_and_metadata() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut tree = Tree::default();
        let l1 = layer(&[
            ("etc", 'd', "", 0o755, 0),
            ("etc/os-release", 'f', "ID=test\n", 0o644, 0),
            ("etc/gone", 'f', "x", 0o644, 0),
            ("usr/bin", 'd', "", 0o755, 0),
            ("usr/bin/su", 'f', "suid", 0o4755, 0),
            ("bin", 'l', "usr/bin", 0o777, 0),
            ("opt/old", 'd', "", 0o700, 1000),
            ("opt/old/a", 'f', "a", 0o600, 1000),
            ("dev/null", 'c', "", 0o666, 0),
            ("ro", 'd', "", 0o555, 0),
            ("ro/f", 'f', "in a read-only dir", 0o444, 0),
        ]);
        apply(&l1[..], &root, &mut tree).unwrap();
        let l2 = layer(&[
            ("etc/.wh.gone", 'f', "", 0o644, 0),
            ("opt/old/.wh..wh..opq", 'f', "", 0o644, 0),
            ("opt/old/b", 'f', "b", 0o644, 0),
            // Through the symlink: lands in usr/bin.
            ("bin/tool", 'f', "tool", 0o755, 0),
            ("usr/bin/su-link", 'h', "usr/bin/su", 0o4755, 0),
        ]);
        apply(&l2[..], &root, &mut tree).unwrap();
        // A link target longer than a tar header holds (a GNU long link).
        let long = format!("/usr/share/{}", "x".repeat(150));
        apply(
            &layer(&[("etc/long", 'l', &long, 0o777, 0)])[..],
            &root,
            &mut tree,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(root.join("etc/long")).unwrap(),
            std::path::PathBuf::from(&long)
        );
        let p = paths(&tree);
        assert!(!p.contains(&"etc/gone") && !root.join("etc/gone").exists());
        assert!(!p.contains(&"opt/old/a") && p.contains(&"opt/old/b"));
        assert!(
            p.contains(&"usr/bin/tool") && !p.contains(&"bin/tool"),
            "{p:?}"
        );
        assert_eq!(tree.meta["usr/bin/su"].mode, 0o4755);
        assert_eq!(tree.meta["opt/old"].uid, 1000);
        // Hostile: out of the tree, and names debugfs cannot take.
        for bad in [
            layer(&[("../x", 'f', "", 0o644, 0)]),
            layer(&[
                ("evil", 'l', "/", 0o777, 0),
                ("evil/../../x", 'f', "", 0o644, 0),
            ]),
            layer(&[("a\"b", 'f', "", 0o644, 0)]),
            layer(&[(".wh...", 'f', "", 0o644, 0)]),
            layer(&[("etc/.wh.", 'f', "", 0o644, 0)]),
        ] {
            assert!(apply(&bad[..], &root, &mut tree).is_err());
        }
        // A symlink to / is followed inside the tree only.
        let l3 = layer(&[
            ("up", 'l', "/../../..", 0o777, 0),
            ("up/etc/escaped", 'f', "x", 0o644, 0),
        ]);
        apply(&l3[..], &root, &mut tree).unwrap();
        assert!(root.join("etc/escaped").exists());
        assert!(!d.path().join("etc").exists());

        // The image: owners, modes, the device, the hard link.
        let img = d.path().join("root.ext4");
        make_ext4(&root, &tree, &img, 32, "test", d.path()).unwrap();
        let su = debugfs(&img, "stat /usr/bin/su");
        assert!(
            su.contains("Mode:  04755") && su.contains("Links: 2"),
            "{su}"
        );
        let old = debugfs(&img, "stat /opt/old");
        assert!(old.contains("User:  1000"), "{old}");
        let null = debugfs(&img, "stat /dev/null");
        assert!(null.contains("Type: character special"), "{null}");
        let ro = debugfs(&img, "stat /ro");
        assert!(ro.contains("Mode:  0555"), "{ro}");
        assert_eq!(debugfs(&img, "cat /etc/os-release"), "ID=test\n");
        assert!(debugfs(&img, "stat /bin").contains("Type: symlink"));
    }
}
