//! Host resolver routing for `<name>.vm`: where systemd-resolved runs, the
//! bridge link gets the daemon's DNS server and the `~vm` routing domain
//! (`resolvectl`, argv only); elsewhere nothing is changed and the caller
//! is told the one line to configure by hand.

use std::net::Ipv4Addr;

use super::{run_tool, system_tool, HostError};

/// The `resolvectl` runs that route `~vm` to `addr:port` on `bridge`, in
/// order. The routing domain goes first: a link with a DNS server and no
/// routing-only domain is a default route for *every* name, so setting the
/// server first would, for a moment, send all the host's lookups to the
/// bridge (where a guest could answer them).
pub fn route_argv(bridge: &str, addr: Ipv4Addr, port: u16) -> Vec<Vec<String>> {
    vec![
        vec!["domain".into(), bridge.into(), "~vm".into()],
        vec!["default-route".into(), bridge.into(), "false".into()],
        vec!["dns".into(), bridge.into(), format!("{addr}:{port}")],
    ]
}

/// What to configure where banger cannot: a dnsmasq-style line.
pub fn manual_hint(addr: Ipv4Addr, port: u16) -> String {
    format!(
        "send the vm domain to {addr} port {port}: dnsmasq `server=/vm/{addr}#{port}`, unbound `forward-zone: name: \"vm\" forward-addr: {addr}@{port}`, or query it directly: dig @{addr} -p {port} <name>.vm"
    )
}

/// Routes `~vm` through the bridge. `(true, what)` when resolvectl took it;
/// `(false, why and the manual line)` when there is no resolvectl or it
/// failed (systemd-resolved not running).
pub fn route(bridge: &str, addr: Ipv4Addr, port: u16) -> Result<(bool, String), HostError> {
    if system_tool("resolvectl").is_none() {
        return Ok((
            false,
            format!(
                "systemd-resolved is not installed (no resolvectl); {}",
                manual_hint(addr, port)
            ),
        ));
    }
    for argv in route_argv(bridge, addr, port) {
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        if let Err(e) = run_tool("resolvectl", "systemd-resolved", &a) {
            // Nothing half-set stays behind (a domain without its server).
            let _ = run_tool("resolvectl", "systemd-resolved", &["revert", bridge]);
            return Ok((
                false,
                format!(
                    "resolvectl refused ({e}); is systemd-resolved running? {}",
                    manual_hint(addr, port)
                ),
            ));
        }
    }
    Ok((
        true,
        format!("systemd-resolved sends *.vm to {addr}:{port} (link {bridge})"),
    ))
}

/// Reverts the bridge link's resolver settings (nothing to do without
/// resolvectl).
pub fn unroute(bridge: &str) -> Result<(bool, String), HostError> {
    if system_tool("resolvectl").is_none() {
        return Ok((false, "no resolvectl; nothing to revert".into()));
    }
    match run_tool("resolvectl", "systemd-resolved", &["revert", bridge]) {
        Ok(_) => Ok((true, format!("reverted the resolver settings of {bridge}"))),
        Err(e) => Ok((false, format!("resolvectl revert {bridge}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_vm_domain_to_the_bridge_address_and_port() {
        let a = route_argv("banger0", Ipv4Addr::new(172, 16, 0, 1), 42069);
        // At every step the link is never a default DNS route: the routing
        // domain and default-route=false come before the server.
        assert_eq!(a[0], ["domain", "banger0", "~vm"]);
        assert_eq!(a[1], ["default-route", "banger0", "false"]);
        assert_eq!(a[2], ["dns", "banger0", "172.16.0.1:42069"]);
        let dns_at = a.iter().position(|x| x[0] == "dns").unwrap();
        let domain_at = a.iter().position(|x| x[0] == "domain").unwrap();
        assert!(domain_at < dns_at);
        assert!(manual_hint(Ipv4Addr::new(172, 16, 0, 1), 42069)
            .contains("server=/vm/172.16.0.1#42069"));
    }
}
