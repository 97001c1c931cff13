//! HTTP/1.1 on vsock: one thread per connection, GET only, `Connection: close`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use crate::api::{Healthz, AGENT_PORT};

/// Facts the handlers report.
pub struct AgentState {
    pub setup_errors: Vec<String>,
}

pub fn vsock_listener(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket/bind/listen calls on a fd we own.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as u16;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, 64) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(owned)
    }
}

/// [`vsock_listener`], retried for a minute: early in boot the vsock
/// transport may not be registered yet, and an agent that exits here is
/// one systemd may stop restarting.
pub fn vsock_listener_retry(port: u32) -> io::Result<OwnedFd> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match vsock_listener(port) {
            Ok(fd) => return Ok(fd),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("banger-agent: listening on vsock port {port}: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts the next connection. Errors that concern one connection only
/// (the peer went away before we took it, a transient shortage) are logged
/// and skipped: only a broken listener ends the loop.
pub fn accept(fd: RawFd) -> io::Result<std::fs::File> {
    loop {
        // SAFETY: accept4 on our listening fd; null address is allowed.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c >= 0 {
            // SAFETY: c is a fresh fd we own.
            return Ok(unsafe { std::fs::File::from_raw_fd(c) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(
                libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPROTO
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM,
            ) => {
                eprintln!("banger-agent: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            _ => return Err(e),
        }
    }
}

fn respond(mut conn: &std::fs::File, status: &str, body: &str) -> io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// Health facts, read now.
pub fn healthz(state: &AgentState) -> Healthz {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Healthz {
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        uptime_s: read("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0),
        hostname: read("/proc/sys/kernel/hostname"),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        setup_errors: state.setup_errors.clone(),
    }
}

fn handle(conn: std::fs::File, state: &AgentState) -> io::Result<()> {
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain headers.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/healthz") => {
            let body = serde_json::to_string(&healthz(state)).unwrap_or_default();
            respond(&conn, "200 OK", &body)
        }
        ("GET", "/ports") => {
            let body = serde_json::to_string(&crate::ports::listening(Path::new("/proc")))
                .unwrap_or_default();
            respond(&conn, "200 OK", &body)
        }
        ("GET", "/hostkeys") => {
            let keys = host_keys(Path::new("/etc/ssh"));
            if keys.is_empty() {
                respond(&conn, "404 Not Found", "{\"error\":\"no host keys yet\"}")
            } else {
                respond(
                    &conn,
                    "200 OK",
                    &serde_json::to_string(&keys).unwrap_or_default(),
                )
            }
        }
        ("POST", "/sync") => {
            // SAFETY: sync(2) has no arguments and cannot fail.
            unsafe { libc::sync() };
            respond(&conn, "200 OK", &ack("synced"))
        }
        ("POST", "/poweroff") => {
            // SAFETY: as above; data reaches the disks before we answer.
            unsafe { libc::sync() };
            let r = std::process::Command::new("systemctl")
                .args(["--no-block", "poweroff"])
                .status();
            match r {
                Ok(s) if s.success() => respond(&conn, "200 OK", &ack("synced; powering off")),
                _ => {
                    // No systemd to ask: power off directly (disks are synced).
                    respond(&conn, "200 OK", &ack("synced; powering off now"))?;
                    // SAFETY: reboot(2) with the power-off command.
                    unsafe { libc::reboot(libc::RB_POWER_OFF) };
                    Ok(())
                }
            }
        }
        _ => respond(&conn, "404 Not Found", "{\"error\":\"no such endpoint\"}"),
    }
}

fn ack(detail: &str) -> String {
    serde_json::to_string(&crate::api::Ack {
        ok: true,
        detail: detail.into(),
    })
    .unwrap_or_default()
}

/// Public host keys in `dir` (`ssh_host_*_key.pub`).
pub fn host_keys(dir: &Path) -> Vec<crate::api::HostKey> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("ssh_host_") && name.ends_with("_key.pub")) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            let mut f = text.split_whitespace();
            if let (Some(a), Some(k)) = (f.next(), f.next()) {
                out.push(crate::api::HostKey {
                    algorithm: a.into(),
                    key: k.into(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.algorithm.cmp(&b.algorithm));
    out
}

/// Serves the exec fast path forever on [`crate::exec::EXEC_PORT`].
pub fn serve_exec() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let listener = vsock_listener_retry(crate::exec::EXEC_PORT)?;
    loop {
        let conn = accept(listener.as_raw_fd())?;
        std::thread::spawn(move || {
            if let Err(e) = crate::exec::server::handle(conn) {
                eprintln!("banger-agent: exec: {e}");
            }
        });
    }
}

/// Serves forever on [`AGENT_PORT`].
pub fn serve(state: AgentState) -> io::Result<()> {
    let listener = vsock_listener_retry(AGENT_PORT)?;
    let state = Arc::new(state);
    use std::os::fd::AsRawFd;
    loop {
        let conn = accept(listener.as_raw_fd())?;
        let st = state.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle(conn, &st) {
                eprintln!("banger-agent: connection: {e}");
            }
        });
    }
}
