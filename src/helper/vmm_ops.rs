//! Launching and signalling VMM processes for the owner.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};

use crate::domain::{Signal, VmmKind};
use crate::host::cgroup::{Layout, Limits};
use crate::protocol::helper::{LaunchSpec, VmmProcess};
use crate::protocol::RpcError;

fn is_vm_id(s: &str) -> bool {
    s.len() == 16
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

fn clean_abs(p: &Path) -> bool {
    p.is_absolute()
        && p.components().all(|c| !matches!(c, Component::ParentDir))
        && !p.as_os_str().as_bytes().contains(&b'\n')
}

/// The VM id whose control socket appears in `args` under `runtime_dir/vms`.
pub fn vm_of_cmdline(args: &[String], runtime_dir: &Path) -> Option<String> {
    let vms = runtime_dir.join("vms");
    let candidates = args.iter().flat_map(|a| {
        // `-qmp unix:<path>,server=on,...`, `--api-sock <path>`, `--api-sock=<path>`.
        let a = a.strip_prefix("--api-sock=").unwrap_or(a);
        let a = a.strip_prefix("unix:").unwrap_or(a);
        a.split(',').next().map(str::to_string)
    });
    for c in candidates {
        let p = Path::new(&c);
        if let Ok(rest) = p.strip_prefix(&vms) {
            let mut comps = rest.components();
            if let (Some(Component::Normal(id)), Some(Component::Normal(file)), None) =
                (comps.next(), comps.next(), comps.next())
            {
                let id = id.to_string_lossy();
                let file = file.to_string_lossy();
                if is_vm_id(&id) && (file == "qmp.sock" || file == "fc.sock") {
                    return Some(id.into_owned());
                }
            }
        }
    }
    None
}

fn proc_args(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

fn proc_uid(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Proves `pid` is one of the owner's banger VMMs: owned by `owner` and its
/// control socket under `runtime_dir/vms/` (or in bangerd-root's cgroup).
pub fn banger_vmm(pid: u32, owner: u32, runtime_dir: &Path) -> Option<String> {
    if pid <= 1 || pid == std::process::id() || !crate::host::process::pid_alive(pid) {
        return None;
    }
    if proc_uid(pid)? != owner {
        return None;
    }
    vm_of_cmdline(&proc_args(pid)?, runtime_dir)
}

/// Every banger VMM of the owner.
pub fn list(owner: u32, runtime_dir: &Path) -> Vec<VmmProcess> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            banger_vmm(pid, owner, runtime_dir).map(|vm_id| VmmProcess { pid, vm_id })
        })
        .collect()
}

/// Sends an allowlisted signal to a proven banger VMM.
pub fn signal(pid: u32, sig: Signal, owner: u32, runtime_dir: &Path) -> Result<(), RpcError> {
    // Pin the process first, then prove it is ours, then signal through the
    // pin: a pid that is recycled between the check and the signal cannot
    // receive it.
    let pidfd = crate::host::process::pidfd_open(pid).map_err(|e| {
        RpcError::bad_request(format!("pid {pid} is not running ({e}); nothing to signal"))
    })?;
    if banger_vmm(pid, owner, runtime_dir).is_none() {
        return Err(RpcError::bad_request(format!(
            "pid {pid} is not a banger VMM of uid {owner}; refusing to signal it"
        )));
    }
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig.number(),
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(RpcError::failed(format!("signal {sig} to {pid}: {e}")));
    }
    Ok(())
}

fn refuse(m: impl Into<String>) -> RpcError {
    RpcError::bad_request(m)
}

/// The descriptor number a QEMU child finds its tap queue on (high, so it
/// never meets the ones `Command` uses).
pub const TAP_FD: i32 = 100;

/// Opens a queue of the owner's tap `name` (as root: the owner may have no
/// access to /dev/net/tun). Refuses a tap of another uid (as `ip` reports
/// it, the same check GuardTap makes).
pub fn open_tap(name: &str, owner: u32) -> Result<std::os::fd::OwnedFd, RpcError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if !crate::host::net::is_banger_tap(name) || name.len() >= libc::IFNAMSIZ {
        return Err(refuse(format!("{name:?} is not a banger tap")));
    }
    crate::host::net::owned_tap(&crate::host::net::IpCommand, name, owner)
        .map_err(|e| refuse(format!("tap {name}: {e}")))?;
    // SAFETY: open(2) of a constant path; the fd is owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(RpcError::failed(format!("opening /dev/net/tun: {e}")));
    }
    // SAFETY: fd was just opened and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    for (d, b) in req.name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads an ifreq we own, for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(RpcError::failed(format!("attaching to tap {name}: {e}")));
    }
    Ok(fd)
}

/// Refuses a VM larger than the host: more vCPUs than it has CPUs, more
/// memory than it has.
pub fn fits(vcpu: u32, memory_mib: u32, host: crate::config::HostFacts) -> Result<(), RpcError> {
    if host.cpus > 0 && vcpu > host.cpus {
        return Err(refuse(format!(
            "{vcpu} vCPUs is more than this host's {} CPUs",
            host.cpus
        )));
    }
    let host_mib = host.memory_bytes >> 20;
    if host_mib > 0 && u64::from(memory_mib) > host_mib {
        return Err(refuse(format!(
            "{memory_mib} MiB of memory is more than this host's {host_mib} MiB"
        )));
    }
    Ok(())
}

/// What a VMM may use beyond its guest's memory (its own code, devices,
/// buffers; TCG's translation cache is added to this).
const VMM_OVERHEAD_MIB: u64 = 512;
/// QEMU's translation cache when `tb-size` is not given (TCG, 64-bit host).
const QEMU_DEFAULT_TB_MIB: u64 = 1024;
/// Threads and processes one VMM may have.
const VMM_PIDS: u64 = 1024;
/// ... and all of one owner's VMMs together.
const OWNER_PIDS: u64 = 65_536;

/// The owner's group: all its VMMs together leave the host a tenth of its
/// memory (at least 512 MiB); CPU as [`group_cpu_weight`].
pub fn owner_limits(host: crate::config::HostFacts) -> Limits {
    let reserve = (host.memory_bytes / 10).max(512 << 20);
    Limits {
        memory_bytes: (host.memory_bytes > reserve).then(|| host.memory_bytes - reserve),
        pids: Some(OWNER_PIDS),
        cpu_weight: group_cpu_weight(host.cpus),
    }
}

/// The CPU weight of banger's and the owner's groups: a default share per
/// host CPU. A group competes with the host's other processes as one: at
/// the default weight all VMMs together would get what one process gets
/// (VMMs in no group competed thread by thread).
pub fn group_cpu_weight(cpus: u32) -> Option<u32> {
    Some(100 * cpus.max(1))
}

/// One VMM's group: QEMU's guest memory, its translation cache and its own
/// overhead, and a CPU weight by vCPUs. Firecracker gets its memory and
/// vCPUs over its API later: only the thread bound applies at launch.
pub fn vm_limits(spec: &LaunchSpec) -> Limits {
    match (&spec.qemu, spec.kind) {
        (Some(m), VmmKind::Qemu) => {
            let tb = match (m.kvm, m.tcg_tb_mib) {
                (true, _) => 0,
                (false, 0) => QEMU_DEFAULT_TB_MIB,
                (false, n) => u64::from(n),
            };
            Limits {
                memory_bytes: Some((u64::from(m.memory_mib) + tb + VMM_OVERHEAD_MIB) << 20),
                pids: Some(VMM_PIDS),
                cpu_weight: Some(100 * m.vcpu.max(1)),
            }
        }
        _ => Limits {
            pids: Some(VMM_PIDS),
            ..Limits::default()
        },
    }
}

/// Makes the owner's cgroup for VMMs and sweeps empty VM groups; `None`
/// (VMMs run without per-VM groups, said in the log) where the host has no
/// writable memory controller.
pub fn prepare_cgroups(owner: u32) -> Option<std::sync::Arc<Layout>> {
    let Some(layout) = Layout::detect() else {
        tracing::warn!("no cgroup memory controller here: VMMs run without per-VM cgroups");
        return None;
    };
    match layout.prepare_owner(owner, owner_limits(crate::config::HostFacts::probe())) {
        Ok(()) => {
            let swept = layout.sweep(owner);
            tracing::info!(groups = ?layout.owner_dirs(owner), swept, "VMM cgroups ready");
            Some(std::sync::Arc::new(layout))
        }
        Err(e) => {
            tracing::warn!("VMMs run without per-VM cgroups: {e}");
            None
        }
    }
}

/// Checks a launch request and returns (binary, argv).
/// The most directories a VMM reads outside its VM's own (kernel, initrd,
/// and a snapshot chain's).
pub const MAX_READS: usize = 16;

pub fn plan(spec: &LaunchSpec, runtime_dir: &Path) -> Result<(PathBuf, Vec<String>), RpcError> {
    if !is_vm_id(&spec.vm_id) {
        return Err(refuse(format!("bad vm id {:?}", spec.vm_id)));
    }
    let dir = runtime_dir.join("vms").join(&spec.vm_id);
    let want = match spec.kind {
        VmmKind::Qemu => dir.join("qmp.sock"),
        VmmKind::Firecracker => dir.join("fc.sock"),
    };
    if spec.control_socket != want {
        return Err(refuse(format!("control socket must be {}", want.display())));
    }
    if !clean_abs(&spec.log) {
        return Err(refuse("log path must be absolute"));
    }
    if spec.reads.len() > MAX_READS || !spec.reads.iter().all(|p| clean_abs(p)) {
        return Err(refuse(format!(
            "at most {MAX_READS} directories to read, each absolute, without '..'"
        )));
    }
    match spec.kind {
        VmmKind::Qemu => {
            let m = spec
                .qemu
                .as_ref()
                .ok_or_else(|| refuse("a QEMU launch needs its machine"))?;
            if !(1..=64).contains(&m.vcpu)
                || !(128..=1 << 20).contains(&m.memory_mib)
                || m.tcg_tb_mib > 1024
            {
                return Err(refuse("vcpu, memory or translation cache out of range"));
            }
            // The host's own size, whatever the daemon (the owner's) checked.
            fits(m.vcpu, m.memory_mib, crate::config::HostFacts::probe())?;
            let paths = [
                Some(&m.kernel),
                m.initrd.as_ref(),
                Some(&m.serial_log),
                m.agent_socket.as_ref(),
            ];
            if !paths.into_iter().flatten().all(|p| clean_abs(p))
                || !m.disks.iter().all(|(p, _)| clean_abs(p))
            {
                return Err(refuse("every path must be absolute, without '..'"));
            }
            if !m.disks.iter().all(|(_, f)| f == "raw" || f == "qcow2") {
                return Err(refuse("disk formats are raw or qcow2"));
            }
            if m.agent_socket
                .as_ref()
                .is_some_and(|p| *p != dir.join("agent.sock"))
            {
                return Err(refuse(format!(
                    "the agent socket must be {}",
                    dir.join("agent.sock").display()
                )));
            }
            if let Some(t) = &m.tap {
                if !crate::host::net::is_banger_tap(t) {
                    return Err(refuse(format!("{t:?} is not a banger tap")));
                }
            }
            if let Some(mac) = &m.mac {
                let ok = mac.len() == 17
                    && mac
                        .split(':')
                        .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
                if !ok {
                    return Err(refuse(format!("bad MAC {mac:?}")));
                }
            }
            if m.cmdline.contains('\n') || m.cmdline.len() > 2048 {
                return Err(refuse("bad kernel command line"));
            }
            let bin = match &spec.binary {
                Some(b) => b.clone(),
                None => crate::host::system_tool("qemu-system-x86_64").ok_or_else(|| {
                    RpcError::failed("qemu-system-x86_64 is not installed; install qemu-system-x86")
                })?,
            };
            let bin = crate::vmm::firecracker::check_root_owned(&bin).map_err(|e| {
                RpcError::failed(format!(
                    "{e}; bangerd-root runs only a root-owned VMM nobody else can write"
                ))
            })?;
            let tap_fd = (m.tap.is_some() && nix::unistd::geteuid().is_root()).then_some(TAP_FD);
            Ok((
                bin,
                crate::vmm::qemu::argv(m, Some(&spec.control_socket), tap_fd),
            ))
        }
        VmmKind::Firecracker => {
            let bin = match &spec.binary {
                // Checked, never run here: a probe (`--version`) would run
                // the owner's choice of root-owned program as root. The VMM
                // itself runs as the owner.
                Some(b) => crate::vmm::firecracker::check_root_owned(b).map_err(|e| {
                    RpcError::failed(format!(
                        "{e}; bangerd-root runs only a root-owned VMM nobody else can write"
                    ))
                })?,
                None => crate::vmm::firecracker::binary().ok_or_else(|| {
                    RpcError::failed("no usable firecracker (a root-owned, non-writable binary in /usr/local/bin or /usr/bin)")
                })?,
            };
            Ok((
                bin,
                vec![
                    "--api-sock".into(),
                    spec.control_socket.display().to_string(),
                    "--id".into(),
                    spec.vm_id.clone(),
                ],
            ))
        }
    }
}

/// The VMM's view of the files: the owner's home and banger's runtime
/// directory covered, and bound back only the VM's own directories
/// (read-write) and what it reads besides (read-only): never banger's
/// store, SSH key or other VMs' disks. Planned before fork.
fn mount_plan(
    spec: &LaunchSpec,
    owner: (u32, u32),
    runtime_dir: &Path,
) -> Result<super::vmm_ns::MountPlan, RpcError> {
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner.0))
        .ok()
        .flatten()
        .map(|u| u.dir);
    let mut files: Vec<&Path> = vec![&spec.log, &spec.control_socket];
    let mut reads: Vec<&Path> = spec.reads.iter().map(PathBuf::as_path).collect();
    if let Some(m) = &spec.qemu {
        files.push(&m.serial_log);
        files.extend(m.agent_socket.as_deref());
        files.extend(m.disks.iter().map(|(d, _)| d.as_path()));
        reads.extend(
            [Some(&m.kernel), m.initrd.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|p| p.parent()),
        );
    }
    let keep: Vec<(&Path, bool)> = files
        .iter()
        .filter_map(|f| f.parent())
        .map(|d| (d, false))
        .chain(reads.into_iter().map(|d| (d, true)))
        .collect();
    let own = runtime_dir.join("vms").join(&spec.vm_id);
    super::vmm_ns::plan(&keep, home.as_deref(), Some((runtime_dir, &own)), owner)
        .map_err(|e| RpcError::failed(format!("planning the VMM's mounts: {e}")))
}

/// Starts the VMM as `owner` in its own session, its output appended to the
/// log (opened after dropping privileges). Returns the pid; a thread reaps it.
pub fn launch(
    spec: &LaunchSpec,
    owner: u32,
    owner_gid: u32,
    runtime_dir: &Path,
    cgroups: Option<std::sync::Arc<Layout>>,
) -> Result<u32, RpcError> {
    let (bin, argv) = plan(spec, runtime_dir)?;
    // The VM's own cgroup, joined by the child before it drops to the owner.
    let join = match &cgroups {
        Some(l) if nix::unistd::geteuid().is_root() => Some(
            l.vm_plan(owner, &spec.vm_id, vm_limits(spec))
                .map_err(|e| RpcError::failed(format!("planning the VMM's cgroup: {e}")))?,
        ),
        _ => None,
    };
    let tap = match (&spec.qemu, spec.kind) {
        (Some(m), VmmKind::Qemu) if nix::unistd::geteuid().is_root() => {
            m.tap.as_deref().map(|t| open_tap(t, owner)).transpose()?
        }
        _ => None,
    };
    let tap_raw = tap.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let log = CString::new(spec.log.as_os_str().as_bytes()).map_err(|_| refuse("bad log path"))?;
    // The owner's own supplementary groups (e.g. `kvm` for /dev/kvm), never
    // ours; looked up before fork.
    let groups: Vec<libc::gid_t> = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
        .ok()
        .flatten()
        .and_then(|u| CString::new(u.name).ok())
        .and_then(|name| {
            nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(owner_gid)).ok()
        })
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|| vec![owner_gid]);
    // Only root switches identity (a helper run as the owner for tests is
    // the owner already).
    let as_root = nix::unistd::geteuid().is_root();
    let mounts = if as_root {
        Some(mount_plan(spec, (owner, owner_gid), runtime_dir)?)
    } else {
        None
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(&argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .current_dir("/");
    // SAFETY: setsid, unshare, mount, mkdir, setgroups, setgid, setuid,
    // open, write, dup2 and close are async-signal-safe; the C strings, fds,
    // cgroup writes and the group list were built before fork. The log is opened after the switch to the owner.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(j) = &join {
                j.apply()?;
            }
            // The owner's groups first: the mount plan opens what it binds
            // with the owner's rights.
            if as_root && libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(m) = &mounts {
                m.apply()?;
            }
            if as_root && (libc::setgid(owner_gid) < 0 || libc::setuid(owner) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(
                log.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_NOFOLLOW,
                0o644,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            libc::close(fd);
            // The tap queue, without close-on-exec, where argv says.
            if let Some(t) = tap_raw {
                if libc::dup2(t, TAP_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The child holds its own copy now.
    drop(tap);
    let id = spec.vm_id.clone();
    let mut child = spawned.map_err(|e| {
        if let Some(l) = &cgroups {
            l.remove_vm(owner, &id);
        }
        RpcError::failed(format!("starting {}: {e}", bin.display()))
    })?;
    let pid = child.id();
    std::thread::spawn(move || {
        if let Ok(st) = child.wait() {
            tracing::info!(pid, vm_id = %id, "VMM exited: {st}");
        }
        if let Some(l) = &cgroups {
            l.remove_vm(owner, &id);
        }
    });
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sockets_identify_the_vm() {
        let rt = Path::new("/run/user/1000/banger");
        let q = vec![
            "qemu".into(),
            "-qmp".into(),
            "unix:/run/user/1000/banger/vms/0123456789abcdef/qmp.sock,server=on,wait=off".into(),
        ];
        assert_eq!(vm_of_cmdline(&q, rt).as_deref(), Some("0123456789abcdef"));
        let f = vec![
            "firecracker".into(),
            "--api-sock".into(),
            "/run/user/1000/banger/vms/0123456789abcdef/fc.sock".into(),
        ];
        assert_eq!(vm_of_cmdline(&f, rt).as_deref(), Some("0123456789abcdef"));
        let f2 = vec![
            "firecracker".into(),
            "--api-sock=/run/user/1000/banger/vms/0123456789abcdef/fc.sock".into(),
        ];
        assert!(vm_of_cmdline(&f2, rt).is_some());
        for bad in [
            "/run/user/1000/banger/vms/0123456789abcdef/../x/qmp.sock",
            "/run/user/1001/banger/vms/0123456789abcdef/qmp.sock",
            "/run/user/1000/banger/vms/NOTHEX/qmp.sock",
            "/tmp/qmp.sock",
        ] {
            let a = vec!["x".into(), "--api-sock".into(), bad.into()];
            assert_eq!(vm_of_cmdline(&a, rt), None, "{bad}");
        }
    }

    #[test]
    fn this_process_is_not_a_vmm() {
        assert!(banger_vmm(std::process::id(), 0, Path::new("/run/banger")).is_none());
        assert!(banger_vmm(1, 0, Path::new("/run/banger")).is_none());
        assert!(signal(1, Signal::Kill, 0, Path::new("/run/banger")).is_err());
    }

    #[test]
    fn launch_plans_are_validated() {
        let rt = Path::new("/run/banger");
        let mut spec = LaunchSpec {
            vm_id: "0123456789abcdef".into(),
            kind: VmmKind::Qemu,
            qemu: None,
            control_socket: rt.join("vms/0123456789abcdef/qmp.sock"),
            log: "/var/lib/banger/vms/0123456789abcdef/vmm.log".into(),
            binary: None,
            reads: vec![],
        };
        assert!(plan(&spec, rt).is_err(), "no machine");
        spec.control_socket = "/etc/qmp.sock".into();
        assert!(plan(&spec, rt).is_err());
        spec.vm_id = "../../etc".into();
        assert!(plan(&spec, rt).is_err());
    }

    #[test]
    fn a_configured_vmm_binary_runs_only_when_root_owns_it_and_nobody_else_writes_it() {
        use crate::protocol::helper::QemuMachine;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let rt = Path::new("/run/banger");
        let bin = d.path().join("qemu-system-x86_64");
        std::fs::copy("/bin/true", &bin).unwrap();
        let spec = |b: &Path| LaunchSpec {
            vm_id: "0123456789abcdef".into(),
            kind: VmmKind::Qemu,
            qemu: Some(QemuMachine {
                kvm: false,
                vcpu: 1,
                memory_mib: 256,
                kernel: "/k/vmlinux".into(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
                disks: vec![],
                tap: None,
                mac: None,
                agent_socket: None,
                incoming: false,
                tcg_tb_mib: 64,
                serial_log: "/v/serial.log".into(),
            }),
            control_socket: rt.join("vms/0123456789abcdef/qmp.sock"),
            log: "/v/vmm.log".into(),
            binary: Some(b.to_path_buf()),
            reads: vec![],
        };
        let owner = std::fs::metadata(&bin).unwrap().uid();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = plan(&spec(&bin), rt).unwrap_err().message;
        assert!(e.contains("writable") || e.contains("not root"), "{e}");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        match plan(&spec(&bin), rt) {
            Ok((b, _)) => {
                assert_eq!(owner, 0, "accepted only when root owns it");
                assert_eq!(b, std::fs::canonicalize(&bin).unwrap());
            }
            Err(e) => assert_ne!(owner, 0, "{}", e.message),
        }
    }

    #[test]
    fn the_helper_refuses_a_vm_larger_than_the_host_whatever_the_daemon_said() {
        let host = crate::config::HostFacts {
            cpus: 2,
            memory_bytes: 4 << 30,
        };
        fits(2, 4096, host).unwrap();
        let e = fits(3, 1024, host).unwrap_err();
        assert_eq!(e.code, crate::protocol::ErrorCode::BadRequest);
        assert!(e.message.contains("2 CPUs"), "{}", e.message);
        let e = fits(1, 200 << 10, host).unwrap_err();
        assert!(e.message.contains("4096 MiB"), "{}", e.message);
    }

    #[test]
    fn a_vmm_binary_is_checked_without_running_it_and_its_directories_too() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return; // root-owned files need root; the integration suite runs as root
        }
        let d = tempfile::tempdir().unwrap();
        let rt = Path::new("/run/banger");
        let marker = d.path().join("ran");
        let bin = d.path().join("firecracker");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\ntouch {}\necho Firecracker v1.12.1\n",
                marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = LaunchSpec {
            vm_id: "0123456789abcdef".into(),
            kind: VmmKind::Firecracker,
            qemu: None,
            control_socket: rt.join("vms/0123456789abcdef/fc.sock"),
            log: "/v/vmm.log".into(),
            binary: Some(bin.clone()),
            reads: vec![],
        };
        let (b, _) = plan(&spec, rt).unwrap();
        assert_eq!(b, std::fs::canonicalize(&bin).unwrap());
        assert!(!marker.exists(), "the helper ran the binary as root");
        // In a directory others may write (not sticky): refused.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = plan(&spec, rt).unwrap_err().message;
        assert!(e.contains("world-writable"), "{e}");
        // Sticky, like /tmp: only the file's owner (root) may rename it.
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        plan(&spec, rt).unwrap();
        assert!(!marker.exists());
    }
}
