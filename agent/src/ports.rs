//! Listening sockets from `/proc/net/*`, with owning processes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::api::Port;

/// One parsed row: address, port, inode.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    pub address: String,
    pub port: u16,
    pub inode: u64,
}

/// Parses a `/proc/net/{tcp,udp}{,6}` table, keeping listening TCP sockets
/// (state 0A) or bound UDP sockets (state 07).
pub fn parse_table(text: &str, v6: bool, udp: bool) -> Vec<Row> {
    let want = if udp { "07" } else { "0A" };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != want {
                return None;
            }
            let (addr_hex, port_hex) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let address = if v6 {
                parse_v6(addr_hex)?.to_string()
            } else {
                parse_v4(addr_hex)?.to_string()
            };
            Some(Row {
                address,
                port,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

fn parse_v4(hex: &str) -> Option<Ipv4Addr> {
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(v.to_le_bytes()))
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let w = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// Maps socket inodes to (pid, comm) by scanning `<proc>/<pid>/fd`.
pub fn socket_owners(proc_root: &Path) -> HashMap<u64, (u32, String)> {
    let mut map = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return map;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(i) = inode.parse() {
                        map.entry(i).or_insert_with(|| (pid, comm.clone()));
                    }
                }
            }
        }
    }
    map
}

/// Every listening TCP and bound UDP socket under `proc_root` (normally `/proc`).
pub fn listening(proc_root: &Path) -> Vec<Port> {
    let owners = socket_owners(proc_root);
    let mut out = Vec::new();
    for (file, v6, udp) in [
        ("tcp", false, false),
        ("tcp6", true, false),
        ("udp", false, true),
        ("udp6", true, true),
    ] {
        let text = std::fs::read_to_string(proc_root.join("net").join(file)).unwrap_or_default();
        for r in parse_table(&text, v6, udp) {
            let owner = owners.get(&r.inode);
            out.push(Port {
                proto: file.to_string(),
                address: r.address,
                port: r.port,
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
            });
        }
    }
    out.sort_by(|a, b| (a.port, &a.proto).cmp(&(b.port, &b.proto)));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_rows_only() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        let rows = parse_table(tcp, false, false);
        assert_eq!(
            rows,
            vec![Row {
                address: "0.0.0.0".into(),
                port: 22,
                inode: 12345
            }]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        let rows = parse_table(tcp6, true, false);
        assert_eq!(rows[0].address, "::");
        assert_eq!(rows[0].port, 22);
    }

    #[test]
    fn finds_a_real_listener_on_this_host() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = listening(Path::new("/proc"));
        let me = ports
            .iter()
            .find(|p| p.port == port && p.proto == "tcp")
            .expect("our listener");
        assert_eq!(me.address, "127.0.0.1");
        assert_eq!(me.pid, Some(std::process::id()));
    }
}
