//! The `banger.*` kernel command-line parameters (the guest contract).

use std::net::Ipv4Addr;

/// Parameters banger passes to a guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestParams {
    /// `banger.name=`: hostname.
    pub name: Option<String>,
    /// `banger.ip=<addr>/<prefix>`.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// `banger.gw=`.
    pub gw: Option<Ipv4Addr>,
    /// `banger.dns=` (comma-separated).
    pub dns: Vec<Ipv4Addr>,
    /// `banger.ssh_key=<type>:<base64>`: root's authorized key.
    pub ssh_key: Option<String>,
}

impl GuestParams {
    /// Parses a kernel command line; unknown and malformed `banger.*` values
    /// are reported in the second element and otherwise ignored.
    pub fn parse(cmdline: &str) -> (GuestParams, Vec<String>) {
        let mut p = GuestParams::default();
        let mut errors = Vec::new();
        for tok in cmdline.split_whitespace() {
            let Some((k, v)) = tok.split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"');
            match k {
                "banger.name" => {
                    if valid_hostname(v) {
                        p.name = Some(v.to_string());
                    } else {
                        errors.push(format!("ignoring invalid banger.name={v}"));
                    }
                }
                "banger.ip" => match parse_cidr(v) {
                    Some(c) => p.ip = Some(c),
                    None => errors.push(format!("ignoring invalid banger.ip={v}")),
                },
                "banger.gw" => match v.parse() {
                    Ok(g) => p.gw = Some(g),
                    Err(_) => errors.push(format!("ignoring invalid banger.gw={v}")),
                },
                "banger.dns" => {
                    for d in v.split(',').filter(|s| !s.is_empty()) {
                        match d.parse() {
                            Ok(a) => p.dns.push(a),
                            Err(_) => errors.push(format!("ignoring invalid dns server {d}")),
                        }
                    }
                }
                "banger.ssh_key" => match v.split_once(':') {
                    Some((t, b)) if t.starts_with("ssh-") || t.starts_with("ecdsa-") => {
                        if b.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
                        {
                            p.ssh_key = Some(format!("{t} {b}"));
                        } else {
                            errors.push("ignoring malformed banger.ssh_key".into());
                        }
                    }
                    _ => errors.push("ignoring malformed banger.ssh_key".into()),
                },
                _ => {}
            }
        }
        (p, errors)
    }

    /// Renders the parameters as command-line tokens (the host side).
    pub fn to_tokens(&self) -> Vec<String> {
        let mut t = Vec::new();
        if let Some(n) = &self.name {
            t.push(format!("banger.name={n}"));
        }
        if let Some((ip, len)) = self.ip {
            t.push(format!("banger.ip={ip}/{len}"));
        }
        if let Some(g) = self.gw {
            t.push(format!("banger.gw={g}"));
        }
        if !self.dns.is_empty() {
            let d: Vec<String> = self.dns.iter().map(|a| a.to_string()).collect();
            t.push(format!("banger.dns={}", d.join(",")));
        }
        if let Some(k) = &self.ssh_key {
            let mut parts = k.split_whitespace();
            if let (Some(ty), Some(b)) = (parts.next(), parts.next()) {
                t.push(format!("banger.ssh_key={ty}:{b}"));
            }
        }
        t
    }
}

pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((ip.parse().ok()?, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = GuestParams {
            name: Some("box-1".into()),
            ip: Some((Ipv4Addr::new(172, 16, 0, 2), 24)),
            gw: Some(Ipv4Addr::new(172, 16, 0, 1)),
            dns: vec![Ipv4Addr::new(172, 16, 0, 1)],
            ssh_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+x/y=".into()),
        };
        let line = format!("console=ttyS0 {} quiet", p.to_tokens().join(" "));
        let (q, errs) = GuestParams::parse(&line);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(p, q);
    }

    #[test]
    fn bad_values_are_reported_not_applied() {
        let (p, errs) =
            GuestParams::parse("banger.name=Bad.Name banger.ip=1.2.3.4 banger.ssh_key=x");
        assert_eq!(p, GuestParams::default());
        assert_eq!(errs.len(), 3, "{errs:?}");
    }
}
