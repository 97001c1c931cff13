//! A VM restored from a snapshot becomes itself: every clone of one
//! snapshot starts with the same memory — the same kernel RNG state, clock,
//! hostname, addresses, machine-id and SSH host key — and must not keep any
//! of them. The host sends [`Identity`]; this applies it, RNG first so that
//! what is generated afterwards (machine-id, host key) comes from the
//! reseeded generator.

use std::path::Path;

use crate::api::Ack;
use crate::cmdline::GuestParams;
use crate::proto::Identity;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `02:ab:cd:ef:01:23` as bytes; only locally administered unicast.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    // Unicast, locally administered: what banger hands out.
    (mac[0] & 1 == 0 && mac[0] & 2 == 2).then_some(mac)
}

fn parse_seed(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !(64..=1024).contains(&hex.len()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Mixes `seed` into the kernel's pool, credited, and forces a reseed of
/// the CRNG so reads after this differ between clones.
fn reseed(seed: &[u8]) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // SAFETY: the buffer is a rand_pool_info of the length it announces.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: an ioctl without argument.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG, 0) };
    if rc != 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_clock(secs: u64, nanos: u32) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos.min(999_999_999) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "clock_settime: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A fresh `/etc/machine-id` from the (reseeded) kernel RNG.
fn new_machine_id(root: &Path) -> Result<(), String> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom into a buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err("getrandom failed".into());
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    crate::setup::write_atomic(&root.join("etc/machine-id"), format!("{hex}\n").as_bytes())
}

/// The snapshot's host keys go at once (nobody may be shown a key another
/// clone has); a new ed25519 key (what the image's keygen unit makes) is
/// made on a thread of its own, then sshd is told to re-read its keys.
/// Until then `HostKeys` answers none, so the host waits before pinning.
/// Without sshd in the image there is nothing to do.
/// The SSH host key a reidentify makes: a restored clone is not ready
/// (for a VM reported running) until sshd listens again with its own key.
/// Generations, so that a second reidentify supersedes the first one's
/// key thread.
#[derive(Default)]
pub struct HostKeys {
    generation: std::sync::atomic::AtomicU64,
    served: std::sync::atomic::AtomicU64,
    /// One key thread writes into /etc/ssh at a time.
    lock: std::sync::Mutex<()>,
}

impl HostKeys {
    /// Whether the last reidentify's host key is in place and sshd (where
    /// there is one) listens with it.
    pub fn served(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.served.load(SeqCst) == self.generation.load(SeqCst)
    }
}

/// How long a key thread waits for sshd to listen again after its reload.
const RELISTEN: std::time::Duration = std::time::Duration::from_secs(10);

fn new_host_key(keys: &std::sync::Arc<HostKeys>) -> Result<(), String> {
    use std::sync::atomic::Ordering::SeqCst;
    let keygen = Path::new("/usr/bin/ssh-keygen");
    if !keygen.exists() {
        return Ok(());
    }
    let generation = keys.generation.fetch_add(1, SeqCst) + 1;
    let _held = keys.lock.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new("/etc/ssh");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") {
                std::fs::remove_file(e.path())
                    .map_err(|err| format!("removing {}: {err}", e.path().display()))?;
            }
        }
    }
    drop(_held);
    let keys = keys.clone();
    std::thread::spawn(move || {
        let _held = keys.lock.lock().unwrap_or_else(|p| p.into_inner());
        // A later reidentify took over: its thread makes the key.
        if keys.generation.load(SeqCst) != generation {
            return;
        }
        match generate_host_key(keygen, dir) {
            Ok(()) => {}
            Err(e) => eprintln!("banger-agent: reidentify: ssh host key: {e}"),
        }
        // Served (or given up on: a guest without a working sshd is still
        // reported, by its health, rather than never ready).
        let _ = keys.served.fetch_max(generation, SeqCst);
    });
    Ok(())
}

/// The socket inodes listening on TCP port 22 (IPv4 and IPv6), from
/// `<proc>/net/tcp{,6}`: state `0A` (LISTEN), local port `0016`.
fn ssh_listeners(proc_root: &Path) -> Vec<String> {
    ["net/tcp", "net/tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(proc_root.join(f))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    let listening = w.get(1)?.ends_with(":0016") && *w.get(3)? == "0A";
                    listening.then(|| w.get(9).map(|i| i.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Made under a temporary name and renamed into place, private key first:
/// a reader of the public key sees none or the whole one.
fn generate_host_key(keygen: &Path, dir: &Path) -> Result<(), String> {
    let (key, tmp) = (
        dir.join("ssh_host_ed25519_key"),
        dir.join("ssh_host_ed25519_key.banger-new"),
    );
    // ssh-keygen -f X writes X and X.pub.
    let pubs = |p: &Path| std::path::PathBuf::from(format!("{}.pub", p.display()));
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_file(pubs(&tmp));
    let st = std::process::Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&tmp)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    if !st.success() {
        return Err(format!("ssh-keygen failed ({st})"));
    }
    std::fs::rename(&tmp, &key).map_err(|e| format!("placing the key: {e}"))?;
    std::fs::rename(pubs(&tmp), pubs(&key)).map_err(|e| format!("placing the key: {e}"))?;
    // The listening sshd (its parent is init) re-executes on SIGHUP and
    // loads the new key; sessions keep running. Its listener is closed
    // while it re-executes: done when port 22 listens again.
    let sshds = listeners_named(Path::new("/proc"), "sshd");
    let before = ssh_listeners(Path::new("/proc"));
    for pid in &sshds {
        // SAFETY: a signal to a process we found.
        unsafe { libc::kill(*pid as i32, libc::SIGHUP) };
    }
    if sshds.is_empty() {
        return Ok(());
    }
    // Its listeners close while it re-executes and come back as new
    // sockets: done when port 22 listens on sockets that are all new.
    let deadline = std::time::Instant::now() + RELISTEN;
    while std::time::Instant::now() < deadline {
        let now = ssh_listeners(Path::new("/proc"));
        if !now.is_empty() && now.iter().all(|i| !before.contains(i)) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err("sshd did not listen again within 10 s of its reload".into())
}

/// Processes called `comm` whose parent is PID 1, from `<proc>/<pid>/stat`
/// (`pid (comm) state ppid ...`; comm may hold spaces and parentheses, so
/// it ends at the last `)`).
fn listeners_named(proc_root: &Path, comm: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, tail) = stat.rsplit_once(')')?;
            let (_, name) = head.split_once('(')?;
            let ppid: u32 = tail.split_whitespace().nth(1)?.parse().ok()?;
            (name == comm && ppid == 1).then_some(pid)
        })
        .collect()
}

/// The network: the new MAC, the old address removed (first: removing a
/// primary address would take a secondary one of its subnet with it), the
/// new one and the default route.
fn network(id: &Identity, mac: [u8; 6]) -> Result<(), String> {
    use crate::netlink;
    let ifname = netlink::first_ethernet().map_err(|e| e.to_string())?;
    let idx = netlink::ifindex(&ifname).map_err(|e| e.to_string())?;
    netlink::set_mac(idx, mac).map_err(|e| format!("{ifname} MAC: {e}"))?;
    if let Some(old) = id.old_ip.filter(|o| *o != id.ip) {
        match netlink::del_address(idx, old, id.prefix_len) {
            Ok(()) => {}
            // Not there (an agent asked twice): the wanted state.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => return Err(format!("{ifname}: removing {old}: {e}")),
        }
    }
    let p = GuestParams {
        ip: Some((id.ip, id.prefix_len)),
        gw: id.gw,
        ..Default::default()
    };
    crate::setup::network(&p)
}

/// Applies `id`; what failed is in the answer (not ok), and every step
/// runs regardless.
pub fn reidentify(id: &Identity, keys: &std::sync::Arc<HostKeys>) -> Ack {
    let mut errors: Vec<String> = Vec::new();
    let (Some(seed), Some(mac)) = (parse_seed(&id.seed), parse_mac(&id.mac)) else {
        return Ack {
            ok: false,
            detail: "bad identity: the seed must be 32 to 512 bytes of hex and the MAC a locally administered unicast address".into(),
        };
    };
    if !crate::cmdline::valid_hostname(&id.name) {
        return Ack {
            ok: false,
            detail: format!("bad identity: {:?} is not a hostname", id.name),
        };
    }
    let mut step = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            eprintln!("banger-agent: reidentify: {what}: {e}");
            errors.push(format!("{what}: {e}"));
        }
    };
    step("rng", reseed(&seed));
    step("clock", set_clock(id.now_secs, id.now_nanos));
    let params = GuestParams {
        name: Some(id.name.clone()),
        ip: Some((id.ip, id.prefix_len)),
        gw: id.gw,
        dns: id.dns.clone(),
        ssh_key: None,
    };
    let root = Path::new("/");
    step("hostname", crate::setup::set_kernel_hostname(&id.name));
    step(
        "identity files",
        crate::setup::write_identity(root, &params),
    );
    step("resolv.conf", crate::setup::write_resolv(root, &params));
    step("network", network(id, mac));
    step("machine-id", new_machine_id(root));
    step("ssh host key", new_host_key(keys));
    Ack {
        ok: errors.is_empty(),
        detail: if errors.is_empty() {
            format!("now {} at {}", id.name, id.ip)
        } else {
            errors.join("; ")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_seeds_are_checked() {
        assert_eq!(
            parse_mac("02:00:ac:10:00:05"),
            Some([2, 0, 0xac, 0x10, 0, 5])
        );
        // Multicast, globally administered, malformed.
        for bad in [
            "03:00:00:00:00:01",
            "00:11:22:33:44:55",
            "02:00:00:00:00",
            "02:00:00:00:00:zz",
            "02:0:00:00:00:001",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(parse_seed(&"ab".repeat(32)).map(|v| v.len()), Some(32));
        assert_eq!(parse_seed(&"ab".repeat(8)), None);
        assert_eq!(parse_seed(&"zz".repeat(32)), None);
        assert_eq!(parse_seed(&"é".repeat(64)), None);
    }

    #[test]
    fn port_22_listeners_are_read_from_proc_net_tcp() {
        let root = std::env::temp_dir().join(format!("agent-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net")).unwrap();
        struct D(std::path::PathBuf);
        impl D {
            fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for D {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let d = D(root);
        let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        std::fs::write(
            d.path().join("net/tcp"),
            format!("{head}   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0 100 0 0 10 0\n   1: 0200A8C0:0016 0100A8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0 20 4 30 10 -1\n   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n"),
        )
        .unwrap();
        assert_eq!(ssh_listeners(d.path()), vec!["1234".to_string()]);
        std::fs::write(
            d.path().join("net/tcp6"),
            format!("{head}   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5678 1 0 100 0 0 10 0\n"),
        )
        .unwrap();
        assert_eq!(
            ssh_listeners(d.path()),
            vec!["1234".to_string(), "5678".to_string()]
        );
    }

    #[test]
    fn sshd_listeners_are_found_by_comm_and_parent() {
        let d = std::env::temp_dir().join(format!("agent-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (pid, stat) in [
            ("10", "10 (sshd) S 1 10 10 0"),
            ("11", "11 (sshd) S 10 10 10 0"),
            ("12", "12 (ssh d) x) S 1 12 12 0"),
            ("13", "13 (cron) S 1 13 13 0"),
        ] {
            std::fs::create_dir(d.join(pid)).unwrap();
            std::fs::write(d.join(pid).join("stat"), stat).unwrap();
        }
        assert_eq!(listeners_named(&d, "sshd"), vec![10]);
        assert_eq!(listeners_named(&d, "ssh d) x"), vec![12]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
