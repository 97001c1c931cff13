//! The egress proxy: policed guests' TCP connections, redirected to the
//! bridge address by bangerd-root, admitted or refused by the VM's policy,
//! and spliced to where they were going.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sniff::{sniff, Sniff, MAX_SNIFF};
use super::Running;
use crate::ops::Ctx;

/// Connections through the proxy at once, all VMs together.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections of one VM at once (a guest cannot take all the others').
pub const PER_VM: usize = 256;
/// How long a connection may say nothing before it is judged by its
/// address alone (protocols where the server speaks first).
pub const FIRST_BYTES: Duration = Duration::from_secs(2);
/// How long a connection's name (TLS hello, HTTP head) may take whole.
pub const SNIFF_DEADLINE: Duration = Duration::from_secs(5);
/// How long the destination may take to accept.
pub const CONNECT: Duration = Duration::from_secs(10);

/// Accepts until the listener fails.
pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let running = Arc::new(tokio::sync::Mutex::new(Running::default()));
    // The TLS client toward secrets' hosts, made once.
    let tls = match super::mitm::client_config(&ctx.config.egress.ca_files) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("egress: no TLS client for secrets' hosts: {e}");
            None
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_vm: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("egress proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: the guest's connection is closed, nothing queued.
            continue;
        };
        let Some(vm_slot) = VmSlot::take(&per_vm, peer.ip()) else {
            continue;
        };
        let (ctx, running, tls) = (ctx.clone(), running.clone(), tls.clone());
        tokio::spawn(async move {
            let _slots = (slot, vm_slot);
            handle(ctx, running, tls, conn, peer).await;
        });
    }
}

/// One of a VM's [`PER_VM`] connections, given back when dropped.
struct VmSlot(
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    std::net::IpAddr,
);

impl VmSlot {
    fn take(
        map: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
    ) -> Option<VmSlot> {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= PER_VM {
            return None;
        }
        *n += 1;
        Some(VmSlot(map.clone(), ip))
    }
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Where a redirected connection was going.
fn original_dst(conn: &TcpStream) -> Option<SocketAddrV4> {
    let sin = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst).ok()?;
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// Destinations no policy opens: the host itself, the bridge's subnet (the
/// guests), and addresses that are not a single remote host.
pub fn forbidden(dst: Ipv4Addr, bridge: (Ipv4Addr, u8), host_addrs: &[Ipv4Addr]) -> bool {
    let (b, len) = bridge;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    dst.is_loopback()
        || dst.is_unspecified()
        || dst.is_broadcast()
        || dst.is_multicast()
        || dst.is_link_local()
        || u32::from(dst) & mask == u32::from(b) & mask
        || host_addrs.contains(&dst)
}

fn host_addrs() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the guest's first bytes until they name a host, say they will
/// not, or the deadlines pass.
async fn first_bytes(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let started = tokio::time::Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        let wait = if buf.is_empty() {
            FIRST_BYTES
        } else {
            SNIFF_DEADLINE.saturating_sub(started.elapsed())
        };
        let n = match tokio::time::timeout(wait, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        let room = MAX_SNIFF.saturating_sub(buf.len()).min(n);
        buf.extend_from_slice(&chunk[..room]);
        match sniff(buf) {
            Sniff::Name(n) => return Some(n),
            Sniff::NoName => return None,
            Sniff::More if buf.len() >= MAX_SNIFF => return None,
            Sniff::More => {}
        }
    }
}

async fn handle(
    ctx: Arc<Ctx>,
    running: Arc<tokio::sync::Mutex<Running>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut conn: TcpStream,
    peer: SocketAddr,
) {
    let SocketAddr::V4(peer) = peer else { return };
    let guest = {
        let mut r = running.lock().await;
        r.refresh(&ctx).await;
        r.guest(*peer.ip()).cloned()
    };
    // Only policed guests come through here; anyone else is closed on.
    let Some(guest) = guest else { return };
    let Some(policy) = guest.policy.clone() else {
        return;
    };
    let Some(dst) = original_dst(&conn) else {
        return;
    };
    let book = &ctx.egress;
    let addr = dst.to_string();
    let net = &ctx.config.network;
    if forbidden(*dst.ip(), (net.bridge_ip, net.prefix_len), &host_addrs()) {
        book.refuse(&guest.id, "tcp", None, Some(addr));
        return;
    }
    let mut head = Vec::new();
    let by_net = policy.allows_addr(*dst.ip(), dst.port());
    let resolved = !by_net && book.resolved_name(&guest.id, *dst.ip()).is_some();
    if !by_net && !resolved {
        // Never connected; the name it sends, if any, is for the log.
        let name = first_bytes(&mut conn, &mut head).await;
        refuse(&ctx, &guest.id, &mut conn, &head, name, addr).await;
        return;
    }
    let secrets = ctx.vault.get(&guest.id);
    let Ok(Ok(mut out)) = tokio::time::timeout(CONNECT, TcpStream::connect(dst)).await else {
        return;
    };
    let _ = out.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    // An address of an allowed name: the connection's own name, if it
    // sends one, must be allowed too. A server that speaks first (SSH,
    // SMTP) means no name is coming: judged by the address.
    let name = if resolved || secrets.is_some() {
        tokio::select! {
            n = first_bytes(&mut conn, &mut head) => n,
            _ = out.readable() => None,
        }
    } else {
        None
    };
    if resolved {
        if let Some(n) = name.as_ref().filter(|n| !policy.allows_host(n)) {
            refuse(&ctx, &guest.id, &mut conn, &head, Some(n.clone()), addr).await;
            return;
        }
    }
    if let Some(s) = secrets {
        let tls_to_secret_host =
            head.first() == Some(&0x16) && name.as_deref().is_some_and(|n| s.for_host(n));
        if let (true, Some(client), Some(host)) = (tls_to_secret_host, tls, name.clone()) {
            let (c, vm) = (ctx.clone(), guest.id.clone());
            let to = host.clone();
            let leak = move |names: Vec<String>| {
                c.egress.refuse(
                    &vm,
                    "secret",
                    Some(format!("{} sent to {to}", names.join(","))),
                    None,
                )
            };
            if let Err(e) = super::mitm::serve(conn, head, host, out, s, client, leak).await {
                tracing::info!(vm = %guest.name, "egress: a secret host's connection ended: {e}");
            }
            return;
        }
        let leaked = s.placeholders_in(&head);
        if !leaked.is_empty() {
            // Sent in the clear or to another host: never swapped.
            let to = name.clone().unwrap_or_else(|| addr.clone());
            book.refuse(
                &guest.id,
                "secret",
                Some(format!("{} sent to {to}", leaked.join(","))),
                Some(addr),
            );
        }
    }
    if !head.is_empty() && out.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut out).await;
}

/// Logs a refused connection and closes it; plain HTTP is told why.
async fn refuse(
    ctx: &Ctx,
    vm_id: &str,
    conn: &mut TcpStream,
    head: &[u8],
    name: Option<String>,
    addr: String,
) {
    if super::sniff::is_http(head) {
        let what = name.as_deref().unwrap_or(&addr);
        let body = format!(
            "banger: this VM's egress policy refused {what}; see `banger vm egress <vm>`, allow it with `banger vm set <vm> --allow-host NAME`\n"
        );
        let reply = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(reply.as_bytes()).await;
        let _ = conn.shutdown().await;
    }
    ctx.egress.refuse(vm_id, "tcp", name, Some(addr));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_the_guests_and_special_addresses_are_never_destinations() {
        let bridge = ("172.16.0.1".parse().unwrap(), 24);
        let host = ["192.168.1.5".parse().unwrap()];
        for a in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.16.0.9",
            "192.168.1.5",
        ] {
            assert!(forbidden(a.parse().unwrap(), bridge, &host), "{a}");
        }
        for a in ["172.16.1.1", "192.168.1.6", "93.184.216.34"] {
            assert!(!forbidden(a.parse().unwrap(), bridge, &host), "{a}");
        }
    }
}
