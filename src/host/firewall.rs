//! What a guest may send. Two layers, both installed by `bangerd-root`:
//!
//! - **Per tap (ebtables, bridge family)**: a chain named after the tap lets
//!   through only IPv4 and ARP whose source MAC and IP are the VM's own, and
//!   drops everything else (spoofed frames, IPv6, other ethertypes). Bound to
//!   a tap when a VM leases it ([`guard_tap`]); removed with the tap.
//! - **Per bridge (iptables)**: `<bridge>-in` for traffic to the host (only
//!   DNS, ping and replies to connections the host opened) and `<bridge>-fwd`
//!   for routed traffic (never link-local/cloud metadata; out of the host
//!   only for VMs with NAT, whose accept rules `nat::enable` inserts; never
//!   back onto the bridge). Installed idempotently by `EnsureBridge`.
//! - **Per port (bridge)**: every tap is an isolated bridge port
//!   (`net::NetOps::isolate_port`): guests reach the host, not each other.
//!
//! Every rule is built from typed values (names checked by `net::is_banger_*`,
//! an `Ipv4Addr`, a MAC checked here); nothing comes from a shell string.

use std::net::Ipv4Addr;

use super::nat::iptables;
use super::{run_tool, run_tool_with, system_tool, HostError};

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

/// Applies `cmds` (`ebtables` arguments) as one transaction of
/// `ebtables-restore --noflush`: one process reading the ruleset once,
/// where each `ebtables` call reads it again (they added ~20 ms each to
/// every VM start and delete). Every argument is one word (tap names,
/// addresses and MACs are checked), so no command can add another.
fn eb_batch(cmds: &[Vec<String>]) -> Result<(), HostError> {
    if cmds.is_empty() {
        return Ok(());
    }
    let mut text = String::from("*filter\n");
    for c in cmds {
        if c.iter()
            .any(|a| a.is_empty() || a.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
        {
            return Err(HostError::Other(format!("bad ebtables arguments {c:?}")));
        }
        text.push_str(&c.join(" "));
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    ebtables()?;
    run_tool_with(
        "ebtables-restore",
        "iptables (ebtables-nft) or ebtables",
        &["--noflush"],
        Some(text.into_bytes()),
    )
    .map(|_| ())
}

/// What removing `tap`'s binding takes, from one listing of the table.
fn unguard_cmds(tap: &str) -> Result<Vec<Vec<String>>, HostError> {
    let listing = eb(&["-L"])?;
    let (jump, mut chain, mut own) = (format!("-i {tap} -j {tap}"), "", false);
    let mut cmds = Vec::new();
    let w = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for l in listing.lines() {
        if let Some(rest) = l.strip_prefix("Bridge chain: ") {
            chain = rest.split(',').next().unwrap_or("");
            own |= chain == tap;
        } else if matches!(chain, "INPUT" | "FORWARD") && l.trim() == jump {
            cmds.push(w(&["-D", chain, "-i", tap, "-j", tap]));
        }
    }
    if own {
        cmds.push(w(&["-F", tap]));
        cmds.push(w(&["-X", tap]));
    }
    Ok(cmds)
}

/// Binds `tap` to one VM's addresses: replaces any earlier binding, in
/// one transaction.
pub fn guard_tap(tap: &str, ip: Ipv4Addr, mac: &str) -> Result<(), HostError> {
    if !valid_mac(mac) {
        return Err(HostError::Other(format!("bad MAC {mac:?}")));
    }
    if !super::net::is_banger_tap(tap) {
        return Err(HostError::Other(format!("not a banger tap: {tap:?}")));
    }
    let mut cmds = unguard_cmds(tap)?;
    cmds.push(vec!["-N".into(), tap.into()]);
    for r in tap_rules(ip, mac) {
        let mut a = vec!["-A".to_string(), tap.to_string()];
        a.extend(r);
        cmds.push(a);
    }
    for hook in ["INPUT", "FORWARD"] {
        cmds.push(vec![
            "-A".into(),
            hook.into(),
            "-i".into(),
            tap.into(),
            "-j".into(),
            tap.into(),
        ]);
    }
    eb_batch(&cmds)
}

/// Removes a tap's binding (absent is fine), in one transaction.
pub fn unguard_tap(tap: &str) -> Result<(), HostError> {
    eb_batch(&unguard_cmds(tap)?)
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
        // DNS is admitted only by `dns_rules` (the bridge address, after the
        // redirect): no blanket port 53, which let guests ask any resolver
        // listening on any host address.
        (
            inp.clone(),
            s(&["-p", "icmp", "--icmp-type", "echo-request", "-j", "ACCEPT"]),
        ),
        (inp, s(&["-j", "DROP"])),
        // Position 1 of the forward chain; NAT'd VMs' accepts go at 2.
        (fwd.clone(), s(&["-d", "169.254.0.0/16", "-j", "DROP"])),
        // Nothing routed back onto the bridge: a guest that sends a
        // sibling's address to the gateway would get round the ports'
        // isolation (`net::NetOps::isolate_port`).
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
    // Rules of an older banger that are no longer wanted go.
    for c in [&inp, &fwd] {
        for rule in stale_rules(&ipt(&["-S", c])?, bridge, c) {
            let mut a = vec!["-D", c.as_str()];
            a.extend(rule.iter().map(String::as_str));
            ipt(&a)?;
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

/// Tag of the DNS rules, so they can be found and replaced.
const DNS_TAG: &str = "banger-dns";

/// The DNS rules of a bridge: (table, chain, rule). Guests ask the bridge
/// address on port 53; the daemon (not root, so not on 53) listens on
/// `port`, where the redirect sends them.
pub fn dns_rules(
    bridge: &str,
    addr: Ipv4Addr,
    port: u16,
) -> Vec<(&'static str, String, Vec<String>)> {
    let (inp, _) = chains(bridge);
    let (addr, port) = (format!("{addr}/32"), port.to_string());
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut rules = vec![(
        "nat",
        "PREROUTING".to_string(),
        s(&[
            "-d",
            &addr,
            "-i",
            bridge,
            "-p",
            "udp",
            "-m",
            "udp",
            "--dport",
            "53",
            "-m",
            "comment",
            "--comment",
            DNS_TAG,
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ]),
    )];
    // UDP: the name server; TCP: the egress proxy of policed guests (the
    // same port number; their connections are redirected there per VM by
    // `nat::police`).
    for proto in ["udp", "tcp"] {
        rules.push((
            "filter",
            inp.clone(),
            s(&[
                "-d",
                &addr,
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                &port,
                "-m",
                "comment",
                "--comment",
                DNS_TAG,
                "-j",
                "ACCEPT",
            ]),
        ));
        // The daemon binds the bridge address, which other interfaces
        // reach too (the weak host model): only the bridge and the host
        // itself may ask it.
        rules.push((
            "filter",
            "INPUT".into(),
            s(&[
                "-d",
                &addr,
                "!",
                "-i",
                bridge,
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                &port,
                "-m",
                "addrtype",
                "!",
                "--src-type",
                "LOCAL",
                "-m",
                "comment",
                "--comment",
                DNS_TAG,
                "-j",
                "DROP",
            ]),
        ));
    }
    rules
}

/// Installs a bridge's DNS rules for `port` (0: none), replacing rules for
/// another port or address. Idempotent.
pub fn guard_dns(bridge: &str, addr: Ipv4Addr, port: u16) -> Result<(), HostError> {
    let want = if port == 0 {
        vec![]
    } else {
        dns_rules(bridge, addr, port)
    };
    let (inp, _) = chains(bridge);
    // Stale rules of this bridge (another port or address) go first.
    for (table, chain) in [
        ("nat", "PREROUTING".to_string()),
        ("filter", inp.clone()),
        ("filter", "INPUT".to_string()),
    ] {
        let listed = ipt(&["-t", table, "-S", &chain])?;
        for line in listed.lines().filter(|l| l.contains(DNS_TAG)) {
            let args: Vec<&str> = line.split_whitespace().collect();
            let Some(rule) = args.get(2..) else { continue };
            let ours = chain == inp || rule.windows(2).any(|w| w == ["-i", bridge]);
            let wanted = want.iter().any(|(t, c, r)| {
                *t == table && *c == chain && r.iter().map(String::as_str).eq(rule.iter().copied())
            });
            if ours && !wanted {
                let mut a = vec!["-t", table, "-D", chain.as_str()];
                a.extend_from_slice(rule);
                ipt(&a)?;
            }
        }
    }
    for (table, chain, rule) in &want {
        let mut check = vec!["-t", *table, "-C", chain.as_str()];
        check.extend(rule.iter().map(String::as_str));
        if ipt(&check).is_ok() {
            continue;
        }
        // Before the input chain's final drop; first in INPUT.
        let mut a = if chain == &inp {
            vec!["-t", *table, "-I", chain.as_str(), "2"]
        } else if chain == "INPUT" {
            vec!["-t", *table, "-I", chain.as_str(), "1"]
        } else {
            vec!["-t", *table, "-A", chain.as_str()]
        };
        a.extend(rule.iter().map(String::as_str));
        ipt(&a)?;
    }
    Ok(())
}

/// Rules older bangers put in a bridge's chains and this one no longer
/// wants, as `iptables -S` prints them.
fn obsolete(bridge: &str) -> [String; 3] {
    [
        // Blanket DNS: any host address's port 53.
        "-p udp -m udp --dport 53 -j ACCEPT".into(),
        "-p tcp -m tcp --dport 53 -j ACCEPT".into(),
        // Routed VM-to-VM traffic.
        format!("-o {bridge} -j ACCEPT"),
    ]
}

/// The obsolete rules of `chain` (a chain of `bridge`) in an `iptables -S`
/// listing.
fn stale_rules(listing: &str, bridge: &str, chain: &str) -> Vec<Vec<String>> {
    let prefix = format!("-A {chain} ");
    let old = obsolete(bridge);
    listing
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| old.iter().any(|o| o == l.trim()))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn has_vm_rules(chain: &str) -> Result<bool, HostError> {
    Ok(ipt(&["-S", chain])?.contains("banger:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_argument_cannot_smuggle_another_command() {
        for bad in ["bgt0 -j ACCEPT", "bgt0\n-F INPUT", ""] {
            let cmds = vec![vec!["-A".to_string(), bad.to_string()]];
            assert!(
                matches!(eb_batch(&cmds), Err(HostError::Other(m)) if m.contains("bad ebtables")),
                "{bad:?}"
            );
        }
    }

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
        // Nothing is routed from the bridge back onto it (VM to VM).
        assert!(
            !fwd.iter()
                .any(|(_, r)| r.windows(2).any(|w| w == ["-o", "banger0"])
                    && r.last().is_some_and(|j| j == "ACCEPT")),
            "{fwd:?}"
        );
        let listing = "-A banger0-fwd -d 169.254.0.0/16 -j DROP\n-A banger0-fwd -o banger0 -j ACCEPT\n-A banger0-fwd -j DROP\n";
        assert_eq!(
            stale_rules(listing, "banger0", "banger0-fwd"),
            vec![vec![
                "-o".to_string(),
                "banger0".into(),
                "-j".into(),
                "ACCEPT".into()
            ]]
        );
    }

    #[test]
    fn guests_reach_port_53_only_on_the_bridge_address() {
        let r = bridge_rules("banger0");
        for (_, rule) in &r {
            let opens_53 = rule.windows(2).any(|w| w == ["--dport", "53"]);
            assert!(!opens_53, "a blanket port-53 accept: {rule:?}");
        }
        // An older chain's blanket rules are found as stale, and only them.
        let listing = "-N banger0-in\n\
            -A banger0-in -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            -A banger0-in -d 172.16.0.1/32 -p udp -m udp --dport 42069 -m comment --comment banger-dns -j ACCEPT\n\
            -A banger0-in -p udp -m udp --dport 53 -j ACCEPT\n\
            -A banger0-in -p tcp -m tcp --dport 53 -j ACCEPT\n\
            -A banger0-in -p icmp -m icmp --icmp-type 8 -j ACCEPT\n\
            -A banger0-in -j DROP\n";
        let stale = stale_rules(listing, "banger0", "banger0-in");
        let joined: Vec<String> = stale.iter().map(|r| r.join(" ")).collect();
        assert!(
            joined.contains(&"-p udp -m udp --dport 53 -j ACCEPT".to_string()),
            "{joined:?}"
        );
        assert!(
            joined.contains(&"-p tcp -m tcp --dport 53 -j ACCEPT".to_string()),
            "{joined:?}"
        );
        assert!(
            !joined
                .iter()
                .any(|r| r.contains("DROP") || r.contains("banger-dns") || r.contains("conntrack")),
            "{joined:?}"
        );
    }

    #[test]
    fn dns_rules_redirect_port_53_to_the_daemon_and_admit_only_that() {
        let r = dns_rules("banger0", Ipv4Addr::new(172, 16, 0, 1), 42069);
        let (_, chain, redirect) = &r[0];
        assert_eq!(chain, "PREROUTING");
        assert!(redirect.windows(2).any(|w| w == ["--dport", "53"]));
        assert!(redirect.windows(2).any(|w| w == ["--to-ports", "42069"]));
        assert!(redirect.windows(2).any(|w| w == ["-i", "banger0"]));
        let (_, chain, accept) = &r[1];
        assert_eq!(chain, "banger0-in");
        assert!(accept.windows(2).any(|w| w == ["--dport", "42069"]));
        assert!(accept.windows(2).any(|w| w == ["-d", "172.16.0.1/32"]));
        // Other interfaces do not reach the daemon's port; the host does.
        let (_, chain, drop) = &r[2];
        assert_eq!(chain, "INPUT");
        assert!(
            drop.windows(3).any(|w| w == ["!", "-i", "banger0"]),
            "{drop:?}"
        );
        assert!(
            drop.windows(3).any(|w| w == ["!", "--src-type", "LOCAL"]),
            "{drop:?}"
        );
        assert_eq!(drop.last().unwrap(), "DROP");
        // The same for TCP, where policed guests' connections are sent.
        let (_, chain, accept) = &r[3];
        assert_eq!(chain, "banger0-in");
        assert!(accept.windows(2).any(|w| w == ["-p", "tcp"]));
        assert!(accept.windows(2).any(|w| w == ["--dport", "42069"]));
        let (_, chain, drop) = &r[4];
        assert_eq!(
            (chain.as_str(), drop.last().unwrap().as_str()),
            ("INPUT", "DROP")
        );
        assert!(drop.windows(2).any(|w| w == ["-p", "tcp"]));
        assert_eq!(r.len(), 5);
    }
}
