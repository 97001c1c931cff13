//! NAT for one guest /32: an iptables MASQUERADE rule and two FORWARD rules,
//! each tagged with the VM id so they can be found and removed. Idempotent.

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

fn rule_exists(bin: &str, table: &str, chain: &str, spec: &[String]) -> bool {
    let mut args = vec!["-w", "10", "-t", table, "-C", chain];
    args.extend(spec.iter().map(String::as_str));
    run_tool(bin, "iptables", &args).is_ok()
}

/// Installs the rules (those already present are left alone) and enables
/// forwarding.
pub fn enable(vm_id: &str, ip: Ipv4Addr, bridge: &str) -> Result<(), HostError> {
    let bin = iptables()?;
    super::firewall::guard_bridge(bridge)?;
    for (table, chain, spec) in rules(vm_id, ip, bridge) {
        if !rule_exists(bin, table, &chain, &spec) {
            // Into the bridge's chain at 2 (before its final drop).
            let mut args = if chain.ends_with("-fwd") {
                vec!["-w", "10", "-t", table, "-I", chain.as_str(), "2"]
            } else {
                vec!["-w", "10", "-t", table, "-A", chain.as_str()]
            };
            args.extend(spec.iter().map(String::as_str));
            run_tool(bin, "iptables", &args)?;
        }
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| HostError::Other(format!("enabling IPv4 forwarding: {e}")))?;
    Ok(())
}

/// Removes every rule tagged with the VM's id (whatever bridge or address
/// it was made for); absent is fine.
pub fn disable(vm_id: &str) -> Result<(), HostError> {
    let bin = iptables()?;
    let tag = format!("banger:{vm_id}");
    for table in ["nat", "filter"] {
        let listing = run_tool(bin, "iptables", &["-w", "10", "-t", table, "-S"])?;
        for rule in tagged(&listing, &tag) {
            let mut args = vec!["-w", "10", "-t", table, "-D"];
            args.extend(rule.iter().map(String::as_str));
            run_tool(bin, "iptables", &args)?;
        }
    }
    Ok(())
}

/// The VM ids that have NAT rules (to sweep those no live VM owns).
pub fn tagged_vms() -> Result<Vec<String>, HostError> {
    let bin = iptables()?;
    let mut ids = Vec::new();
    for table in ["nat", "filter"] {
        let listing = run_tool(bin, "iptables", &["-w", "10", "-t", table, "-S"])?;
        for w in listing.split_whitespace() {
            let w = w.trim_matches('"');
            if let Some(id) = w.strip_prefix("banger:") {
                if id.len() == 16
                    && id.chars().all(|c| c.is_ascii_hexdigit())
                    && !ids.iter().any(|x| x == id)
                {
                    ids.push(id.to_string());
                }
            }
        }
    }
    Ok(ids)
}

/// The `-A` rules of an `iptables -S` listing that carry `tag` as their
/// comment, as argument lists without the `-A`.
pub fn tagged(listing: &str, tag: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .filter(|words| words.windows(2).any(|w| w[0] == "--comment" && w[1] == tag))
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
}
