//! Egress policy: what a VM may reach when nothing leaves but what is
//! allowed (`--egress deny`). Hosts by name (`api.example.com`,
//! `*.example.com`), networks by address (`10.0.0.0/8`, `192.0.2.7:443`).
//!
//! A policy is kept as canonical strings (what the user gave, checked and
//! lowercased), so the store and the wire never depend on a parsed form;
//! [`Allowances`] is the parsed form the daemon decides with.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Names a policy may hold at most, and networks.
pub const MAX_HOSTS: usize = 256;
pub const MAX_NETS: usize = 256;

/// A VM's egress policy: deny everything but these.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names (`example.com`) and wildcards (`*.example.com`: any name
    /// under it, not itself), lowercase, no trailing dot.
    pub hosts: Vec<String>,
    /// `a.b.c.d/len` or `a.b.c.d/len:port` (a bare address is a /32).
    pub nets: Vec<String>,
}

impl EgressPolicy {
    /// Adds allowances (checked; duplicates dropped). On an error nothing
    /// is added.
    pub fn allow(&mut self, hosts: &[String], nets: &[String]) -> Result<(), String> {
        let mut next = self.clone();
        for h in hosts {
            let h = host_pattern(h)?;
            if !next.hosts.contains(&h) {
                next.hosts.push(h);
            }
        }
        for n in nets {
            let n = NetAllow::parse(n)?.to_string();
            if !next.nets.contains(&n) {
                next.nets.push(n);
            }
        }
        if next.hosts.len() > MAX_HOSTS || next.nets.len() > MAX_NETS {
            return Err(format!(
                "an egress policy holds at most {MAX_HOSTS} hosts and {MAX_NETS} networks; use wildcards (*.example.com) or wider networks"
            ));
        }
        *self = next;
        Ok(())
    }

    /// Removes host allowances (as given, wildcards included).
    pub fn disallow(&mut self, hosts: &[String]) -> Result<(), String> {
        for h in hosts {
            let h = host_pattern(h)?;
            self.hosts.retain(|x| *x != h);
        }
        Ok(())
    }

    /// The parsed form. A stored policy was checked when it was made; an
    /// entry that no longer parses allows nothing.
    pub fn allowances(&self) -> Allowances {
        Allowances {
            hosts: self.hosts.clone(),
            nets: self
                .nets
                .iter()
                .filter_map(|n| NetAllow::parse(n).ok())
                .collect(),
        }
    }

    /// One line for people: `deny; allow a, *.b; nets 10.0.0.0/8`.
    pub fn summary(&self) -> String {
        let mut s = "deny".to_string();
        if !self.hosts.is_empty() {
            s += &format!("; allow {}", self.hosts.join(", "));
        }
        if !self.nets.is_empty() {
            s += &format!("; nets {}", self.nets.join(", "));
        }
        if self.hosts.is_empty() && self.nets.is_empty() {
            s += " (nothing allowed)";
        }
        s
    }
}

/// A host name or `*.` wildcard, checked and lowercased.
pub fn host_pattern(raw: &str) -> Result<String, String> {
    let s = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = s.strip_prefix("*.").unwrap_or(&s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{raw:?} is not a host name: give one like api.example.com, or *.example.com for every name under it"
        ));
    }
    if name.parse::<Ipv4Addr>().is_ok() {
        return Err(format!(
            "{raw:?} is an address: allow it with --allow-net {name}"
        ));
    }
    Ok(s)
}

/// A network (and optional port) a VM may reach by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetAllow {
    pub net: Ipv4Addr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl NetAllow {
    pub fn parse(raw: &str) -> Result<NetAllow, String> {
        let bad =
            || format!("{raw:?} is not a network: give 10.0.0.0/8, 192.0.2.7 or 192.0.2.0/24:443");
        let s = raw.trim();
        let (addr, port) = match s.rsplit_once(':') {
            Some((a, p)) => (
                a,
                Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
            ),
            None => (s, None),
        };
        let (ip, prefix) = match addr.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u8>().map_err(|_| bad())?),
            None => (addr, 32),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let net = Ipv4Addr::from(u32::from(ip) & mask(prefix));
        Ok(NetAllow { net, prefix, port })
    }

    pub fn contains(&self, ip: Ipv4Addr, port: u16) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.net)
            && self.port.is_none_or(|p| p == port)
    }
}

impl std::fmt::Display for NetAllow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// A policy, parsed.
#[derive(Debug, Clone, Default)]
pub struct Allowances {
    hosts: Vec<String>,
    nets: Vec<NetAllow>,
}

impl Allowances {
    /// Whether `name` (any case, a trailing dot allowed) is allowed.
    /// `*.example.com` allows `a.example.com` and `a.b.example.com`, not
    /// `example.com`. A name that is not plain ASCII matches nothing.
    pub fn allows_host(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        if !name.is_ascii() || name.is_empty() {
            return false;
        }
        let name = name.to_ascii_lowercase();
        self.hosts.iter().any(|p| match p.strip_prefix("*.") {
            Some(zone) => name
                .strip_suffix(zone)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => *p == name,
        })
    }

    /// Whether an address and port is allowed by a network.
    pub fn allows_addr(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.nets.iter().any(|n| n.contains(ip, port))
    }
}

/// Secrets a VM may have at most.
pub const MAX_SECRETS: usize = 16;
/// Bytes of one secret's value at most.
pub const MAX_SECRET_BYTES: usize = 8 << 10;

/// A secret to keep outside a VM (`--secret NAME@HOST`): the guest sees
/// `NAME` set to a placeholder, which the daemon's proxy swaps for `value`
/// in request headers to `HOST` only. The value crosses the owner's socket
/// once and is never shown (`Debug` hides it).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: String,
    pub host: String,
    pub value: String,
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretSpec({}@{}, value hidden)", self.name, self.host)
    }
}

impl SecretSpec {
    /// Checks name, host and value; the host comes back canonical.
    pub fn checked(&self) -> Result<SecretSpec, String> {
        let n = &self.name;
        let name_ok = !n.is_empty()
            && n.len() <= 64
            && n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!(
                "secret name {n:?} is not an environment variable name (A-Z, a-z, 0-9, _; not a digit first)"
            ));
        }
        let host = host_pattern(&self.host)?;
        if host.starts_with("*.") {
            return Err(format!(
                "--secret {n}@{host}: a secret goes to one host, not a wildcard"
            ));
        }
        let v = &self.value;
        if v.is_empty() || v.len() > MAX_SECRET_BYTES || v.chars().any(|c| c.is_control()) {
            return Err(format!(
                "the value of secret {n} must be 1 to {MAX_SECRET_BYTES} bytes without control characters (line breaks included)"
            ));
        }
        Ok(SecretSpec {
            name: n.clone(),
            host,
            value: v.clone(),
        })
    }
}

/// A VM's secret as the record keeps it: never the value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub host: String,
    /// What the guest sees in `NAME`.
    pub placeholder: String,
}

/// One kind of refused egress, with how often and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressRefusal {
    /// `dns` (a name the guest asked for) or `tcp` (a connection).
    pub kind: String,
    /// The name asked for or sent (SNI, Host), if any.
    pub name: Option<String>,
    /// `a.b.c.d:port` of a refused connection.
    pub address: Option<String>,
    pub count: u64,
    pub first_unix: u64,
    pub last_unix: u64,
}

impl EgressRefusal {
    /// `denied.test (10.0.0.3:443)`, `10.0.0.3:80` or `denied.test`.
    pub fn target(&self) -> String {
        match (&self.name, &self.address) {
            (Some(n), Some(a)) => format!("{n} ({a})"),
            (Some(n), None) => n.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => "?".into(),
        }
    }
}

/// `vm egress`: a VM's policy and what it refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressView {
    pub vm: String,
    /// None: no policy (NAT reaches anything, or no NAT at all).
    pub policy: Option<EgressPolicy>,
    pub refused: Vec<EgressRefusal>,
}

/// A change of policy (`vm set`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressChange {
    /// Some(true): deny by default (keeping allowances); Some(false): no
    /// policy.
    pub deny: Option<bool>,
    pub allow_hosts: Vec<String>,
    pub allow_nets: Vec<String>,
    pub disallow_hosts: Vec<String>,
}

impl EgressChange {
    pub fn is_empty(&self) -> bool {
        self.deny.is_none()
            && self.allow_hosts.is_empty()
            && self.allow_nets.is_empty()
            && self.disallow_hosts.is_empty()
    }

    /// The policy after the change. Allowing on a VM with no policy gives
    /// it one (deny but these).
    pub fn apply(&self, old: Option<&EgressPolicy>) -> Result<Option<EgressPolicy>, String> {
        if self.deny == Some(false) {
            if !self.allow_hosts.is_empty() || !self.allow_nets.is_empty() {
                return Err("--egress open drops the policy; allowances need --egress deny".into());
            }
            return Ok(None);
        }
        let adds = !self.allow_hosts.is_empty() || !self.allow_nets.is_empty();
        if old.is_none() && self.deny.is_none() && !adds {
            if !self.disallow_hosts.is_empty() {
                return Err("the VM has no egress policy to remove hosts from".into());
            }
            return Ok(None);
        }
        let mut p = old.cloned().unwrap_or_default();
        p.allow(&self.allow_hosts, &self.allow_nets)?;
        p.disallow(&self.disallow_hosts)?;
        Ok(Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], nets: &[&str]) -> Allowances {
        let mut p = EgressPolicy::default();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        p.allow(&s(hosts), &s(nets)).unwrap();
        p.allowances()
    }

    #[test]
    fn names_match_exactly_or_under_a_wildcard_and_never_by_suffix_alone() {
        let a = policy(&["Allowed.Test.", "*.example.com"], &[]);
        assert!(a.allows_host("allowed.test"));
        assert!(a.allows_host("ALLOWED.test."));
        assert!(!a.allows_host("notallowed.test"));
        assert!(!a.allows_host("x.allowed.test"));
        assert!(a.allows_host("api.example.com"));
        assert!(a.allows_host("a.b.example.com"));
        assert!(
            !a.allows_host("example.com"),
            "a wildcard is names under it"
        );
        assert!(!a.allows_host("evilexample.com"));
        assert!(!a.allows_host("api.example.com.evil"));
        assert!(!a.allows_host("ÿ.example.com"));
        assert!(!a.allows_host(""));
    }

    #[test]
    fn networks_match_by_prefix_and_port() {
        let a = policy(&[], &["10.1.2.3/8", "192.0.2.7:443"]);
        assert!(a.allows_addr("10.200.0.1".parse().unwrap(), 22));
        assert!(!a.allows_addr("11.0.0.1".parse().unwrap(), 22));
        assert!(a.allows_addr("192.0.2.7".parse().unwrap(), 443));
        assert!(!a.allows_addr("192.0.2.7".parse().unwrap(), 80));
        assert!(!a.allows_addr("192.0.2.8".parse().unwrap(), 443));
        assert_eq!(
            NetAllow::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_form_to_use() {
        let mut p = EgressPolicy::default();
        for h in ["", "*.", "a..b", "-a.com", "a b.com", "1.2.3.4", "é.com"] {
            let e = p.allow(&[h.to_string()], &[]).unwrap_err();
            assert!(
                e.contains("--allow-net") || e.contains("example.com"),
                "{h}: {e}"
            );
        }
        for n in [
            "10.0.0.0/33",
            "10.0.0",
            "10.0.0.0/8:0",
            "10.0.0.0/8:x",
            "host",
        ] {
            assert!(p.allow(&[], &[n.to_string()]).is_err(), "{n}");
        }
        assert_eq!(p, EgressPolicy::default(), "nothing half-added");
    }

    #[test]
    fn a_change_adds_removes_and_drops_a_policy() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let add = EgressChange {
            allow_hosts: s(&["a.test"]),
            ..Default::default()
        };
        let p = add.apply(None).unwrap().unwrap();
        assert_eq!(p.hosts, ["a.test"]);
        let more = EgressChange {
            allow_hosts: s(&["b.test", "a.test"]),
            disallow_hosts: s(&["a.test"]),
            ..Default::default()
        };
        assert_eq!(more.apply(Some(&p)).unwrap().unwrap().hosts, ["b.test"]);
        let open = EgressChange {
            deny: Some(false),
            ..Default::default()
        };
        assert_eq!(open.apply(Some(&p)).unwrap(), None);
        assert_eq!(EgressChange::default().apply(None).unwrap(), None);
    }
}
