//! Per-VM cgroups for VMMs, made and joined by bangerd-root.
//!
//! Every VMM runs in `banger/uid-<owner>/vm-<id>` at the top of each
//! hierarchy that holds the memory, pids and cpu controllers (as
//! Firecracker's jailer does with its `firecracker` group): the per-VM group
//! bounds what one VMM may use (the guest's memory plus the VMM's own, its
//! threads, a CPU weight by its vCPUs) and the owner's group what all of one
//! owner's VMMs may use together. cgroup v2 (unified) and v1 (a hierarchy
//! per controller, as on these hosts) are both handled; the groups that hold
//! processes are leaves, so v2's "no internal processes" rule holds.
//!
//! The child joins its group itself, between fork and exec, before it drops
//! to the owner: the VMM never runs outside it. Groups are removed when
//! their VMM exits, and empty ones are swept at start.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// banger's group at the top of each hierarchy.
pub const TOP: &str = "banger";

/// Where the controllers banger uses are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 at this mount point holds the controllers.
    Unified(PathBuf),
    /// cgroup v1: each controller's mount point (none where absent).
    Legacy {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
}

/// A controller's knobs, as one hierarchy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unified,
    Memory,
    Pids,
    Cpu,
}

/// What a group may use; `None` leaves the parent's bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// cgroup v2's scale, 1–10000 (100 is the default share); v1 gets
    /// `cpu.shares` = weight × 1024 / 100.
    pub cpu_weight: Option<u32>,
}

/// A failure to prepare banger's groups.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct CgroupError {
    what: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

impl Layout {
    /// The running host's layout, or `None` without the memory controller.
    pub fn detect() -> Option<Layout> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let layout = parse_mountinfo(&text)?;
        match &layout {
            Layout::Unified(root) => std::fs::read_to_string(root.join("cgroup.controllers"))
                .ok()
                .filter(|c| c.split_whitespace().any(|c| c == "memory"))
                .map(|_| layout),
            Layout::Legacy { .. } => Some(layout),
        }
    }

    fn hierarchies(&self) -> Vec<(Kind, &Path)> {
        match self {
            Layout::Unified(root) => vec![(Kind::Unified, root.as_path())],
            Layout::Legacy { memory, pids, cpu } => {
                [(Kind::Memory, memory), (Kind::Pids, pids), (Kind::Cpu, cpu)]
                    .into_iter()
                    .filter_map(|(k, p)| p.as_deref().map(|p| (k, p)))
                    .collect()
            }
        }
    }

    /// banger's top group in each hierarchy (what the installed helper's
    /// unit makes writable).
    pub fn top_dirs(&self) -> Vec<PathBuf> {
        self.hierarchies()
            .into_iter()
            .map(|(_, root)| root.join(TOP))
            .collect()
    }

    /// The owner's group in each hierarchy.
    pub fn owner_dirs(&self, owner: u32) -> Vec<PathBuf> {
        self.top_dirs()
            .into_iter()
            .map(|top| top.join(format!("uid-{owner}")))
            .collect()
    }

    /// One VM's group in each hierarchy.
    pub fn vm_dirs(&self, owner: u32, vm_id: &str) -> Vec<PathBuf> {
        self.owner_dirs(owner)
            .into_iter()
            .map(|d| d.join(format!("vm-{vm_id}")))
            .collect()
    }

    /// Makes banger's top group in each hierarchy and (v2) lets the root
    /// and it pass the controllers down, with `cpu_weight` as its CPU
    /// weight. Idempotent; run by the installed helper's unit outside its
    /// sandbox, where the root group is writable.
    pub fn prepare_top(&self, cpu_weight: Option<u32>) -> Result<(), CgroupError> {
        let weight = Limits {
            cpu_weight,
            ..Limits::default()
        };
        for (kind, root) in self.hierarchies() {
            let top = root.join(TOP);
            make_dir(&top)?;
            if kind == Kind::Unified {
                for dir in [root, top.as_path()] {
                    enable_controllers(dir).map_err(fail("enabling controllers in", dir))?;
                }
            }
            set(&top, writes(kind, weight))?;
        }
        Ok(())
    }

    /// [`Layout::prepare_top`], then the owner's group with its limits.
    pub fn prepare_owner(&self, owner: u32, limits: Limits) -> Result<(), CgroupError> {
        self.prepare_top(limits.cpu_weight)?;
        for (kind, root) in self.hierarchies() {
            let mine = root.join(TOP).join(format!("uid-{owner}"));
            make_dir(&mine)?;
            if kind == Kind::Unified {
                enable_controllers(&mine).map_err(fail("enabling controllers in", &mine))?;
            }
            set(&mine, writes(kind, limits))?;
        }
        Ok(())
    }

    /// What the child does to join `vm-<id>` with `limits` (planned before
    /// fork).
    pub fn vm_plan(&self, owner: u32, vm_id: &str, limits: Limits) -> std::io::Result<JoinPlan> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::other("a cgroup path has a NUL"))
        };
        let mut groups = Vec::new();
        for ((kind, _), dir) in self
            .hierarchies()
            .into_iter()
            .zip(self.vm_dirs(owner, vm_id))
        {
            // Only knobs the owner's group has (a controller the host
            // lacks has none): the child's group has the same.
            let owner_dir = dir.parent().unwrap_or(&dir).to_path_buf();
            let files = writes(kind, limits)
                .into_iter()
                .filter(|(f, _)| owner_dir.join(f).exists())
                .map(|(f, v)| Ok((c(&dir.join(f))?, v.into_bytes())))
                .collect::<std::io::Result<Vec<_>>>()?;
            groups.push(JoinGroup {
                procs: c(&dir.join("cgroup.procs"))?,
                dir: c(&dir)?,
                files,
            });
        }
        Ok(JoinPlan { groups })
    }

    /// Removes a VM's groups once its VMM is gone (a group still emptying
    /// is retried for a moment).
    pub fn remove_vm(&self, owner: u32, vm_id: &str) {
        for dir in self.vm_dirs(owner, vm_id) {
            for _ in 0..40 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(25))
                    }
                    _ => break,
                }
            }
        }
    }

    /// Removes the owner's empty VM groups (a group with a process is
    /// refused by the kernel and stays). Returns how many went.
    pub fn sweep(&self, owner: u32) -> usize {
        let mut gone = 0;
        for dir in self.owner_dirs(owner) {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let is_vm = name.to_str().is_some_and(|n| n.starts_with("vm-"));
                if is_vm
                    && e.file_type().is_ok_and(|t| t.is_dir())
                    && std::fs::remove_dir(e.path()).is_ok()
                {
                    gone += 1;
                }
            }
        }
        gone
    }

    /// The group a process is in under banger's top, in the first
    /// hierarchy: `uid-<owner>/vm-<id>`.
    pub fn group_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let (kind, _) = *self.hierarchies().first()?;
        let want = match kind {
            Kind::Unified => "",
            Kind::Memory => "memory",
            Kind::Pids => "pids",
            Kind::Cpu => "cpu",
        };
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if want.is_empty() {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == want)
            };
            hit.then(|| path.strip_prefix(&format!("/{TOP}/")).map(str::to_string))
                .flatten()
        })
    }
}

fn fail(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError { what, path, source }
}

/// Writes the knobs `dir` has (a controller the host lacks has none).
fn set(dir: &Path, knobs: Vec<(&'static str, String)>) -> Result<(), CgroupError> {
    for (file, value) in knobs {
        let path = dir.join(file);
        if path.exists() {
            std::fs::write(&path, value).map_err(fail("writing", &path))?;
        }
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(fail("creating", dir)(e)),
        _ => Ok(()),
    }
}

/// The knob files and values for `limits` in one hierarchy.
fn writes(kind: Kind, l: Limits) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    if let Some(m) = l.memory_bytes {
        match kind {
            Kind::Unified => w.push(("memory.max", m.to_string())),
            Kind::Memory => w.push(("memory.limit_in_bytes", m.to_string())),
            _ => {}
        }
    }
    if let Some(p) = l.pids {
        if matches!(kind, Kind::Unified | Kind::Pids) {
            w.push(("pids.max", p.to_string()));
        }
    }
    if let Some(c) = l.cpu_weight {
        let c = c.clamp(1, 10_000);
        match kind {
            Kind::Unified => w.push(("cpu.weight", c.to_string())),
            Kind::Cpu => w.push(("cpu.shares", (u64::from(c) * 1024 / 100).max(2).to_string())),
            _ => {}
        }
    }
    w
}

/// Lets a v2 group pass memory, pids and cpu to its children (those it
/// has; already-enabled ones are left alone).
fn enable_controllers(dir: &Path) -> std::io::Result<()> {
    let have = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    let on = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    let add: Vec<String> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| have.split_whitespace().any(|h| h == *c))
        .filter(|c| !on.split_whitespace().any(|h| h == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if add.is_empty() {
        return Ok(());
    }
    std::fs::write(dir.join("cgroup.subtree_control"), add.join(" "))
}

/// Reads the cgroup mounts out of `/proc/self/mountinfo`: v1 when a v1
/// hierarchy holds the memory controller (a hybrid host's `unified` mount
/// then holds none), else v2's mount.
pub fn parse_mountinfo(text: &str) -> Option<Layout> {
    let (mut memory, mut pids, mut cpu, mut unified) = (None, None, None, None);
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        // Escaped (spaces and the like): not a place banger writes.
        if point.contains('\\') || !point.starts_with('/') {
            continue;
        }
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next(), r.next(), r.next().unwrap_or_default());
        match fstype {
            Some("cgroup2") => unified = unified.or(Some(PathBuf::from(point))),
            Some("cgroup") => {
                for o in opts.split(',') {
                    let slot = match o {
                        "memory" => &mut memory,
                        "pids" => &mut pids,
                        "cpu" => &mut cpu,
                        _ => continue,
                    };
                    if slot.is_none() {
                        *slot = Some(PathBuf::from(point));
                    }
                }
            }
            _ => {}
        }
    }
    if memory.is_some() {
        return Some(Layout::Legacy { memory, pids, cpu });
    }
    unified.map(Layout::Unified)
}

/// One hierarchy's part of a [`JoinPlan`].
#[derive(Debug)]
struct JoinGroup {
    dir: CString,
    procs: CString,
    files: Vec<(CString, Vec<u8>)>,
}

/// A VM's groups, joined by the VMM's child process before exec.
#[derive(Debug)]
pub struct JoinPlan {
    groups: Vec<JoinGroup>,
}

impl JoinPlan {
    /// In the child, as root: make each group, set its limits, move this
    /// process in. A concurrent sweep may remove a group between the
    /// `mkdir` and the move: that is tried again.
    ///
    /// # Safety
    /// Called between fork and exec: only syscalls on prepared data.
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        for g in &self.groups {
            let mut tries = 0;
            loop {
                tries += 1;
                match join(g) {
                    Ok(()) => break,
                    Err(e)
                        if tries < 4
                            && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// # Safety
/// Between fork and exec: syscalls only.
unsafe fn join(g: &JoinGroup) -> std::io::Result<()> {
    if libc::mkdir(g.dir.as_ptr(), 0o755) < 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
    {
        return Err(std::io::Error::last_os_error());
    }
    for (path, value) in &g.files {
        write_file(path, value)?;
    }
    write_file(&g.procs, b"0")
}

/// # Safety
/// Between fork and exec: syscalls only.
unsafe fn write_file(path: &CString, value: &[u8]) -> std::io::Result<()> {
    let fd = libc::open(
        path.as_ptr(),
        libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
    );
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = libc::write(fd, value.as_ptr() as *const libc::c_void, value.len());
    let res = if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    libc::close(fd);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
";
    const UNIFIED: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn a_hybrid_host_uses_its_v1_controllers_and_a_unified_one_its_v2_mount() {
        let hybrid = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(
            hybrid,
            Layout::Legacy {
                memory: Some("/sys/fs/cgroup/memory".into()),
                pids: Some("/sys/fs/cgroup/pids".into()),
                cpu: Some("/sys/fs/cgroup/cpu,cpuacct".into()),
            }
        );
        assert_eq!(
            hybrid.vm_dirs(1000, "00aa"),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/banger/uid-1000/vm-00aa"),
                PathBuf::from("/sys/fs/cgroup/pids/banger/uid-1000/vm-00aa"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/banger/uid-1000/vm-00aa"),
            ]
        );
        let unified = parse_mountinfo(UNIFIED).unwrap();
        assert_eq!(unified, Layout::Unified("/sys/fs/cgroup".into()));
        assert_eq!(
            unified.top_dirs(),
            vec![PathBuf::from("/sys/fs/cgroup/banger")]
        );
        assert_eq!(
            parse_mountinfo("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn limits_are_written_in_each_hierarchys_own_words() {
        let l = Limits {
            memory_bytes: Some(1 << 30),
            pids: Some(512),
            cpu_weight: Some(200),
        };
        assert_eq!(
            writes(Kind::Unified, l),
            vec![
                ("memory.max", "1073741824".to_string()),
                ("pids.max", "512".to_string()),
                ("cpu.weight", "200".to_string()),
            ]
        );
        assert_eq!(
            writes(Kind::Memory, l),
            vec![("memory.limit_in_bytes", "1073741824".to_string())]
        );
        assert_eq!(writes(Kind::Pids, l), vec![("pids.max", "512".to_string())]);
        assert_eq!(
            writes(Kind::Cpu, l),
            vec![("cpu.shares", "2048".to_string())]
        );
        assert!(writes(Kind::Memory, Limits::default()).is_empty());
    }
}
