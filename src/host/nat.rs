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
/// forwarding for the bridge and the uplinks.
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
    forward_for(bridge)
}

/// The forwarding switch of one interface.
fn forwarding_path(iface: &str) -> Option<std::path::PathBuf> {
    let ok = !iface.is_empty()
        && iface.len() <= 15
        && iface != "."
        && iface != ".."
        && !iface.contains('/')
        && iface != "all"
        && iface != "default";
    ok.then(|| format!("/proc/sys/net/ipv4/conf/{iface}/forwarding").into())
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

/// Forwarding for the bridge and the uplinks only (IPv4 decides by the
/// interface a packet came in on: out through the bridge, back through
/// the uplink), never the host-wide `ip_forward`. What was off is
/// recorded and switched back by [`restore_forwarding`].
fn forward_for(bridge: &str) -> Result<(), HostError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut ifaces = vec![bridge.to_string()];
    ifaces.extend(uplinks()?);
    let record = forwarding_record()?;
    for i in ifaces {
        let Some(p) = forwarding_path(&i) else {
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
    // The last NAT VM gone: forwarding back as it was.
    if tagged_vms()?.is_empty() {
        restore_forwarding()?;
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
