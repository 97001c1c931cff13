//! Bridges and taps. The [`NetOps`] trait is the seam (real: `ip`); the
//! functions below hold the policy: which names are banger's, idempotency.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{run_tool, HostError};

/// Prefix of every tap banger creates.
pub const TAP_PREFIX: &str = "bgt";
/// Prefix of every bridge banger manages.
pub const BRIDGE_PREFIX: &str = "banger";

/// One network interface as `ip -d -j link` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub name: String,
    /// `bridge`, `tun`, ... (`None` for plain devices).
    pub kind: Option<String>,
    /// For `tun` devices: `tap` or `tun`.
    pub tun_type: Option<String>,
    pub master: Option<String>,
    pub up: bool,
    pub owner_uid: Option<u32>,
    /// An isolated bridge port (`bridge_slave isolated on`).
    pub isolated: bool,
}

/// Low-level link operations.
pub trait NetOps: Send + Sync + 'static {
    fn list_links(&self) -> Result<Vec<LinkInfo>, HostError>;
    fn addresses(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, HostError>;
    /// Every IPv4 subnet the host already uses, with the interface holding
    /// it: its addresses and its routes (all tables; default routes left
    /// out).
    fn used_subnets(&self) -> Result<Vec<UsedSubnet>, HostError>;
    fn add_bridge(&self, name: &str) -> Result<(), HostError>;
    fn add_address(&self, name: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<(), HostError>;
    fn set_up(&self, name: &str) -> Result<(), HostError>;
    fn add_tap(&self, name: &str, owner_uid: u32) -> Result<(), HostError>;
    fn set_master(&self, name: &str, bridge: &str) -> Result<(), HostError>;
    /// Makes a bridge port isolated: it reaches the bridge (the host) and
    /// non-isolated ports, never another isolated port, so guests do not
    /// reach their siblings.
    fn isolate_port(&self, name: &str) -> Result<(), HostError>;
    fn delete_link(&self, name: &str) -> Result<(), HostError>;
    /// The bridge's filter chains (`host::firewall::guard_bridge`).
    fn guard_bridge(&self, bridge: &str) -> Result<(), HostError>;
    /// The bridge's DNS redirect (`host::firewall::guard_dns`).
    fn guard_dns(&self, bridge: &str, addr: Ipv4Addr, port: u16) -> Result<(), HostError>;
    /// Binds a tap to one VM's addresses (`host::firewall::guard_tap`).
    fn guard_tap(&self, tap: &str, ip: Ipv4Addr, mac: &str) -> Result<(), HostError>;
    fn unguard_tap(&self, tap: &str) -> Result<(), HostError>;
}

/// A subnet in use on the host: an address or a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedSubnet {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The interface (`None` for routes without a device, e.g. blackholes).
    pub dev: Option<String>,
    /// `address` or `route`.
    pub what: &'static str,
}

/// Whether two IPv4 subnets share an address.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let p = a.1.min(b.1).min(32);
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    (u32::from(a.0) & mask) == (u32::from(b.0) & mask)
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
}

/// Parses `ip -j -4 route show table all`: destinations with their device,
/// default routes left out.
pub fn parse_routes(json: &str) -> Result<Vec<UsedSubnet>, HostError> {
    let routes: Vec<IpRoute> = serde_json::from_str(json)
        .map_err(|e| HostError::Other(format!("unexpected `ip -j route` output: {e}")))?;
    Ok(routes
        .into_iter()
        .filter(|r| r.dst != "default")
        .filter_map(|r| {
            let (a, p) = r.dst.split_once('/').unwrap_or((&r.dst, "32"));
            let addr = a.parse().ok()?;
            let prefix_len: u8 = p.parse().ok().filter(|p| *p <= 32)?;
            (prefix_len > 0).then_some(UsedSubnet {
                addr,
                prefix_len,
                dev: r.dev,
                what: "route",
            })
        })
        .collect())
}

/// [`NetOps`] through iproute2's `ip`, each call an argv (never a shell).
pub struct IpCommand;

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    linkinfo: Option<IpLinkInfo>,
}

#[derive(Deserialize)]
struct IpLinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
    #[serde(default)]
    info_data: Option<serde_json::Value>,
    #[serde(default)]
    info_slave_data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IpAddrs {
    #[serde(default)]
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

fn ip(args: &[&str]) -> Result<String, HostError> {
    run_tool("ip", "iproute2", args)
}

/// A tap's `user` as `ip -j` prints it: the uid, or — when the host's
/// user database names it — the user's name (then looked up again).
fn tap_user(v: &serde_json::Value) -> Option<u32> {
    if let Some(n) = v.as_u64() {
        return u32::try_from(n).ok();
    }
    let s = v.as_str()?;
    s.parse().ok().or_else(|| {
        nix::unistd::User::from_name(s)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// Parses `ip -d -j link show` output.
pub fn parse_links(json: &str) -> Result<Vec<LinkInfo>, HostError> {
    let links: Vec<IpLink> = serde_json::from_str(json)
        .map_err(|e| HostError::Other(format!("unexpected `ip -j link` output: {e}")))?;
    Ok(links
        .into_iter()
        .map(|l| {
            let data = l.linkinfo.as_ref().and_then(|i| i.info_data.as_ref());
            LinkInfo {
                up: l.flags.iter().any(|f| f == "UP"),
                kind: l.linkinfo.as_ref().and_then(|i| i.info_kind.clone()),
                tun_type: data
                    .and_then(|d| d.get("type"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                owner_uid: data.and_then(|d| d.get("user")).and_then(tap_user),
                isolated: l
                    .linkinfo
                    .as_ref()
                    .and_then(|i| i.info_slave_data.as_ref())
                    .and_then(|d| d.get("isolated"))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
                master: l.master,
                name: l.ifname,
            }
        })
        .collect())
}

impl NetOps for IpCommand {
    fn list_links(&self) -> Result<Vec<LinkInfo>, HostError> {
        parse_links(&ip(&["-d", "-j", "link", "show"])?)
    }
    fn addresses(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>, HostError> {
        let out = ip(&["-j", "addr", "show", "dev", name])?;
        let v: Vec<IpAddrs> = serde_json::from_str(&out)
            .map_err(|e| HostError::Other(format!("unexpected `ip -j addr` output: {e}")))?;
        Ok(v.into_iter()
            .flat_map(|a| a.addr_info)
            .filter(|a| a.family == "inet")
            .filter_map(|a| a.local.parse().ok().map(|ip| (ip, a.prefixlen)))
            .collect())
    }
    fn used_subnets(&self) -> Result<Vec<UsedSubnet>, HostError> {
        let out = ip(&["-j", "-4", "addr", "show"])?;
        let v: Vec<IpAddrs> = serde_json::from_str(&out)
            .map_err(|e| HostError::Other(format!("unexpected `ip -j addr` output: {e}")))?;
        let mut used: Vec<UsedSubnet> = v
            .into_iter()
            .flat_map(|a| {
                let dev = a.ifname;
                a.addr_info
                    .into_iter()
                    .filter(|i| i.family == "inet")
                    .filter_map(move |i| {
                        Some(UsedSubnet {
                            addr: i.local.parse().ok()?,
                            prefix_len: i.prefixlen,
                            dev: Some(dev.clone()),
                            what: "address",
                        })
                    })
            })
            .collect();
        used.extend(parse_routes(&ip(&[
            "-j", "-4", "route", "show", "table", "all",
        ])?)?);
        Ok(used)
    }
    fn add_bridge(&self, name: &str) -> Result<(), HostError> {
        ip(&["link", "add", "name", name, "type", "bridge"]).map(drop)
    }
    fn add_address(&self, name: &str, ipaddr: Ipv4Addr, prefix_len: u8) -> Result<(), HostError> {
        let cidr = format!("{ipaddr}/{prefix_len}");
        ip(&["addr", "replace", &cidr, "dev", name]).map(drop)
    }
    fn set_up(&self, name: &str) -> Result<(), HostError> {
        ip(&["link", "set", "dev", name, "up"]).map(drop)
    }
    fn add_tap(&self, name: &str, owner_uid: u32) -> Result<(), HostError> {
        let uid = owner_uid.to_string();
        ip(&["tuntap", "add", "dev", name, "mode", "tap", "user", &uid]).map(drop)
    }
    fn set_master(&self, name: &str, bridge: &str) -> Result<(), HostError> {
        ip(&["link", "set", "dev", name, "master", bridge]).map(drop)
    }
    fn isolate_port(&self, name: &str) -> Result<(), HostError> {
        ip(&[
            "link",
            "set",
            "dev",
            name,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ])
        .map(drop)
    }
    fn delete_link(&self, name: &str) -> Result<(), HostError> {
        ip(&["link", "del", "dev", name]).map(drop)
    }
    fn guard_bridge(&self, bridge: &str) -> Result<(), HostError> {
        super::firewall::guard_bridge(bridge)
    }
    fn guard_dns(&self, bridge: &str, addr: Ipv4Addr, port: u16) -> Result<(), HostError> {
        super::firewall::guard_dns(bridge, addr, port)
    }
    fn guard_tap(&self, tap: &str, ip: Ipv4Addr, mac: &str) -> Result<(), HostError> {
        super::firewall::guard_tap(tap, ip, mac)
    }
    fn unguard_tap(&self, tap: &str) -> Result<(), HostError> {
        super::firewall::unguard_tap(tap)
    }
}

/// Why a network request was refused before touching the host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetPolicyError {
    #[error("{0:?} is not a banger tap (banger taps are named {TAP_PREFIX}<id>, at most 15 characters); refusing to touch it")]
    NotBangerTap(String),
    #[error("{0:?} is not a banger bridge (names start with {BRIDGE_PREFIX}, at most 15 characters); refusing to touch it")]
    NotBangerBridge(String),
    #[error("{0} exists but is not a {1}; remove or rename it")]
    WrongKind(String, &'static str),
    #[error("tap {0} belongs to uid {1}; refusing to touch another user's tap")]
    OtherOwner(String, u32),
    #[error("{0}/{1} is not a usable private subnet address")]
    BadAddress(Ipv4Addr, u8),
    #[error("{addr}/{prefix_len} overlaps {what} {other} on {dev}: a banger bridge there would take traffic meant for it; set another [network] bridge_address (and pool) in banger's config.toml")]
    Overlap {
        addr: Ipv4Addr,
        prefix_len: u8,
        what: &'static str,
        other: String,
        dev: String,
    },
    #[error("{ip} is not a guest address of {bridge} ({net}); refusing to bind tap {tap} to it")]
    OutsideBridge {
        ip: Ipv4Addr,
        tap: String,
        bridge: String,
        net: String,
    },
}

fn valid_ifname(name: &str, prefix: &str) -> bool {
    name.len() <= 15
        && name.len() > prefix.len()
        && name.starts_with(prefix)
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `name` is a tap name banger may manage.
pub fn is_banger_tap(name: &str) -> bool {
    valid_ifname(name, TAP_PREFIX)
}

/// Whether `name` is a bridge name banger may manage.
pub fn is_banger_bridge(name: &str) -> bool {
    valid_ifname(name, BRIDGE_PREFIX)
}

/// Errors of the policy functions.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Policy(#[from] NetPolicyError),
    #[error("tap {0} does not exist")]
    Missing(String),
    #[error(transparent)]
    Host(#[from] HostError),
}

fn find(ops: &dyn NetOps, name: &str) -> Result<Option<LinkInfo>, HostError> {
    Ok(ops.list_links()?.into_iter().find(|l| l.name == name))
}

/// Creates the bridge if missing, ensures its address and brings it up.
pub fn ensure_bridge(
    ops: &dyn NetOps,
    name: &str,
    address: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetError> {
    if !is_banger_bridge(name) {
        return Err(NetPolicyError::NotBangerBridge(name.into()).into());
    }
    if !address.is_private() || !(8..=29).contains(&prefix_len) {
        return Err(NetPolicyError::BadAddress(address, prefix_len).into());
    }
    let existing = find(ops, name)?;
    if let Some(l) = &existing {
        if l.kind.as_deref() != Some("bridge") {
            return Err(NetPolicyError::WrongKind(name.into(), "bridge").into());
        }
    }
    // Nobody else's subnet: no address or route of another interface may
    // share an address with the bridge's (the owner's config is not a check).
    for u in ops.used_subnets()? {
        if u.dev.as_deref() == Some(name) {
            continue;
        }
        if overlaps((address, prefix_len), (u.addr, u.prefix_len)) {
            return Err(NetPolicyError::Overlap {
                addr: address,
                prefix_len,
                what: u.what,
                other: format!("{}/{}", u.addr, u.prefix_len),
                dev: u.dev.unwrap_or_else(|| "no device".into()),
            }
            .into());
        }
    }
    if existing.is_none() {
        ops.add_bridge(name)?;
    }
    if !ops.addresses(name)?.contains(&(address, prefix_len)) {
        ops.add_address(name, address, prefix_len)?;
    }
    ops.set_up(name)?;
    Ok(())
}

/// Creates a tap owned by `owner_uid` on `bridge`; idempotent.
pub fn create_tap(
    ops: &dyn NetOps,
    name: &str,
    bridge: &str,
    owner_uid: u32,
) -> Result<(), NetError> {
    if !is_banger_tap(name) {
        return Err(NetPolicyError::NotBangerTap(name.into()).into());
    }
    if !is_banger_bridge(bridge) {
        return Err(NetPolicyError::NotBangerBridge(bridge.into()).into());
    }
    match find(ops, name)? {
        Some(l) if l.kind.as_deref() != Some("tun") || l.tun_type.as_deref() != Some("tap") => {
            return Err(NetPolicyError::WrongKind(name.into(), "tap").into())
        }
        Some(l) if tap_owner(&l) != owner_uid => {
            return Err(NetPolicyError::OtherOwner(name.into(), tap_owner(&l)).into())
        }
        Some(_) => {}
        None => ops.add_tap(name, owner_uid)?,
    }
    ops.set_master(name, bridge)?;
    ops.isolate_port(name)?;
    ops.set_up(name)?;
    Ok(())
}

/// Who a tap belongs to: its `user`, or root when none is set.
pub fn tap_owner(l: &LinkInfo) -> u32 {
    l.owner_uid.unwrap_or(0)
}

/// Deletes one of `owner_uid`'s banger taps; absent is success.
pub fn delete_tap(ops: &dyn NetOps, name: &str, owner_uid: u32) -> Result<(), NetError> {
    if !is_banger_tap(name) {
        return Err(NetPolicyError::NotBangerTap(name.into()).into());
    }
    match find(ops, name)? {
        None => Ok(()),
        Some(l) if l.kind.as_deref() != Some("tun") => {
            Err(NetPolicyError::WrongKind(name.into(), "tap").into())
        }
        Some(l) if tap_owner(&l) != owner_uid => {
            Err(NetPolicyError::OtherOwner(name.into(), tap_owner(&l)).into())
        }
        Some(_) => {
            ops.unguard_tap(name)?;
            Ok(ops.delete_link(name)?)
        }
    }
}

/// Checks that `name` is one of `owner_uid`'s banger taps; returns it.
pub fn owned_tap(ops: &dyn NetOps, name: &str, owner_uid: u32) -> Result<LinkInfo, NetError> {
    if !is_banger_tap(name) {
        return Err(NetPolicyError::NotBangerTap(name.into()).into());
    }
    match find(ops, name)? {
        Some(l) if l.kind.as_deref() == Some("tun") && tap_owner(&l) == owner_uid => Ok(l),
        Some(l) if l.kind.as_deref() == Some("tun") => {
            Err(NetPolicyError::OtherOwner(name.into(), tap_owner(&l)).into())
        }
        Some(_) => Err(NetPolicyError::WrongKind(name.into(), "tap").into()),
        None => Err(NetError::Missing(name.into())),
    }
}

/// Checks that `ip` is a guest address of the bridge `tap` is on: inside
/// the bridge's subnet, not the bridge's own, not the network or broadcast
/// address.
pub fn tap_address_ok(ops: &dyn NetOps, link: &LinkInfo, ip: Ipv4Addr) -> Result<(), NetError> {
    let tap = link.name.as_str();
    let bridge = link
        .master
        .clone()
        .filter(|m| is_banger_bridge(m))
        .ok_or_else(|| HostError::Other(format!("tap {tap} is on no banger bridge")))?;
    guest_address_ok(ops, &bridge, ip, tap)
}

/// `ip` is a guest address of `bridge`'s subnet (not the bridge's own, the
/// network or the broadcast address); `what` names who asked in the error.
pub fn guest_address_ok(
    ops: &dyn NetOps,
    bridge: &str,
    ip: Ipv4Addr,
    what: &str,
) -> Result<(), NetError> {
    let (tap, bridge) = (what, bridge.to_string());
    let nets = ops.addresses(&bridge)?;
    let fits = nets.iter().any(|&(addr, p)| {
        let host_bits = 32 - u32::from(p);
        let mask = if p == 0 { 0 } else { u32::MAX << host_bits };
        let (net, ipu) = (u32::from(addr) & mask, u32::from(ip));
        ipu & mask == net && ip != addr && ipu != net && ipu != net | !mask
    });
    if fits {
        Ok(())
    } else {
        Err(NetPolicyError::OutsideBridge {
            ip,
            tap: tap.into(),
            net: nets
                .iter()
                .map(|(a, p)| format!("{a}/{p}"))
                .collect::<Vec<_>>()
                .join(", "),
            bridge,
        }
        .into())
    }
}

/// `owner_uid`'s banger taps.
pub fn list_taps(ops: &dyn NetOps, owner_uid: u32) -> Result<Vec<LinkInfo>, NetError> {
    Ok(ops
        .list_links()?
        .into_iter()
        .filter(|l| {
            is_banger_tap(&l.name) && l.kind.as_deref() == Some("tun") && tap_owner(l) == owner_uid
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taps_user_by_name_is_its_uid() {
        let j = |user: &str| {
            format!(
                r#"[{{"ifname":"bgt1","flags":[],"linkinfo":{{"info_kind":"tun","info_data":{{"type":"tap","user":{user}}}}}}}]"#
            )
        };
        let uid = |user: &str| parse_links(&j(user)).unwrap()[0].owner_uid;
        assert_eq!(uid("1000"), Some(1000));
        assert_eq!(uid("\"4243\""), Some(4243));
        // `ip` prints a name when the user database has the uid.
        assert_eq!(uid("\"root\""), Some(0));
        let daemon = nix::unistd::User::from_name("daemon").unwrap().unwrap();
        assert_eq!(uid("\"daemon\""), Some(daemon.uid.as_raw()));
        assert_eq!(uid("\"no-such-user-here\""), None);
    }

    #[test]
    fn names() {
        assert!(is_banger_tap("bgt0a1b2c3d"));
        assert!(!is_banger_tap("bgt"));
        assert!(!is_banger_tap("eth0"));
        assert!(!is_banger_tap("bgt-very-long-name-x"));
        assert!(!is_banger_tap("bgt;rm"));
        assert!(is_banger_bridge("banger0"));
        assert!(!is_banger_bridge("docker0"));
    }

    #[test]
    fn parses_ip_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"]},
          {"ifindex":5,"ifname":"bgt1","flags":["BROADCAST","UP"],"master":"banger0",
           "linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false,"user":1000},
             "info_slave_kind":"bridge","info_slave_data":{"isolated":true}}},
          {"ifindex":4,"ifname":"banger0","flags":["UP"],"linkinfo":{"info_kind":"bridge","info_data":{}}}]"#;
        let links = parse_links(json).unwrap();
        assert_eq!(links.len(), 3);
        assert_eq!(links[1].tun_type.as_deref(), Some("tap"));
        assert_eq!(links[1].owner_uid, Some(1000));
        assert!(links[1].isolated && !links[2].isolated);
        assert_eq!(links[1].master.as_deref(), Some("banger0"));
        assert_eq!(links[2].kind.as_deref(), Some("bridge"));
    }

    /// A NetOps whose every mutation fails, for error paths a real host will
    /// not produce on demand.
    struct Failing(Vec<LinkInfo>);
    impl NetOps for Failing {
        fn list_links(&self) -> Result<Vec<LinkInfo>, HostError> {
            Ok(self.0.clone())
        }
        fn addresses(&self, _: &str) -> Result<Vec<(Ipv4Addr, u8)>, HostError> {
            Ok(vec![])
        }
        fn used_subnets(&self) -> Result<Vec<UsedSubnet>, HostError> {
            Ok(vec![])
        }
        fn add_bridge(&self, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no bridges".into()))
        }
        fn add_address(&self, _: &str, _: Ipv4Addr, _: u8) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn set_up(&self, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn add_tap(&self, _: &str, _: u32) -> Result<(), HostError> {
            Err(HostError::Other("no taps".into()))
        }
        fn set_master(&self, _: &str, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn delete_link(&self, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn isolate_port(&self, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn guard_bridge(&self, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn guard_dns(&self, _: &str, _: Ipv4Addr, _: u16) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn guard_tap(&self, _: &str, _: Ipv4Addr, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
        fn unguard_tap(&self, _: &str) -> Result<(), HostError> {
            Err(HostError::Other("no".into()))
        }
    }

    #[test]
    fn policy_refuses_foreign_interfaces_before_touching_anything() {
        let ops = Failing(vec![LinkInfo {
            name: "eth0".into(),
            ..Default::default()
        }]);
        assert!(matches!(
            delete_tap(&ops, "eth0", 0),
            Err(NetError::Policy(NetPolicyError::NotBangerTap(_)))
        ));
        assert!(matches!(
            ensure_bridge(&ops, "eth0", Ipv4Addr::new(172, 16, 0, 1), 24),
            Err(NetError::Policy(NetPolicyError::NotBangerBridge(_)))
        ));
        assert!(matches!(
            ensure_bridge(&ops, "banger0", Ipv4Addr::new(8, 8, 8, 8), 24),
            Err(NetError::Policy(NetPolicyError::BadAddress(..)))
        ));
    }

    #[test]
    fn subnets_overlap_when_they_share_an_address() {
        let a = |s: &str, p| (s.parse::<Ipv4Addr>().unwrap(), p);
        assert!(overlaps(a("10.99.0.50", 26), a("10.99.0.1", 24)));
        assert!(overlaps(a("10.99.0.1", 24), a("10.99.0.53", 32)));
        assert!(overlaps(a("10.0.0.1", 8), a("10.99.0.0", 24)));
        assert!(!overlaps(a("172.16.0.1", 24), a("172.17.0.1", 16)));
        assert!(!overlaps(a("10.99.0.129", 26), a("10.99.0.1", 25)));
        let r = parse_routes(
            r#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth0"},
                {"dst":"10.99.0.0/24","dev":"eth1"},{"type":"local","dst":"10.99.0.1","dev":"eth1"},
                {"type":"blackhole","dst":"192.168.7.0/24"}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(
            (r[1].addr, r[1].prefix_len),
            ("10.99.0.1".parse().unwrap(), 32)
        );
        assert_eq!(r[2].dev, None);
    }

    #[test]
    fn a_non_tap_with_a_tap_name_is_left_alone() {
        let ops = Failing(vec![LinkInfo {
            name: "bgt1".into(),
            kind: Some("veth".into()),
            ..Default::default()
        }]);
        assert!(matches!(
            delete_tap(&ops, "bgt1", 0),
            Err(NetError::Policy(NetPolicyError::WrongKind(..)))
        ));
    }

    #[test]
    fn host_failures_surface() {
        let ops = Failing(vec![]);
        let e = create_tap(&ops, "bgt1", "banger0", 0).unwrap_err();
        assert!(e.to_string().contains("no taps"), "{e}");
        // Deleting an absent tap is success without touching anything.
        delete_tap(&ops, "bgt1", 0).unwrap();
    }

    #[test]
    fn another_users_taps_are_neither_listed_nor_touched() {
        let ops = Failing(vec![LinkInfo {
            name: "bgtother1".into(),
            kind: Some("tun".into()),
            tun_type: Some("tap".into()),
            owner_uid: Some(1001),
            ..Default::default()
        }]);
        assert!(list_taps(&ops, 1000).unwrap().is_empty());
        assert_eq!(list_taps(&ops, 1001).unwrap().len(), 1);
        assert!(matches!(
            delete_tap(&ops, "bgtother1", 1000),
            Err(NetError::Policy(NetPolicyError::OtherOwner(_, 1001)))
        ));
        assert!(matches!(
            create_tap(&ops, "bgtother1", "banger0", 1000),
            Err(NetError::Policy(NetPolicyError::OtherOwner(_, 1001)))
        ));
    }
}

/// A tap device as the helper reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TapInfo {
    pub name: String,
    pub master: Option<String>,
    pub up: bool,
}
