//! The host's package manager and the names its distribution gives the
//! packages banger's tools come in, so `doctor` prints an install line that
//! works here (Debian, Fedora, Arch, openSUSE, NixOS).

/// A package manager doctor can name packages for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Apt,
    Dnf,
    Pacman,
    Zypper,
    Nix,
}

impl Manager {
    pub fn name(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Pacman => "pacman",
            Manager::Zypper => "zypper",
            Manager::Nix => "nix",
        }
    }

    /// The command that installs `packages`.
    pub fn install_line(self, packages: &[&str]) -> String {
        let p = packages.join(" ");
        match self {
            Manager::Apt => format!("sudo apt-get install {p}"),
            Manager::Dnf => format!("sudo dnf install {p}"),
            Manager::Pacman => format!("sudo pacman -S {p}"),
            Manager::Zypper => format!("sudo zypper install {p}"),
            Manager::Nix => {
                let attrs: Vec<String> = packages.iter().map(|x| format!("nixpkgs.{x}")).collect();
                format!(
                    "nix-env -iA {} (NixOS: add them to environment.systemPackages)",
                    attrs.join(" ")
                )
            }
        }
    }

    /// This distribution's package for Debian's `debian` (None: it has
    /// none — the Debian-only tools).
    pub fn package(self, debian: &str) -> Option<&'static str> {
        let row: [&'static str; 6] = match debian {
            // debian, apt, dnf, pacman, zypper, nix
            "qemu-system-x86" => [
                "qemu-system-x86",
                "qemu-system-x86",
                "qemu-system-x86-core",
                "qemu-system-x86",
                "qemu-x86",
                "qemu",
            ],
            "qemu-utils" => [
                "qemu-utils",
                "qemu-utils",
                "qemu-img",
                "qemu-img",
                "qemu-tools",
                "qemu",
            ],
            "e2fsprogs" => ["e2fsprogs"; 6],
            "iptables" => [
                "iptables",
                "iptables",
                "iptables-nft",
                "iptables-nft",
                "iptables",
                "iptables",
            ],
            "iproute2" => [
                "iproute2", "iproute2", "iproute", "iproute2", "iproute2", "iproute2",
            ],
            "git" => ["git"; 6],
            "openssh-client" => [
                "openssh-client",
                "openssh-client",
                "openssh-clients",
                "openssh",
                "openssh-clients",
                "openssh",
            ],
            "curl" => ["curl"; 6],
            "zstd" => ["zstd"; 6],
            _ => {
                return (self == Manager::Apt)
                    .then(|| debian_only(debian))
                    .flatten()
            }
        };
        Some(match self {
            Manager::Apt => row[1],
            Manager::Dnf => row[2],
            Manager::Pacman => row[3],
            Manager::Zypper => row[4],
            Manager::Nix => row[5],
        })
    }
}

/// Debian's own names for the Debian-only packages.
fn debian_only(debian: &str) -> Option<&'static str> {
    ["mmdebstrap", "apt", "dpkg"]
        .into_iter()
        .find(|p| *p == debian)
}

/// The manager from `/etc/os-release` (`ID`, then `ID_LIKE`), else the
/// first whose command `has` finds.
pub fn detect(os_release: Option<&str>, has: &dyn Fn(&str) -> bool) -> Option<Manager> {
    let by_id = |id: &str| match id {
        "debian" | "ubuntu" | "linuxmint" | "pop" | "raspbian" => Some(Manager::Apt),
        "fedora" | "rhel" | "centos" | "rocky" | "almalinux" | "amzn" => Some(Manager::Dnf),
        "arch" | "manjaro" | "endeavouros" => Some(Manager::Pacman),
        "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" | "sles" | "suse" => {
            Some(Manager::Zypper)
        }
        "nixos" => Some(Manager::Nix),
        _ => None,
    };
    if let Some(text) = os_release {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().trim_matches('"').to_ascii_lowercase())
        };
        let ids = field("ID=").into_iter().chain(
            field("ID_LIKE=")
                .into_iter()
                .flat_map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>()),
        );
        for id in ids {
            if let Some(m) = by_id(&id) {
                return Some(m);
            }
        }
    }
    [
        ("apt-get", Manager::Apt),
        ("dnf", Manager::Dnf),
        ("pacman", Manager::Pacman),
        ("zypper", Manager::Zypper),
        ("nix-env", Manager::Nix),
    ]
    .into_iter()
    .find(|(cmd, _)| has(cmd))
    .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_distribution_gets_its_own_line() {
        let none = |_: &str| false;
        let fedora = "NAME=\"Fedora Linux\"\nID=fedora\n";
        let m = detect(Some(fedora), &none).unwrap();
        assert_eq!(
            m.install_line(&[
                m.package("qemu-utils").unwrap(),
                m.package("openssh-client").unwrap()
            ]),
            "sudo dnf install qemu-img openssh-clients"
        );
        let manjaro = "ID=manjaro\nID_LIKE=arch\n";
        assert_eq!(detect(Some(manjaro), &none), Some(Manager::Pacman));
        let tw = "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n";
        assert_eq!(
            detect(Some(tw), &none).unwrap().package("qemu-system-x86"),
            Some("qemu-x86")
        );
        let nix = detect(Some("ID=nixos\n"), &none).unwrap();
        assert!(nix
            .install_line(&["qemu"])
            .starts_with("nix-env -iA nixpkgs.qemu"));
        assert_eq!(
            nix.package("mmdebstrap"),
            None,
            "Debian's tools exist only there"
        );
        assert_eq!(Manager::Apt.package("mmdebstrap"), Some("mmdebstrap"));
        assert_eq!(
            detect(Some("ID=unknownos\n"), &|c| c == "zypper"),
            Some(Manager::Zypper)
        );
        assert_eq!(detect(None, &none), None);
    }
}
