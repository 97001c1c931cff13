//! What a guest may send. Two layers, both installed by `bangerd-root`:
//!
//! - **Per tap (ebtables, bridge family)**: a chain named after the tap lets
//!   through only IPv4 and ARP whose source MAC and IP are the VM's own, and
//!   drops everything else (spoofed frames, IPv6, other ethertypes). Bound to
//!   a tap when a VM leases it ([`guard_tap`]); removed with the tap.
//! - **Per bridge (iptables)**: `<bridge>-in` for traffic to the host (only
//!   DNS, ping and replies to connections the host opened) and `<bridge>-fwd`
//!   for routed traffic (never link-local/cloud metadata; out of the host
//!   only for VMs with NAT, whose accept rules `nat::enable` inserts; VM to
//!   VM on the bridge stays open). Installed idempotently by `EnsureBridge`.
//!
//! Every rule is built from typed values (names checked by `net::is_banger_*`,
//! an `Ipv4Addr`, a MAC checked here); nothing comes from a shell string.

use std::net::Ipv4Addr;

use super::nat::iptables;
use super::{run_tool, system_tool, HostError};

/// A MAC address as `02:42:ac:10:00:02`, or `None`.
pub fn valid_mac(mac: &str) -> bool {
    mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
}

fn ebtables() -> Result<&'static str, HostError> {
    if system_tool("ebtables").is_some() {
        Ok("ebtables")
    } else {
        Err(HostError::MissingTool {
            tool: "ebtables".into(),
            package: "iptables (ebtables-nft) or ebtables".into(),
        })
    }
}

fn eb(args: &[&str]) -> Result<String, HostError> {
    run_tool(ebtables()?, "ebtables", args)
}

/// The rules of a tap's chain, in order.
pub fn tap_rules(ip: Ipv4Addr, mac: &str) -> Vec<Vec<String>> {
    let ip = ip.to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["-p", "IPv4", "-s", mac, "--ip-src", &ip, "-j", "RETURN"]),
        s(&[
            "-p",
            "ARP",
            "-s",
            mac,
            "--arp-ip-src",
            &ip,
            "--arp-mac-src",
            mac,
            "-j",
            "RETURN",
        ]),
        s(&["-j", "DROP"]),
    ]
}

/// Binds `tap` to one VM's addresses: replaces any earlier binding.
pub fn guard_tap(tap: &str, ip: Ipv4Addr, mac: &str) -> Result<(), HostError> {
    if !valid_mac(mac) {
        return Err(HostError::Other(format!("bad MAC {mac:?}")));
    }
    unguard_tap(tap)?;
    eb(&["-N", tap])?;
    for r in tap_rules(ip, mac) {
        let mut a = vec!["-A", tap];
        a.extend(r.iter().map(String::as_str));
        eb(&a)?;
    }
    for hook in ["INPUT", "FORWARD"] {
        eb(&["-A", hook, "-i", tap, "-j", tap])?;
    }
    Ok(())
}

/// Removes a tap's binding (absent is fine).
pub fn unguard_tap(tap: &str) -> Result<(), HostError> {
    for hook in ["INPUT", "FORWARD"] {
        let jump = format!("-i {tap} -j {tap}");
        if eb(&["-L", hook])?.lines().any(|l| l.trim() == jump) {
            eb(&["-D", hook, "-i", tap, "-j", tap])?;
        }
    }
    let chain = format!("Bridge chain: {tap},");
    if eb(&["-L"])?.lines().any(|l| l.starts_with(&chain)) {
        eb(&["-F", tap])?;
        eb(&["-X", tap])?;
    }
    Ok(())
}

/// Taps that have a guard chain (for tests and `doctor`).
pub fn guarded_taps() -> Result<Vec<String>, HostError> {
    Ok(eb(&["-L"])?
        .lines()
        .filter_map(|l| l.strip_prefix("Bridge chain: "))
        .filter_map(|l| l.split(',').next())
        .filter(|n| super::net::is_banger_tap(n))
        .map(str::to_string)
        .collect())
}

/// Chain names of a bridge.
pub fn chains(bridge: &str) -> (String, String) {
    (format!("{bridge}-in"), format!("{bridge}-fwd"))
}

/// The bridge's base rules: (chain, rule) in order.
pub fn bridge_rules(bridge: &str) -> Vec<(String, Vec<String>)> {
    let (inp, fwd) = chains(bridge);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            inp.clone(),
            s(&[
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ]),
        ),
        (
            inp.clone(),
            s(&["-p", "udp", "--dport", "53", "-j", "ACCEPT"]),
        ),
        (
            inp.clone(),
            s(&["-p", "tcp", "--dport", "53", "-j", "ACCEPT"]),
        ),
        (
            inp.clone(),
            s(&["-p", "icmp", "--icmp-type", "echo-request", "-j", "ACCEPT"]),
        ),
        (inp, s(&["-j", "DROP"])),
        // Position 1 of the forward chain; NAT'd VMs' accepts go at 2.
        (fwd.clone(), s(&["-d", "169.254.0.0/16", "-j", "DROP"])),
        (fwd.clone(), s(&["-o", bridge, "-j", "ACCEPT"])),
        (fwd, s(&["-j", "DROP"])),
    ]
}

fn ipt(args: &[&str]) -> Result<String, HostError> {
    let mut a = vec!["-w", "10"];
    a.extend_from_slice(args);
    run_tool(iptables()?, "iptables", &a)
}

fn exists(chain: &str, rule: &[String]) -> bool {
    let mut a = vec!["-C", chain];
    a.extend(rule.iter().map(String::as_str));
    ipt(&a).is_ok()
}

/// Installs the bridge's chains and jumps (first in INPUT and FORWARD);
/// what exists already is left as it is, so running VMs keep their rules.
pub fn guard_bridge(bridge: &str) -> Result<(), HostError> {
    let (inp, fwd) = chains(bridge);
    for c in [&inp, &fwd] {
        if ipt(&["-S", c]).is_err() {
            ipt(&["-N", c])?;
        }
    }
    // A chain is filled in one go when empty; a partly filled one (an
    // interrupted helper) is rebuilt, it holds no VM's rules yet.
    for c in [&inp, &fwd] {
        let rules: Vec<(String, Vec<String>)> = bridge_rules(bridge)
            .into_iter()
            .filter(|(chain, _)| chain == c)
            .collect();
        if !rules.iter().all(|(chain, r)| exists(chain, r)) && !has_vm_rules(c)? {
            ipt(&["-F", c])?;
            for (chain, r) in &rules {
                let mut a = vec!["-A", chain.as_str()];
                a.extend(r.iter().map(String::as_str));
                ipt(&a)?;
            }
        }
    }
    for (hook, dir, chain) in [("INPUT", "-i", &inp), ("FORWARD", "-i", &fwd)] {
        let jump = vec![
            dir.to_string(),
            bridge.to_string(),
            "-j".into(),
            chain.clone(),
        ];
        if !exists(hook, &jump) {
            let mut a = vec!["-I", hook, "1"];
            a.extend(jump.iter().map(String::as_str));
            ipt(&a)?;
        }
    }
    Ok(())
}

fn has_vm_rules(chain: &str) -> Result<bool, HostError> {
    Ok(ipt(&["-S", chain])?.contains("banger:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_rules_admit_only_the_vms_own_addresses() {
        let r = tap_rules(Ipv4Addr::new(172, 16, 0, 7), "02:42:ac:10:00:07");
        assert_eq!(r.len(), 3);
        assert!(r[0].windows(2).any(|w| w == ["--ip-src", "172.16.0.7"]));
        assert!(r[1]
            .windows(2)
            .any(|w| w == ["--arp-mac-src", "02:42:ac:10:00:07"]));
        assert_eq!(r[2], ["-j", "DROP"], "everything else is dropped");
        assert!(valid_mac("02:42:ac:10:00:07"));
        for bad in [
            "02:42:ac:10:00",
            "02:42:ac:10:00:0g",
            "02:42:ac:10:00:07 -j ACCEPT",
        ] {
            assert!(!valid_mac(bad), "{bad}");
        }
    }

    #[test]
    fn bridge_rules_end_in_drop_and_never_forward_link_local() {
        let r = bridge_rules("banger0");
        let inp: Vec<_> = r.iter().filter(|(c, _)| c == "banger0-in").collect();
        let fwd: Vec<_> = r.iter().filter(|(c, _)| c == "banger0-fwd").collect();
        assert_eq!(inp.last().unwrap().1, ["-j", "DROP"]);
        assert_eq!(fwd.last().unwrap().1, ["-j", "DROP"]);
        assert_eq!(fwd[0].1, ["-d", "169.254.0.0/16", "-j", "DROP"]);
    }
}
