//! Image recipes: the one place that lists what goes into a banger-built
//! image. A recipe is data (packages, files, hooks); the helper runs it.

use crate::digest::{sha256_hex, KeyHasher};

/// The statically linked guest agent, built by `build.rs`.
pub static AGENT: &[u8] = include_bytes!(env!("BANGER_AGENT_BIN"));

/// Bumped when anything below changes in a way the package lists do not show.
pub const RECIPE_REVISION: u32 = 2;

/// Packages every banger image needs to work at all.
pub const ESSENTIAL: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "openssh-server",
    "iproute2",
    "ca-certificates",
    "curl",
    "kmod",
    "udev",
    "sudo",
];

/// Packages a developer expects to find (our opinion).
pub const OPINION: &[&str] = &[
    "git",
    "jq",
    "ripgrep",
    "fd-find",
    "build-essential",
    "tmux",
    "htop",
    "shellcheck",
    "python3",
    "less",
    "vim-tiny",
    "netcat-openbsd",
];

/// What the sandbox image adds: Docker (engine, CLI, Compose v1, which
/// `docker compose` reaches through [`COMPOSE_PLUGIN`]).
pub const SANDBOX: &[&str] = &["docker.io", "docker-compose", "apparmor"];

/// Units the sandbox image leaves off at boot: Docker starts on its
/// socket's first use, so a guest that never runs `docker` boots (and is
/// ready) as fast as the default image.
pub const SANDBOX_DISABLE: &[&str] = &["docker.service", "containerd.service", "apparmor.service"];

/// mise, from its prebuilt package on the npm registry (a package
/// registry the build reaches; the binary is glibc-linked and runs on
/// bookworm), pinned by version and sha256.
pub const MISE_VERSION: &str = "2026.9.15";
pub const MISE_URL: &str =
    "https://registry.npmjs.org/@jdxcode/mise-linux-x64/-/mise-linux-x64-2026.9.15.tgz";
pub const MISE_SHA256: &str = "b51f2463bc4fcdc3b0959b1454792f64be3612e73d856cbca4a062e39e070e74";

/// A buildable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    pub name: &'static str,
    pub distro: &'static str,
    pub suite: &'static str,
    /// The kernel this image pairs with (its modules go into the image).
    pub kernel_ref: &'static str,
    /// Where that kernel comes from (`kernel pull <source>`).
    pub kernel_source: &'static str,
    /// Packages beyond [`ESSENTIAL`] and [`OPINION`].
    pub extra: &'static [&'static str],
    /// Units disabled (not masked: they may still be started).
    pub disable: &'static [&'static str],
    /// mise in `/usr/local/bin` ([`MISE_URL`]).
    pub mise: bool,
}

/// Every recipe.
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "debian-bookworm",
        distro: "debian",
        suite: "bookworm",
        kernel_ref: "debian-cloud",
        kernel_source: "debian-cloud",
        extra: &[],
        disable: &[],
        mise: false,
    },
    Recipe {
        name: "debian-bookworm-sandbox",
        distro: "debian",
        suite: "bookworm",
        kernel_ref: "debian-cloud",
        kernel_source: "debian-cloud",
        extra: SANDBOX,
        disable: SANDBOX_DISABLE,
        mise: true,
    },
];

/// The default image name.
pub const DEFAULT_IMAGE: &str = "debian-bookworm";

/// The kernel pulled images pair with.
pub const DEFAULT_KERNEL: &str = "debian-cloud";

/// Finds a recipe by name.
pub fn find(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

/// Names of every recipe, for error messages.
pub fn names() -> String {
    RECIPES
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Recipe {
    /// All packages, essential first.
    pub fn packages(&self) -> Vec<&'static str> {
        ESSENTIAL
            .iter()
            .chain(OPINION.iter())
            .chain(self.extra.iter())
            .copied()
            .collect()
    }

    /// mmdebstrap customize hooks of this recipe, after banger's own
    /// (`$1`: the image's root): shell text made of this module's constants
    /// only. mise is fetched on the host (its CA store: the image's may
    /// not know a site's proxy), then checked and installed in the chroot.
    pub fn customize_hooks(&self) -> Vec<String> {
        let mut v = vec![];
        if !self.disable.is_empty() {
            v.push(format!(
                "chroot \"$1\" systemctl disable --quiet {}",
                self.disable.join(" ")
            ));
        }
        if self.mise {
            v.push(format!(
                "curl -fsSL --retry 3 --max-time 600 -o \"$1\"/tmp/mise.tgz {MISE_URL}"
            ));
            v.push(format!(
                "chroot \"$1\" sh -c \"echo '{MISE_SHA256}  /tmp/mise.tgz' | sha256sum -c --quiet \
                 && tar -xzf /tmp/mise.tgz -C /tmp package/bin/mise \
                 && install -m 0755 /tmp/package/bin/mise /usr/local/bin/mise \
                 && rm -rf /tmp/mise.tgz /tmp/package\""
            ));
        }
        v
    }

    /// Files banger adds to this recipe's image: [`overlay`], and for
    /// Docker the `docker compose` plugin.
    pub fn overlay(&self) -> Vec<OverlayEntry> {
        let mut v = overlay();
        if self.extra.contains(&"docker-compose") {
            v.push(OverlayEntry::Dir {
                path: "usr/libexec/docker/cli-plugins",
                mode: 0o755,
            });
            v.push(OverlayEntry::File {
                path: "usr/libexec/docker/cli-plugins/docker-compose",
                mode: 0o755,
                data: COMPOSE_PLUGIN.into(),
            });
        }
        v
    }
}

/// `docker compose …` as a Docker CLI plugin over Debian's Compose v1
/// (`docker-compose`): the plugin metadata the CLI asks for, then the v1
/// command with the same arguments.
pub const COMPOSE_PLUGIN: &str = r#"#!/bin/sh
# banger: `docker compose` runs Debian's docker-compose (v1).
if [ "$1" = docker-cli-plugin-metadata ]; then
  echo '{"SchemaVersion":"0.1.0","Vendor":"banger","Version":"1.29.2","ShortDescription":"Docker Compose (Debian docker-compose v1)"}'
  exit 0
fi
shift
exec /usr/bin/docker-compose "$@"
"#;

/// A file, directory or symlink placed into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayEntry {
    Dir {
        path: &'static str,
        mode: u32,
    },
    File {
        path: &'static str,
        mode: u32,
        data: Vec<u8>,
    },
}

// Early (no default dependencies: it needs only a writable /etc), so the
// key is made while sysinit runs rather than after basic.target, where it
// held sshd — and with it the readiness point — back by ~0.9 s under TCG.
const KEYGEN_UNIT: &str = "\
[Unit]
Description=Generate this VM's own SSH host keys
DefaultDependencies=no
After=systemd-remount-fs.service local-fs.target
Before=ssh.service shutdown.target
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
# Ed25519 only: RSA key generation takes many seconds under emulation.
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target ssh.service
";

const SSHD_CONF: &str = "\
# banger: root by key only, fast logins, the VM's own ed25519 host key
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
GSSAPIAuthentication no
";

// No lines: the initramfs mounts the root (/dev/vda) and the agent the work
// disk (/dev/vdb on /root) before init runs; entries would only make systemd
// wait for udev's device units (about 7 s under emulation). ext4's journal
// stands in for fsck.
const FSTAB: &str = "\
# banger: / is /dev/vda (the VM's copy of the image, mounted by the
# initramfs), /root is /dev/vdb (the VM's work disk, mounted by banger-agent)
";

const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n";

/// Files banger adds to every image it builds.
pub fn overlay() -> Vec<OverlayEntry> {
    use OverlayEntry::*;
    vec![
        Dir {
            path: "usr/local/bin",
            mode: 0o755,
        },
        File {
            path: "usr/local/bin/banger-agent",
            mode: 0o755,
            data: AGENT.to_vec(),
        },
        Dir {
            path: "etc/systemd/system",
            mode: 0o755,
        },
        File {
            path: "etc/systemd/system/banger-ssh-keygen.service",
            mode: 0o644,
            data: KEYGEN_UNIT.into(),
        },
        Dir {
            path: "etc/ssh/sshd_config.d",
            mode: 0o755,
        },
        File {
            path: "etc/ssh/sshd_config.d/banger.conf",
            mode: 0o644,
            data: SSHD_CONF.into(),
        },
        File {
            path: "etc/fstab",
            mode: 0o644,
            data: FSTAB.into(),
        },
        File {
            path: "etc/hosts",
            mode: 0o644,
            data: HOSTS.into(),
        },
        File {
            path: "etc/hostname",
            mode: 0o644,
            data: b"banger\n".to_vec(),
        },
        Dir {
            path: "root/.ssh",
            mode: 0o700,
        },
    ]
}

/// Units enabled and masked inside the image.
/// (The agent is no unit: the initramfs starts it as PID 1, before the
/// image's init.)
pub const ENABLE_UNITS: &[&str] = &["banger-ssh-keygen.service"];
pub const MASK_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "getty@tty1.service",
    "getty-static.service",
    "systemd-networkd-wait-online.service",
    // Each of these costs about a second of boot under emulation and does
    // nothing a throwaway VM needs.
    "systemd-binfmt.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "dev-hugepages.mount",
    "modprobe@dm_mod.service",
    "modprobe@efi_pstore.service",
    "systemd-pstore.service",
    // Measured with `systemd-analyze blame` in a guest (TCG): 0.5–2.5 s each,
    // and nothing `vm run` or sshd needs (the initramfs loaded the modules
    // the guest uses; the image's users exist; the journal stays in /run).
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "modprobe@configfs.service",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "kmod-static-nodes.service",
    "systemd-modules-load.service",
    "systemd-sysusers.service",
    "systemd-journal-flush.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
    // Boot and runlevel records for `who`/`last` (utmp, wtmp): nothing a
    // throwaway VM needs, and on the readiness point's critical path
    // (sysinit.target waits for it, ~0.2 s under TCG).
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
];

/// The cache key of an image built from `recipe` with a kernel whose modules
/// digest is `modules_sha256`: any change to packages, files, hooks or the
/// kernel gives a new key.
pub fn cache_key(recipe: &Recipe, kernel_version: &str, modules_sha256: &str) -> String {
    let overlay = {
        let mut h = KeyHasher::default();
        for e in recipe.overlay() {
            match e {
                OverlayEntry::Dir { path, mode } => h.add(path, &mode.to_le_bytes()),
                OverlayEntry::File { path, mode, data } => h
                    .add(path, &mode.to_le_bytes())
                    .add("sha256", sha256_hex(&data).as_bytes()),
            };
        }
        h.finish()
    };
    let mut h = KeyHasher::default();
    h.add("revision", &RECIPE_REVISION.to_le_bytes())
        .add("name", recipe.name.as_bytes())
        .add("suite", recipe.suite.as_bytes())
        .add("packages", recipe.packages().join(",").as_bytes())
        .add("enable", ENABLE_UNITS.join(",").as_bytes())
        .add("mask", MASK_UNITS.join(",").as_bytes())
        .add("kernel_version", kernel_version.as_bytes())
        .add("modules", modules_sha256.as_bytes())
        .add("overlay", overlay.as_bytes())
        .add("hooks", recipe.customize_hooks().join("\n").as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_is_embedded_and_static() {
        assert!(AGENT.starts_with(b"\x7fELF"));
        // A static executable has no PT_INTERP program header.
        let phoff = u64::from_le_bytes(AGENT[0x20..0x28].try_into().unwrap()) as usize;
        let phentsize = u16::from_le_bytes(AGENT[0x36..0x38].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(AGENT[0x38..0x3a].try_into().unwrap()) as usize;
        for i in 0..phnum {
            let p_type =
                u32::from_le_bytes(AGENT[phoff + i * phentsize..][..4].try_into().unwrap());
            assert_ne!(
                p_type, 3,
                "banger-agent has an interpreter (is dynamically linked)"
            );
        }
    }

    #[test]
    fn cache_key_tracks_inputs() {
        let r = find("debian-bookworm").unwrap();
        let a = cache_key(r, "6.1.0-1", "aaa");
        assert_eq!(a, cache_key(r, "6.1.0-1", "aaa"));
        assert_ne!(a, cache_key(r, "6.1.0-2", "aaa"));
        assert_ne!(a, cache_key(r, "6.1.0-1", "bbb"));
    }

    #[test]
    fn the_sandbox_differs_from_the_default_in_key_packages_hooks_and_files() {
        let (d, s) = (
            find("debian-bookworm").unwrap(),
            find("debian-bookworm-sandbox").unwrap(),
        );
        assert_ne!(cache_key(d, "6.1", "a"), cache_key(s, "6.1", "a"));
        assert!(s.packages().contains(&"docker.io") && !d.packages().contains(&"docker.io"));
        assert!(d.customize_hooks().is_empty());
        let hooks = s.customize_hooks().join("\n");
        assert!(
            hooks.contains(MISE_SHA256) && hooks.contains("docker.service"),
            "{hooks}"
        );
        assert_eq!(s.overlay().len(), d.overlay().len() + 2);
    }

    #[test]
    fn package_lists_are_valid_names() {
        for p in RECIPES.iter().flat_map(|r| r.packages()) {
            assert!(
                p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)),
                "{p}"
            );
        }
    }
}
