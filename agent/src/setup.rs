//! Boot-time identity: hostname, /etc/hosts, resolv.conf, root's authorized
//! key. File edits take a root directory so they can be tested on a tree.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::cmdline::GuestParams;

const HOSTS_MARK: &str = "# banger";
const KEY_MARK: &str = "banger-managed";

/// Writes `/etc/hostname` and the banger line of `/etc/hosts`.
pub fn write_identity(root: &Path, p: &GuestParams) -> Result<(), String> {
    let Some(name) = &p.name else { return Ok(()) };
    write_atomic(&root.join("etc/hostname"), format!("{name}\n").as_bytes())?;
    let hosts_path = root.join("etc/hosts");
    let old = fs::read_to_string(&hosts_path).unwrap_or_default();
    let mut out: Vec<String> = old
        .lines()
        .filter(|l| !l.ends_with(HOSTS_MARK))
        .map(str::to_string)
        .collect();
    if !out
        .iter()
        .any(|l| l.split_whitespace().next() == Some("127.0.0.1"))
    {
        out.insert(0, "127.0.0.1\tlocalhost".into());
    }
    let addr =
        p.ip.map(|(ip, _)| ip.to_string())
            .unwrap_or_else(|| "127.0.1.1".into());
    out.push(format!("{addr}\t{name} {name}.vm\t{HOSTS_MARK}"));
    write_atomic(&hosts_path, (out.join("\n") + "\n").as_bytes())
}

/// Writes `/etc/resolv.conf` from `banger.dns`.
pub fn write_resolv(root: &Path, p: &GuestParams) -> Result<(), String> {
    if p.dns.is_empty() {
        return Ok(());
    }
    write_nameservers(root, &p.dns)
}

/// Writes `/etc/resolv.conf` naming (at most three of) `servers`, the
/// host's choice (at boot, or when its NAT is switched on or off).
pub fn write_nameservers(root: &Path, servers: &[std::net::Ipv4Addr]) -> Result<(), String> {
    let mut s = String::from("# written by banger-agent from banger.dns\n");
    for d in servers.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    let path = root.join("etc/resolv.conf");
    // resolv.conf may be a dangling symlink (systemd-resolved): replace it.
    let _ = fs::remove_file(&path);
    write_atomic(&path, s.as_bytes())
}

/// Puts the banger key into `/root/.ssh/authorized_keys`, replacing an older
/// banger key and keeping the user's own lines.
pub fn write_authorized_key(root: &Path, p: &GuestParams) -> Result<(), String> {
    let Some(key) = &p.ssh_key else { return Ok(()) };
    let dir = root.join("root/.ssh");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    set_mode(&dir, 0o700)?;
    let path = dir.join("authorized_keys");
    let old = fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| !l.ends_with(KEY_MARK))
        .map(str::to_string)
        .collect();
    lines.push(format!("{key} {KEY_MARK}"));
    write_atomic(&path, (lines.join("\n") + "\n").as_bytes())?;
    set_mode(&path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Writes a file via a temp name + rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("banger-tmp");
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

/// Loopback up, then `banger.ip` and `banger.gw` on the first Ethernet
/// interface (over netlink).
#[cfg(target_os = "linux")]
pub fn network(p: &GuestParams) -> Result<(), String> {
    use crate::netlink;
    netlink::ifindex("lo")
        .and_then(netlink::link_up)
        .map_err(|e| format!("loopback: {e}"))?;
    let Some((ip, len)) = p.ip else {
        return Ok(());
    };
    let ifname = netlink::first_ethernet().map_err(|e| e.to_string())?;
    let idx = netlink::ifindex(&ifname).map_err(|e| e.to_string())?;
    match netlink::set_address(idx, ip, len) {
        Ok(()) => {}
        // Set already (an agent restarted): that is the wanted state.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(format!("{ifname}: {e}")),
    }
    netlink::link_up(idx).map_err(|e| format!("{ifname}: {e}"))?;
    if let Some(gw) = p.gw {
        match netlink::set_default_route(idx, gw) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("default route: {e}")),
        }
    }
    Ok(())
}

/// Whether `path` is a mount point (from `/proc/self/mountinfo`).
pub fn is_mountpoint(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

/// Sets the kernel hostname.
#[cfg(target_os = "linux")]
pub fn set_kernel_hostname(name: &str) -> Result<(), String> {
    // SAFETY: pointer and length describe a valid byte buffer.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("sethostname: {}", std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn params() -> GuestParams {
        GuestParams {
            name: Some("box".into()),
            ip: Some((Ipv4Addr::new(172, 16, 0, 9), 24)),
            gw: None,
            dns: vec![Ipv4Addr::new(172, 16, 0, 1)],
            ssh_key: Some("ssh-ed25519 AAAAnew".into()),
        }
    }

    #[test]
    fn files_are_written_and_rewrites_are_idempotent() {
        let d = std::env::temp_dir().join(format!("agent-setup-{}", std::process::id()));
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::create_dir_all(d.join("root/.ssh")).unwrap();
        fs::write(d.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n").unwrap();
        fs::write(
            d.join("root/.ssh/authorized_keys"),
            "ssh-rsa USERKEY me@laptop\nssh-ed25519 AAAAold banger-managed\n",
        )
        .unwrap();
        for _ in 0..2 {
            write_identity(&d, &params()).unwrap();
            write_resolv(&d, &params()).unwrap();
            write_authorized_key(&d, &params()).unwrap();
        }
        assert_eq!(fs::read_to_string(d.join("etc/hostname")).unwrap(), "box\n");
        let hosts = fs::read_to_string(d.join("etc/hosts")).unwrap();
        assert_eq!(hosts.matches("box.vm").count(), 1, "{hosts}");
        assert!(hosts.contains("172.16.0.9\tbox box.vm"));
        assert!(hosts.contains("::1 localhost"));
        let keys = fs::read_to_string(d.join("root/.ssh/authorized_keys")).unwrap();
        assert_eq!(
            keys,
            "ssh-rsa USERKEY me@laptop\nssh-ed25519 AAAAnew banger-managed\n"
        );
        assert!(fs::read_to_string(d.join("etc/resolv.conf"))
            .unwrap()
            .contains("nameserver 172.16.0.1"));
        fs::remove_dir_all(&d).unwrap();
    }
}
