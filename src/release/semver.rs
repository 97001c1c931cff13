//! Release versions: `vMAJOR.MINOR.PATCH`, optionally `-PRERELEASE`
//! (dot-separated, numeric parts compared as numbers, a prerelease before
//! its release). `dev` — a build that is not a release — has no place in
//! the order.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    core: [u64; 3],
    pre: Vec<String>,
    text: String,
}

impl Version {
    /// Parses `v1.2.3` or `v1.2.3-rc.1`; None for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let rest = s.strip_prefix('v')?;
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let mut nums = core.split('.').map(|n| {
            (!n.is_empty() && n.len() <= 18 && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
        });
        let core = [nums.next()??, nums.next()??, nums.next()??];
        if nums.next().is_some() {
            return None;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(p) => {
                let parts: Vec<String> = p.split('.').map(str::to_string).collect();
                let ok = parts.iter().all(|x| {
                    !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !ok {
                    return None;
                }
                parts
            }
        };
        (s.len() <= 60).then(|| Version {
            core,
            pre,
            text: s.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn cmp_pre(a: &[String], b: &[String]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    for (x, y) in a.iter().zip(b) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| cmp_pre(&self.pre, &other.pre))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn versions_order_as_releases_do() {
        assert!(v("v0.2.0") > v("v0.1.9"));
        assert!(v("v0.10.0") > v("v0.9.0"), "numbers, not text");
        assert!(v("v1.0.0") > v("v1.0.0-rc.2"), "a prerelease comes first");
        assert!(v("v1.0.0-rc.10") > v("v1.0.0-rc.2"));
        assert!(v("v1.0.0-rc.1") > v("v1.0.0-beta"));
        assert_eq!(v("v1.2.3").cmp(&v("v1.2.3")), Ordering::Equal);
    }

    #[test]
    fn what_is_not_a_release_version_does_not_parse() {
        for s in [
            "dev",
            "1.2.3",
            "v1.2",
            "v1.2.3.4",
            "v1..3",
            "v1.2.x",
            "v1.2.3-",
            "v1.2.3-a..b",
            "v1.2.3-a/b",
        ] {
            assert_eq!(Version::parse(s), None, "{s}");
        }
    }
}
