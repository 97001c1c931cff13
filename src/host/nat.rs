//! NAT for one guest /32: an iptables MASQUERADE rule and two FORWARD rules,
//! each tagged with the VM id so they can be found and removed. Idempotent.
//!
//! Links (`vm create --link`): two guests that may talk, though every tap is
//! an isolated bridge port. The host answers ARP for the guests' addresses
//! on the bridge (`proxy_arp_pvlan`), so a guest sends a sibling's traffic
//! to the host, whose bridge forward chain drops it unless a link rule
//! (tagged with both VM ids) admits that pair.

use std::net::Ipv4Addr;

use super::{run_tool, system_tool, HostError};

/// The iptables binary: the legacy (x_tables) one where the kernel has no
/// nf_tables, else the default.
pub fn iptables() -> Result<&'static str, HostError> {
    let legacy = system_tool("iptables-legacy").is_some();
    let nft_kernel = std::path::Path::new("/proc/net/nf_tables").exists()
        || std::path::Path::new("/sys/module/nf_tables").exists();
    if legacy && !nft_kernel {
        Ok("iptables-legacy")
    } else if system_tool("iptables").is_some() {
        Ok("iptables")
    } else if legacy {
        Ok("iptables-legacy")
    } else {
        Err(HostError::MissingTool {
            tool: "iptables".into(),
            package: "iptables".into(),
        })
    }
}

/// The (table, chain, match) triples of one VM's rules.
pub fn rules(vm_id: &str, ip: Ipv4Addr, bridge: &str) -> Vec<(&'static str, String, Vec<String>)> {
    let tag = format!("banger:{vm_id}");
    let fwd = super::firewall::chains(bridge).1;
    let ip = format!("{ip}/32");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "nat",
            "POSTROUTING".into(),
            s(&[
                "-s",
                &ip,
                "!",
                "-o",
                bridge,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "MASQUERADE",
            ]),
        ),
        // In the bridge's forward chain (host::firewall), after its
        // link-local drop: out of the host, never back onto the bridge.
        (
            "filter",
            fwd,
            s(&[
                "-s",
                &ip,
                "!",
                "-o",
                bridge,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ]),
        ),
        (
            "filter",
            "FORWARD".into(),
            s(&[
                "-o",
                bridge,
                "-d",
                &ip,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ]),
        ),
    ]
}

/// The rule that sends a policed guest's TCP (to anywhere but the host's
/// own addresses) to the daemon's egress proxy on `port` of the bridge
/// address: (table, chain, rule).
pub fn egress_rule(
    vm_id: &str,
    ip: Ipv4Addr,
    bridge: &str,
    port: u16,
) -> (&'static str, &'static str, Vec<String>) {
    let tag = format!("banger:{vm_id}");
    let (ip, port) = (format!("{ip}/32"), port.to_string());
    let rule = [
        "-i",
        bridge,
        "-s",
        &ip,
        "-p",
        "tcp",
        "-m",
        "addrtype",
        "!",
        "--dst-type",
        "LOCAL",
        "-m",
        "comment",
        "--comment",
        &tag,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ];
    (
        "nat",
        "PREROUTING",
        rule.iter().map(|x| x.to_string()).collect(),
    )
}

/// Installs [`egress_rule`] (idempotent). The VM has no NAT rules: only
/// its DNS and these connections reach anything, both through the daemon.
pub fn police(vm_id: &str, ip: Ipv4Addr, bridge: &str, port: u16) -> Result<(), HostError> {
    let bin = iptables()?;
    super::firewall::guard_bridge(bridge)?;
    let (table, chain, rule) = egress_rule(vm_id, ip, bridge, port);
    ensure_rule(bin, table, chain, &rule)
}

/// The tag of a link's rules: both ids, in order.
fn link_tag(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("banger-link:{x}:{y}")
}

/// The two rules of a link, in the bridge's forward chain: each way
/// between the two addresses, back onto the bridge.
pub fn link_rules(a: (&str, Ipv4Addr), b: (&str, Ipv4Addr), bridge: &str) -> Vec<Vec<String>> {
    let tag = link_tag(a.0, b.0);
    [(a.1, b.1), (b.1, a.1)]
        .iter()
        .map(|(from, to)| {
            [
                "-o",
                bridge,
                "-s",
                &format!("{from}/32"),
                "-d",
                &format!("{to}/32"),
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "ACCEPT",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        })
        .collect()
}

/// Lets two guests talk: the link's rules (before the chain's final drop),
/// forwarding on the bridge alone, and the host answering ARP for guests
/// on the bridge. Idempotent.
pub fn link(a: (&str, Ipv4Addr), b: (&str, Ipv4Addr), bridge: &str) -> Result<(), HostError> {
    let bin = iptables()?;
    super::firewall::guard_bridge(bridge)?;
    let fwd = super::firewall::chains(bridge).1;
    for spec in link_rules(a, b, bridge) {
        ensure_rule(bin, "filter", &fwd, &spec)?;
    }
    for (knob, value) in [
        ("proxy_arp", "1"),
        ("proxy_arp_pvlan", "1"),
        ("send_redirects", "0"),
    ] {
        let p = conf_path(bridge, knob)
            .ok_or_else(|| HostError::Other(format!("{bridge:?} is not an interface name")))?;
        std::fs::write(&p, value)
            .map_err(|e| HostError::Other(format!("setting {}: {e}", p.display())))?;
    }
    forward_on(&[bridge.to_string()])
}

/// Adds a rule unless it is there: into a bridge's forward chain at 2
/// (after its link-local drop, before its final drop), elsewhere at the end.
fn ensure_rule(bin: &str, table: &str, chain: &str, spec: &[String]) -> Result<(), HostError> {
    if rule_exists(bin, table, chain, spec) {
        return Ok(());
    }
    let mut args = if chain.ends_with("-fwd") {
        vec!["-w", "10", "-t", table, "-I", chain, "2"]
    } else {
        vec!["-w", "10", "-t", table, "-A", chain]
    };
    args.extend(spec.iter().map(String::as_str));
    run_tool(bin, "iptables", &args).map(drop)
}

fn rule_exists(bin: &str, table: &str, chain: &str, spec: &[String]) -> bool {
    let mut args = vec!["-w", "10", "-t", table, "-C", chain];
    args.extend(spec.iter().map(String::as_str));
    run_tool(bin, "iptables", &args).is_ok()
}

/// Installs the rules (those already present are left alone) and enables
/// forwarding for the bridge and the uplinks.
pub fn enable(vm_id: &str, ip: Ipv4Addr, bridge: &str) -> Result<(), HostError> {
    let bin = iptables()?;
    super::firewall::guard_bridge(bridge)?;
    for (table, chain, spec) in rules(vm_id, ip, bridge) {
        ensure_rule(bin, table, &chain, &spec)?;
    }
    let mut ifaces = vec![bridge.to_string()];
    ifaces.extend(uplinks()?);
    forward_on(&ifaces)
}

/// An IPv4 setting of one interface.
fn conf_path(iface: &str, knob: &str) -> Option<std::path::PathBuf> {
    let ok = !iface.is_empty()
        && iface.len() <= 15
        && iface != "."
        && iface != ".."
        && !iface.contains('/')
        && iface != "all"
        && iface != "default";
    ok.then(|| format!("/proc/sys/net/ipv4/conf/{iface}/{knob}").into())
}

/// The forwarding switch of one interface.
fn forwarding_path(iface: &str) -> Option<std::path::PathBuf> {
    conf_path(iface, "forwarding")
}

/// Where the interfaces whose forwarding banger switched on are written
/// (one per line), per network namespace, so the last NAT VM's going can
/// switch them back.
fn forwarding_record() -> Result<std::path::PathBuf, HostError> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::path::Path::new(super::ROOT_RUNTIME_DIR);
    crate::fsutil::root_private_dir(dir)
        .map_err(|e| HostError::Other(format!("creating {}: {e}", dir.display())))?;
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| HostError::Other(format!("reading our network namespace: {e}")))?
        .ino();
    Ok(dir.join(format!("net-{ns}.forwarding")))
}

/// The interfaces of the default routes (where NAT'd traffic leaves).
pub fn uplinks() -> Result<Vec<String>, HostError> {
    #[derive(serde::Deserialize)]
    struct R {
        #[serde(default)]
        dev: Option<String>,
    }
    let out = run_tool("ip", "iproute2", &["-j", "-4", "route", "show", "default"])?;
    let rs: Vec<R> = serde_json::from_str(&out)
        .map_err(|e| HostError::Other(format!("unexpected `ip -j route` output: {e}")))?;
    let mut v: Vec<String> = rs.into_iter().filter_map(|r| r.dev).collect();
    v.dedup();
    Ok(v)
}

/// Forwarding for these interfaces only: NAT's bridge and uplinks (IPv4
/// decides by the interface a packet came in on: out through the bridge,
/// back through the uplink), a link's bridge; never the host-wide
/// `ip_forward`. What was off is recorded and switched back by
/// [`restore_forwarding`].
fn forward_on(ifaces: &[String]) -> Result<(), HostError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let record = forwarding_record()?;
    for i in ifaces {
        let Some(p) = forwarding_path(i) else {
            continue;
        };
        let now = std::fs::read_to_string(&p)
            .map_err(|e| HostError::Other(format!("reading {}: {e}", p.display())))?;
        if now.trim() == "1" {
            continue;
        }
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&record)
            .and_then(|mut f| writeln!(f, "{i}"))
            .map_err(|e| HostError::Other(format!("writing {}: {e}", record.display())))?;
        std::fs::write(&p, "1")
            .map_err(|e| HostError::Other(format!("enabling forwarding on {i}: {e}")))?;
    }
    Ok(())
}

/// Switches off the forwarding banger switched on (interfaces since
/// deleted are skipped).
pub fn restore_forwarding() -> Result<(), HostError> {
    let record = forwarding_record()?;
    let text = match std::fs::read_to_string(&record) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(HostError::Other(format!(
                "reading {}: {e}",
                record.display()
            )))
        }
    };
    for i in text.lines().take(64) {
        if let Some(p) = forwarding_path(i.trim()) {
            if p.exists() {
                let _ = std::fs::write(&p, "0");
            }
        }
    }
    let _ = std::fs::remove_file(&record);
    Ok(())
}

/// Removes every rule tagged with the VM's id — its NAT and its links
/// (whatever bridge or address they were made for); absent is fine.
pub fn disable(vm_id: &str) -> Result<(), HostError> {
    let bin = iptables()?;
    let tag = format!("banger:{vm_id}");
    for table in ["nat", "filter"] {
        let listing = run_tool(bin, "iptables", &["-w", "10", "-t", table, "-S"])?;
        let mut rules = tagged(&listing, &tag);
        rules.extend(links_of(&listing, vm_id));
        for rule in rules {
            let mut args = vec!["-w", "10", "-t", table, "-D"];
            args.extend(rule.iter().map(String::as_str));
            run_tool(bin, "iptables", &args)?;
        }
    }
    // The last NAT VM and link gone: forwarding back as it was.
    if tagged_vms()?.is_empty() {
        restore_forwarding()?;
    }
    Ok(())
}

/// The VM ids that have NAT or link rules (to sweep those no live VM
/// owns).
pub fn tagged_vms() -> Result<Vec<String>, HostError> {
    let bin = iptables()?;
    let mut ids = Vec::new();
    for table in ["nat", "filter"] {
        let listing = run_tool(bin, "iptables", &["-w", "10", "-t", table, "-S"])?;
        for id in ids_in(&listing) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// The VM ids a listing's tags name (`banger:<id>`, `banger-link:<id>:<id>`).
fn ids_in(listing: &str) -> Vec<String> {
    let is_id = |s: &str| s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit());
    let mut ids = Vec::new();
    for w in listing.split_whitespace() {
        let w = w.trim_matches('"');
        let named: Vec<&str> = if let Some(id) = w.strip_prefix("banger:") {
            vec![id]
        } else if let Some(pair) = w.strip_prefix("banger-link:") {
            pair.split(':').collect()
        } else {
            continue;
        };
        for id in named.into_iter().filter(|s| is_id(s)) {
            if !ids.iter().any(|x| x == id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// The link rules of a listing that name `vm_id`, as [`tagged`] gives them.
fn links_of(listing: &str, vm_id: &str) -> Vec<Vec<String>> {
    commented(listing, |c| {
        c.strip_prefix("banger-link:")
            .is_some_and(|p| p.split(':').any(|id| id == vm_id))
    })
}

/// The `-A` rules of an `iptables -S` listing that carry `tag` as their
/// comment, as argument lists without the `-A`.
pub fn tagged(listing: &str, tag: &str) -> Vec<Vec<String>> {
    commented(listing, |c| c == tag)
}

/// The `-A` rules whose comment `keep` accepts, as argument lists.
fn commented(listing: &str, keep: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .filter(|words| words.windows(2).any(|w| w[0] == "--comment" && keep(&w[1])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_scoped_to_one_address_and_tagged() {
        let r = rules("0123456789abcdef", Ipv4Addr::new(172, 16, 0, 7), "banger0");
        assert_eq!(r.len(), 3);
        for (_, _, spec) in &r {
            assert!(spec.iter().any(|a| a == "172.16.0.7/32"));
            assert!(spec.iter().any(|a| a == "banger:0123456789abcdef"));
        }
        assert_eq!(r[0].0, "nat");
        let listing = "-P FORWARD ACCEPT\n-A FORWARD -s 172.16.0.7/32 -i banger0 -m comment --comment banger:0123456789abcdef -j ACCEPT\n-A FORWARD -s 172.16.0.8/32 -i banger0 -m comment --comment \"banger:fedcba9876543210\" -j ACCEPT\n";
        let t = tagged(listing, "banger:0123456789abcdef");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0][0], "FORWARD");
        assert_eq!(
            tagged(listing, "banger:fedcba9876543210").len(),
            1,
            "quoted comments match too"
        );
        assert!(r[0]
            .2
            .ends_with(&["-j".to_string(), "MASQUERADE".to_string()]));
    }

    #[test]
    fn a_link_admits_one_pair_each_way_and_goes_with_either_vm() {
        let (a, b) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb");
        let ip = |n| Ipv4Addr::new(172, 16, 0, n);
        let r = link_rules((b, ip(3)), (a, ip(2)), "banger0");
        assert_eq!(r.len(), 2);
        let text: Vec<String> = r.iter().map(|w| w.join(" ")).collect();
        assert_eq!(
            text[0],
            "-o banger0 -s 172.16.0.3/32 -d 172.16.0.2/32 -m comment --comment banger-link:aaaaaaaaaaaaaaaa:bbbbbbbbbbbbbbbb -j ACCEPT"
        );
        assert!(text[1].contains("-s 172.16.0.2/32 -d 172.16.0.3/32"));
        let listing = format!(
            "-A banger0-fwd {}\n-A banger0-fwd {}\n-A banger0-fwd -s 172.16.0.9/32 ! -o banger0 -m comment --comment banger:cccccccccccccccc -j ACCEPT\n",
            text[0], text[1]
        );
        assert_eq!(links_of(&listing, a).len(), 2);
        assert_eq!(links_of(&listing, b).len(), 2);
        assert!(links_of(&listing, "cccccccccccccccc").is_empty());
        assert_eq!(
            ids_in(&listing),
            vec![a.to_string(), b.to_string(), "cccccccccccccccc".to_string()]
        );
    }
}
