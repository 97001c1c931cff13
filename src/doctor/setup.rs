//! `doctor`'s rows about how banger is set up for this user: whether the
//! CLI, the daemon, the helper and the installed services are one build;
//! whether `ssh <name>.vm` works (banger's ssh_config included); and how
//! Firecracker is installed on this distribution.

use std::path::Path;

use super::{row, Check, Status};
use crate::vmm::firecracker::TESTED_VERSION;

/// One build's identity: its version (`v0.1.0`, `dev`) and full commit
/// (`unknown` outside a checkout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub version: String,
    pub commit: String,
}

impl Build {
    /// This binary's.
    pub fn this() -> Build {
        Build {
            version: crate::version::version().into(),
            commit: crate::version::COMMIT.into(),
        }
    }

    fn short(&self) -> String {
        let c: String = self.commit.chars().take(8).collect();
        format!("{} (commit {c})", self.version)
    }

    /// How `other` differs from this one, when it does: the version, or
    /// (both known) the commit.
    fn drift(&self, other: &Build) -> Option<String> {
        let known = |c: &str| c != "unknown" && !c.is_empty();
        if self.version != other.version {
            Some(format!("version {} here, {}", self.version, other.version))
        } else if known(&self.commit) && known(&other.commit) && self.commit != other.commit {
            Some(format!("commit {} here, {}", self.short(), other.short()))
        } else {
            None
        }
    }
}

/// The `banger version` row: this CLI's build against the running
/// daemon's (`None`: not running), the helper's version as the daemon
/// reports it, and the version `system install` recorded.
pub fn version_row(
    cli: &Build,
    daemon: Option<&Build>,
    helper: Option<&str>,
    installed: Option<&str>,
) -> Check {
    let mut detail = format!("CLI {}", cli.short());
    let mut drift = vec![];
    if let Some(d) = daemon {
        detail += &format!(", daemon {}", d.short());
        if let Some(why) = cli.drift(d) {
            drift.push(format!("the daemon differs ({why})"));
        }
    }
    if let Some(h) = helper {
        detail += &format!(", helper {h}");
        if h != cli.version {
            drift.push(format!("the helper is {h}"));
        }
    }
    if let Some(i) = installed {
        detail += &format!(", installed {i}");
        if i != cli.version {
            drift.push(format!("the services were installed from {i}"));
        }
    }
    if drift.is_empty() {
        return row("banger version", Status::Pass, detail, None);
    }
    row(
        "banger version",
        Status::Warn,
        format!("{detail}: {}", drift.join("; ")),
        Some(
            "run one build: restart the daemon with this CLI (banger daemon stop), or reinstall the services (sudo banger system install)"
                .into(),
        ),
    )
}

/// Whether `~/.ssh/config` (its text, when it exists) includes banger's
/// ssh_config at `path`. No row when banger has not written one yet.
pub fn ssh_include_row(path: &Path, exists: bool, user_config: Option<&str>) -> Option<Check> {
    if !exists {
        return None;
    }
    let p = path.display().to_string();
    let included = user_config.is_some_and(|t| {
        t.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next().is_some_and(|k| k.eq_ignore_ascii_case("include")) && w.any(|a| a == p)
        })
    });
    Some(if included {
        row(
            "ssh config",
            Status::Pass,
            format!("{p} is included from ~/.ssh/config: ssh <name>.vm works"),
            None,
        )
    } else {
        row(
            "ssh config",
            Status::Warn,
            format!("{p} is not included from ~/.ssh/config: plain `ssh <name>.vm` does not know the VMs (banger vm ssh does)"),
            Some("banger ssh-config --install".into()),
        )
    })
}

/// [`ssh_include_row`] for banger's ssh_config in `layout` and this
/// user's `~/.ssh/config`.
pub fn ssh_row(layout: &crate::paths::Layout) -> Option<Check> {
    let config = crate::guest::ssh::SshFiles::of(layout).config;
    let user = std::env::var_os("HOME")
        .and_then(|h| std::fs::read_to_string(Path::new(&h).join(".ssh/config")).ok());
    ssh_include_row(&config, config.is_file(), user.as_deref())
}

/// How to install Firecracker here, from `/etc/os-release`'s text: a
/// package where the distribution has one, else the upstream release.
pub fn firecracker_install_hint(os_release: Option<&str>) -> String {
    let field = |key: &str| -> Vec<String> {
        os_release
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(|v| {
                v.trim_matches('"')
                    .split_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let ids: Vec<String> = field("ID").into_iter().chain(field("ID_LIKE")).collect();
    let is = |d: &str| ids.iter().any(|i| i == d);
    let (a, b, c) = TESTED_VERSION;
    let upstream = format!(
        "download firecracker-v{a}.{b}.{c}-x86_64.tgz from https://github.com/firecracker-microvm/firecracker/releases/tag/v{a}.{b}.{c} and install its firecracker-v{a}.{b}.{c}-x86_64 as /usr/local/bin/firecracker (root-owned, mode 0755)"
    );
    if is("nixos") {
        "nix-env -iA nixos.firecracker".into()
    } else if is("arch") {
        "sudo pacman -S firecracker".into()
    } else if is("alpine") {
        "sudo apk add firecracker".into()
    } else if is("debian") || is("ubuntu") {
        format!("Debian and Ubuntu do not package it: {upstream}")
    } else {
        upstream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &str, c: &str) -> Build {
        Build {
            version: v.into(),
            commit: c.into(),
        }
    }

    #[test]
    fn versions_that_differ_in_version_or_known_commit_warn() {
        let cli = b("dev", "1c1ca7d6aaaaaaaa");
        let r = version_row(&cli, None, None, None);
        assert_eq!(r.status, Status::Pass);
        assert_eq!(r.detail, "CLI dev (commit 1c1ca7d6)");
        let same = version_row(&cli, Some(&cli), Some("dev"), None);
        assert_eq!(same.status, Status::Pass, "{}", same.detail);
        let r = version_row(&cli, Some(&b("dev", "2d2d2d2dbbbbbbbb")), None, None);
        assert_eq!(r.status, Status::Warn);
        assert!(
            r.detail
                .contains("commit dev (commit 1c1ca7d6) here, dev (commit 2d2d2d2d)"),
            "{}",
            r.detail
        );
        assert!(r.hint.unwrap().contains("banger daemon stop"));
        // An unknown commit on either side compares versions only.
        let r = version_row(&cli, Some(&b("dev", "unknown")), None, None);
        assert_eq!(r.status, Status::Pass);
        let r = version_row(&cli, Some(&b("v0.2.0", "unknown")), None, None);
        assert!(
            r.detail.contains("version dev here, v0.2.0"),
            "{}",
            r.detail
        );
        // In system mode, the helper and the install record count too.
        let r = version_row(&cli, Some(&cli), Some("v0.1.0"), Some("dev"));
        assert_eq!(r.status, Status::Warn);
        assert!(r.detail.contains("the helper is v0.1.0"), "{}", r.detail);
        let r = version_row(&cli, Some(&cli), Some("dev"), Some("v0.1.0"));
        assert!(r.detail.contains("installed from v0.1.0"), "{}", r.detail);
    }

    #[test]
    fn an_ssh_config_not_included_warns_with_the_command_that_includes_it() {
        let p = Path::new("/home/u/.local/state/banger/ssh/ssh_config");
        assert!(ssh_include_row(p, false, None).is_none());
        let r = ssh_include_row(p, true, None).unwrap();
        assert_eq!(r.status, Status::Warn);
        assert_eq!(r.hint.as_deref(), Some("banger ssh-config --install"));
        let r = ssh_include_row(p, true, Some("Host x\n  User y\n")).unwrap();
        assert_eq!(r.status, Status::Warn);
        let installed = crate::cli::services::with_include("Host x\n", &p.display().to_string());
        let r = ssh_include_row(p, true, Some(&installed)).unwrap();
        assert_eq!(r.status, Status::Pass, "{installed}");
        let by_hand = format!("include /etc/other {}\n", p.display());
        assert_eq!(
            ssh_include_row(p, true, Some(&by_hand)).unwrap().status,
            Status::Pass
        );
    }

    #[test]
    fn the_firecracker_hint_follows_the_distribution() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        let h = firecracker_install_hint(Some(debian));
        let (a, b, c) = TESTED_VERSION;
        assert!(h.starts_with("Debian and Ubuntu do not package it"), "{h}");
        assert!(h.contains(&format!("releases/tag/v{a}.{b}.{c}")), "{h}");
        let ubuntu = "ID=ubuntu\nID_LIKE=debian\n";
        assert!(firecracker_install_hint(Some(ubuntu)).starts_with("Debian and Ubuntu"));
        assert_eq!(
            firecracker_install_hint(Some("ID=manjaro\nID_LIKE=arch\n")),
            "sudo pacman -S firecracker"
        );
        assert_eq!(
            firecracker_install_hint(Some("ID=\"nixos\"\n")),
            "nix-env -iA nixos.firecracker"
        );
        assert_eq!(
            firecracker_install_hint(Some("ID=alpine\n")),
            "sudo apk add firecracker"
        );
        let fedora = firecracker_install_hint(Some("ID=fedora\n"));
        assert!(fedora.starts_with("download firecracker-v"), "{fedora}");
        assert_eq!(firecracker_install_hint(None), fedora);
    }
}
