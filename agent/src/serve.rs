//! The agent's service: sessions over its channels (the virtio-serial port
//! on QEMU, vsock connections on Firecracker) and the requests on their
//! streams.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::api::{Ack, Healthz, HostKey};
use crate::channel::{self, Frame, FrameReader, SessionEnd};
use crate::proto::{self, Pong, Request};

/// Facts the handlers report.
pub struct AgentState {
    pub setup_errors: Vec<String>,
    pub init: String,
    /// How readiness is known (`ready.rs`).
    pub ready: crate::ready::Hook,
    /// A restored clone's new SSH host key (`identity.rs`).
    pub host_keys: Arc<crate::identity::HostKeys>,
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
        protocol: proto::VERSION,
        init: state.init.clone(),
    }
}

/// Public host keys in `dir` (`ssh_host_*_key.pub`).
pub fn host_keys(dir: &Path) -> Vec<HostKey> {
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
                out.push(HostKey {
                    algorithm: a.into(),
                    key: k.into(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.algorithm.cmp(&b.algorithm));
    out
}

/// Powers the guest off through whatever runs as PID 1.
pub fn poweroff() {
    // SAFETY: sync(2) has no arguments; data reaches the disks first.
    unsafe { libc::sync() };
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    // SAFETY: signals to PID 1, or reboot(2) as the last resort.
    unsafe {
        match init.trim() {
            // systemd: SIGRTMIN+4 starts poweroff.target.
            "systemd" => {
                libc::kill(1, libc::SIGRTMIN() + 4);
            }
            // banger's own init powers off on SIGUSR2.
            "banger-agent" => {
                libc::kill(1, libc::SIGUSR2);
            }
            _ => {
                libc::reboot(libc::RB_POWER_OFF);
            }
        }
    }
}

async fn respond<S: AsyncWrite + Unpin, T: serde::Serialize>(s: &mut S, v: Result<T, String>) {
    let _ = proto::write_json(s, proto::RESPONSE, &v).await;
    let _ = s.shutdown().await;
}

/// Serves one stream the host opened.
pub async fn handle<S>(mut s: S, state: Arc<AgentState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = match tokio::time::timeout(Duration::from_secs(30), proto::read_msg(&mut s, 64 << 10))
        .await
    {
        Ok(Ok(Some((proto::REQUEST, d)))) => serde_json::from_slice::<Request>(&d),
        _ => return,
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => return respond::<_, ()>(&mut s, Err(format!("bad request: {e}"))).await,
    };
    match req {
        Request::Ping => {
            respond(
                &mut s,
                Ok(Pong {
                    version: proto::VERSION,
                }),
            )
            .await
        }
        Request::Health => respond(&mut s, Ok(healthz(&state))).await,
        Request::Ports => {
            let ports = tokio::task::spawn_blocking(|| crate::ports::listening(Path::new("/proc")))
                .await
                .map_err(|e| e.to_string());
            respond(&mut s, ports).await
        }
        Request::HostKeys => respond(&mut s, Ok(host_keys(Path::new("/etc/ssh")))).await,
        Request::Sync => {
            tokio::task::spawn_blocking(|| {
                // SAFETY: sync(2) has no arguments and cannot fail.
                unsafe { libc::sync() }
            })
            .await
            .ok();
            respond(
                &mut s,
                Ok(Ack {
                    ok: true,
                    detail: "synced".into(),
                }),
            )
            .await
        }
        Request::Poweroff => {
            respond(
                &mut s,
                Ok(Ack {
                    ok: true,
                    detail: "synced; powering off".into(),
                }),
            )
            .await;
            tokio::task::spawn_blocking(poweroff).await.ok();
        }
        Request::Exec(r) => crate::exec::serve(s, r).await,
        Request::Dns { servers } => {
            let r = crate::setup::write_nameservers(Path::new("/"), &servers).map(|()| Ack {
                ok: true,
                detail: format!("{} name servers", servers.len().min(3)),
            });
            respond(&mut s, r).await
        }
        Request::Reidentify(id) => {
            let keys = state.host_keys.clone();
            let ack = tokio::task::spawn_blocking(move || crate::identity::reidentify(&id, &keys))
                .await
                .map_err(|e| e.to_string());
            respond(&mut s, ack).await
        }
        Request::Ready {
            settled,
            wait_ms,
            ssh,
        } => {
            // Bounded: a host asking for hours gets ten minutes.
            let wait = Duration::from_millis(wait_ms.min(600_000));
            let keys = ssh.then_some(&*state.host_keys);
            let r = crate::ready::wait(Path::new("/"), state.ready, settled, keys, wait).await;
            respond(&mut s, Ok::<_, String>(r)).await
        }
        Request::Stats => {
            let st =
                tokio::task::spawn_blocking(|| guest_stats(Path::new("/proc"), &["/", "/root"]))
                    .await
                    .map_err(|e| e.to_string());
            respond(&mut s, st).await
        }
    }
}

/// Load, memory, process count and disk use, read now.
pub fn guest_stats(proc_root: &Path, mounts: &[&str]) -> crate::api::GuestStats {
    let read = |f: &str| std::fs::read_to_string(proc_root.join(f)).unwrap_or_default();
    let load: Vec<f64> = read("loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    let meminfo = read("meminfo");
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let processes = std::fs::read_dir(proc_root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as u32
        })
        .unwrap_or(0);
    let disks = mounts
        .iter()
        .filter_map(|m| {
            let path = std::ffi::CString::new(*m).ok()?;
            // SAFETY: statvfs fills the zeroed struct we pass.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
                return None;
            }
            let frag = st.f_frsize;
            let total = st.f_blocks * frag;
            let free = st.f_bfree * frag;
            Some(crate::api::DiskUse {
                mount: m.to_string(),
                total_bytes: total,
                used_bytes: total.saturating_sub(free),
            })
        })
        .collect();
    crate::api::GuestStats {
        load: [
            load.first().copied().unwrap_or(0.0),
            load.get(1).copied().unwrap_or(0.0),
            load.get(2).copied().unwrap_or(0.0),
        ],
        mem_total_kib: kib("MemTotal:"),
        mem_available_kib: kib("MemAvailable:"),
        disks,
        uptime_s: read("uptime")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0),
        processes,
    }
}

/// Serves sessions on one channel until it ends (`Closed`). A new session
/// replaces the old one whenever the host says HELLO with a new id.
pub async fn serve_channel<R, W>(rd: R, wr: W, state: Arc<AgentState>) -> String
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    serve_channel_with(rd, wr, move |stream| {
        tokio::spawn(handle(stream, state.clone()));
    })
    .await
}

/// [`serve_channel`] with another handler for the streams the host opens
/// (tests use it to play a hostile guest).
pub async fn serve_channel_with<R, W, F>(rd: R, mut wr: W, on_stream: F) -> String
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: Fn(crate::mux::Stream) + Clone + Send + 'static,
{
    let mut rd = FrameReader::new(rd);
    // Tell a host that may hold an old session that this one has none.
    if let Err(e) = channel::write_frame(&mut wr, &Frame::Reset).await {
        return e.to_string();
    }
    let mut next: Option<u64> = None;
    loop {
        let id = match next.take() {
            Some(id) => id,
            None => loop {
                match rd.next().await {
                    Ok(Frame::Hello(id)) => break id,
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            },
        };
        if let Err(e) = channel::write_frame(&mut wr, &Frame::Ack(id)).await {
            return e.to_string();
        }
        let (ours, theirs) = tokio::io::duplex(256 << 10);
        let server = tokio::spawn(crate::mux::run_server(ours, on_stream.clone()));
        let end = channel::pump(&mut rd, &mut wr, theirs, id).await;
        server.abort();
        match end {
            SessionEnd::Restart(Some(new)) => next = Some(new),
            SessionEnd::Restart(None) | SessionEnd::Local => {}
            SessionEnd::Closed(why) => return why,
        }
    }
}

/// The virtio-serial port named [`channel::PORT_NAME`], once it appears.
pub fn find_port(sys: &Path, dev: &Path) -> Option<PathBuf> {
    let rd = std::fs::read_dir(sys.join("class/virtio-ports")).ok()?;
    for e in rd.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == channel::PORT_NAME {
            return Some(dev.join(e.file_name()));
        }
    }
    None
}

/// The port as a byte stream that never ends: a read while the host is
/// not connected returns nothing (and is retried), a write waits until it
/// is. Two threads bridge the blocking device to tokio.
fn port_stream(path: &Path) -> io::Result<tokio::io::DuplexStream> {
    use std::io::{Read, Write};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut rf = f.try_clone()?;
    let mut wf = f;
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let (mut trd, mut twr) = tokio::io::split(theirs);
    let rt = tokio::runtime::Handle::current();
    let rt2 = rt.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match rf.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(20)),
                Ok(n) => {
                    if rt.block_on(twr.write_all(&buf[..n])).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    std::thread::spawn(move || {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match rt2.block_on(trd.read(&mut buf)) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Blocks while the host is not connected: nothing is lost.
            if wf.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    Ok(ours)
}

/// Serves the virtio-serial port forever (it appears shortly after boot).
pub async fn serve_port(state: Arc<AgentState>) {
    let mut warned = false;
    let path = loop {
        if let Some(p) = find_port(Path::new("/sys"), Path::new("/dev")) {
            if p.exists() {
                break p;
            }
        }
        if !warned && crate::uptime() > 30.0 {
            eprintln!(
                "banger-agent: no virtio-serial port named {}; serving vsock only",
                channel::PORT_NAME
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(if warned { 1000 } else { 10 })).await;
    };
    loop {
        match port_stream(&path) {
            Ok(s) => {
                let (rd, wr) = tokio::io::split(s);
                let why = serve_channel(rd, wr, state.clone()).await;
                eprintln!("banger-agent: the port session ended: {why}");
            }
            Err(e) => eprintln!("banger-agent: opening {}: {e}", path.display()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Serves vsock connections forever (Firecracker's agent channel).
pub async fn serve_vsock(state: Arc<AgentState>) {
    let listener = loop {
        match crate::vsock::listen(channel::VSOCK_PORT) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    loop {
        match listener.accept().await {
            Ok(conn) => {
                let st = state.clone();
                tokio::spawn(async move {
                    let (rd, wr) = tokio::io::split(conn);
                    serve_channel(rd, wr, st).await;
                });
            }
            Err(e) => {
                eprintln!("banger-agent: vsock accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
