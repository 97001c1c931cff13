//! `banger-agent --init`: the first process of a banger guest (the
//! initramfs switches root to it). It makes the guest usable before any
//! init system runs — API filesystems, hostname, network, the work disk on
//! `/root`, root's key — starts the agent (and restarts it if it dies),
//! then hands PID 1 to the image's own init. An image without one keeps
//! this process as a minimal init: it reaps orphans and powers off on
//! request (SIGTERM, SIGUSR2, SIGPWR, Ctrl-Alt-Del).

use std::ffi::CString;
use std::path::Path;
use std::time::Duration;

use crate::cmdline::GuestParams;
use crate::setup;

/// Where PID 1 leaves the boot-time setup's problems for the agent.
pub const SETUP_FILE: &str = "/run/banger/setup.json";

/// What PID 1 tells the agent about the boot.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BootReport {
    pub errors: Vec<String>,
    /// `systemd` (or whatever `/sbin/init` is) or `banger`.
    pub init: String,
    /// The readiness unit was installed (`ready.rs`): commands wait for it.
    #[serde(default)]
    pub ready_unit: bool,
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (src_c, target_c, fstype_c, data_c) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: valid NUL-terminated strings for mount(2).
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc < 0 {
        return Err(format!(
            "mounting {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The API filesystems an init system would mount, each unless present.
fn mount_api(errors: &mut Vec<String>) {
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    if !Path::new("/proc/self").exists() {
        if let Err(e) = mount("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, "") {
            errors.push(e);
        }
    }
    let table: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
        ("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, ""),
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=620,ptmxmode=666,gid=5",
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777"),
        ("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=755"),
    ];
    for (src, target, fstype, flags, data) in table {
        if !setup::is_mountpoint(target) {
            if let Err(e) = mount(src, target, fstype, *flags, data) {
                errors.push(e);
            }
        }
    }
}

/// Mounts the work disk (`/dev/vdb`) on `/root`, as the fstab would.
fn mount_work_disk(errors: &mut Vec<String>) {
    if setup::is_mountpoint("/root") || !Path::new("/dev/vdb").exists() {
        return;
    }
    if let Err(e) = mount("/dev/vdb", "/root", "ext4", libc::MS_RELATIME, "") {
        errors.push(e);
    }
}

/// The boot-time setup of a guest: identity, name servers, network, work
/// disk, root's key. Every step runs; failures are collected.
pub fn setup_guest(params: &GuestParams, errors: &mut Vec<String>) {
    let mut step = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            eprintln!("banger-agent: {what}: {e}");
            errors.push(format!("{what}: {e}"));
        }
    };
    let root = Path::new("/");
    if let Some(name) = &params.name {
        step("hostname", setup::set_kernel_hostname(name));
    }
    step("identity files", setup::write_identity(root, params));
    step("resolv.conf", setup::write_resolv(root, params));
    step("network", setup::network(params));
    step("authorized key", setup::write_authorized_key(root, params));
}

fn exec_init(path: &str) -> std::io::Error {
    let prog = CString::new(path).unwrap_or_default();
    let argv = [prog.as_ptr(), std::ptr::null()];
    // SAFETY: a NUL-terminated argv; execv only returns on failure.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    std::io::Error::last_os_error()
}

/// This binary's path in the guest.
fn agent_path() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/local/bin/banger-agent".into())
}

/// Runs the agent (`--serve`) and starts it again whenever it ends.
fn supervise_agent() -> ! {
    let me = agent_path();
    let mut delay = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        match std::process::Command::new(&me).arg("--serve").status() {
            Ok(st) => eprintln!("banger-agent: the agent ended ({st}); starting it again"),
            Err(e) => eprintln!("banger-agent: cannot start the agent: {e}"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            delay = Duration::from_millis(100);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// PID 1 of an image without an init: reaps, and powers off on request.
fn minimal_init() -> ! {
    // SAFETY: signal-mask calls on a set we fill; reboot(2) with CAD off
    // makes Ctrl-Alt-Del a SIGINT to us.
    unsafe {
        libc::reboot(libc::RB_DISABLE_CAD);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGUSR2,
            libc::SIGPWR,
            libc::SIGHUP,
        ] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            match sig {
                libc::SIGCHLD => reap(),
                libc::SIGTERM | libc::SIGINT | libc::SIGUSR2 | libc::SIGPWR => shutdown(),
                _ => {}
            }
        }
    }
}

fn reap() {
    // SAFETY: waitpid on any child, without blocking.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Ends every process, syncs, unmounts what it can and powers off.
fn shutdown() -> ! {
    eprintln!("banger-agent: powering off");
    // SAFETY: sync, signals to every process but us, mount/umount on fixed
    // paths and reboot(2): the power-off sequence of an init.
    unsafe {
        libc::sync();
        libc::kill(-1, libc::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            reap();
            if libc::kill(-1, 0) < 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        libc::kill(-1, libc::SIGKILL);
        reap();
        libc::sync();
        for m in ["/root"] {
            if let Ok(c) = CString::new(m) {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
        let _ = mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "");
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `--init`: never returns.
pub fn run() -> ! {
    let mut errors = Vec::new();
    mount_api(&mut errors);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (params, perrs) = GuestParams::parse(&cmdline);
    errors.extend(perrs);
    mount_work_disk(&mut errors);
    setup_guest(&params, &mut errors);
    let init = ["/sbin/init", "/usr/sbin/init", "/lib/systemd/systemd"]
        .into_iter()
        .find(|p| {
            std::fs::canonicalize(p)
                .ok()
                .is_some_and(|real| Some(real) != std::env::current_exe().ok())
        });
    let init_name = init
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "banger".into());
    // systemd reads runtime units from /run (mounted above) when it
    // starts: the readiness unit tells the agent when the boot can no
    // longer change a command's world.
    let ready_unit = init_name == "systemd"
        && match crate::ready::install_unit(Path::new("/"), &agent_path()) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("readiness unit: {e}"));
                false
            }
        };
    let report = BootReport {
        errors,
        init: init_name,
        ready_unit,
    };
    let _ = std::fs::create_dir_all("/run/banger");
    let _ = std::fs::write(SETUP_FILE, serde_json::to_vec(&report).unwrap_or_default());
    // SAFETY: fork(2) in a single-threaded process; the child only execs
    // and waits.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: a new session for the agent's supervisor.
            unsafe { libc::setsid() };
            supervise_agent()
        }
        pid if pid < 0 => eprintln!("banger-agent: fork: {}", std::io::Error::last_os_error()),
        _ => {}
    }
    if let Some(p) = init {
        let e = exec_init(p);
        eprintln!("banger-agent: cannot start {p}: {e}; staying as a minimal init");
    }
    minimal_init()
}
