//! Host resolver routing for `<name>.vm`: where systemd-resolved runs, the
//! bridge link gets the daemon's DNS server and the `~vm` routing domain
//! (`resolvectl`, argv only); elsewhere nothing is changed and the caller
//! is told the one line to configure by hand.

use std::net::Ipv4Addr;

use super::{run_tool, system_tool, HostError};

/// The `resolvectl` runs that route `~vm` to `addr:port` on `bridge`.
pub fn route_argv(bridge: &str, addr: Ipv4Addr, port: u16) -> Vec<Vec<String>> {
    vec![
        vec!["dns".into(), bridge.into(), format!("{addr}:{port}")],
        vec!["domain".into(), bridge.into(), "~vm".into()],
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
        assert_eq!(a[0], ["dns", "banger0", "172.16.0.1:42069"]);
        assert_eq!(a[1], ["domain", "banger0", "~vm"]);
        assert!(manual_hint(Ipv4Addr::new(172, 16, 0, 1), 42069)
            .contains("server=/vm/172.16.0.1#42069"));
    }
}
