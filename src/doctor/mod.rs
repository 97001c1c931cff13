//! `banger doctor`: what this host can do and what to fix, one row per
//! fact. Never changes anything: the store is opened read-only (or the
//! running daemon is asked), tools are only run with a version flag.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, HostFacts};
use crate::paths::Layout;

pub mod packages;
pub mod setup;

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One fact about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a WARN or FAIL.
    pub hint: Option<String>,
}

/// One row (also used by `system::doctor_rows`).
pub fn row(name: &str, status: Status, detail: impl Into<String>, hint: Option<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        hint,
    }
}

/// Tools banger drives: (tool, Debian package, version flag, needed).
pub const TOOLS: &[(&str, &str, &str, bool)] = &[
    ("qemu-system-x86_64", "qemu-system-x86", "--version", true),
    ("qemu-img", "qemu-utils", "--version", true),
    ("mkfs.ext4", "e2fsprogs", "-V", true),
    ("mmdebstrap", "mmdebstrap", "--version", true),
    ("iptables", "iptables", "--version", true),
    ("ebtables", "iptables", "--version", true),
    ("ip", "iproute2", "-V", true),
    ("git", "git", "--version", true),
    ("ssh", "openssh-client", "-V", true),
    ("apt-get", "apt", "--version", true),
    ("dpkg-deb", "dpkg", "--version", true),
    // The sandbox image's mise download.
    ("curl", "curl", "--version", false),
];

/// Runs `tool flag` (bounded) and returns its first line of output.
fn tool_version(path: &Path, flag: &str) -> Result<String, String> {
    let out = crate::host::process::run_bounded(
        std::process::Command::new(path).arg(flag),
        Duration::from_secs(10),
        64 << 10,
    )
    .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // ssh -V prints to stderr; some tools exit non-zero for a version flag
    // only when broken: no output at all means it did not run.
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    match first {
        Some(l) if out.status.success() || text.contains("version") || text.contains("OpenSSH") => {
            Ok(l.chars().take(100).collect())
        }
        Some(l) => Err(format!("exited with {}: {l}", out.status)),
        None => Err(format!("exited with {} and printed nothing", out.status)),
    }
}

/// The row of one tool; its install hint in `mgr`'s words (Debian's
/// when unknown). A Debian-only tool (mmdebstrap, apt, dpkg) missing from
/// another distribution is a warning: the default kernel and image come
/// from the release's bundles there.
pub fn tool_row(tool: &str, package: &str, flag: &str, mgr: Option<packages::Manager>) -> Check {
    let m = mgr.unwrap_or(packages::Manager::Apt);
    let Some(pkg) = m.package(package) else {
        return match crate::host::system_tool(tool) {
            Some(_) => row(tool, Status::Pass, format!("present (a Debian tool, not needed on {})", m.name()), None),
            None => row(
                tool,
                Status::Warn,
                format!("not on this host (Debian's; this host uses {})", m.name()),
                Some("the default kernel and image come from your banger release's bundles: set [update] url in the config; other images: banger image pull / import".into()),
            ),
        };
    };
    let hint = Some(format!("install it: {}", m.install_line(&[pkg])));
    let Some(path) = crate::host::system_tool(tool) else {
        return row(tool, Status::Fail, "not installed", hint);
    };
    match tool_version(&path, flag) {
        Ok(v) => row(tool, Status::Pass, v, None),
        Err(e) => row(
            tool,
            Status::Fail,
            format!("{} does not run: {e}", path.display()),
            Some(format!("reinstall it: {}", m.install_line(&[pkg]))),
        ),
    }
}

/// Firecracker: optional (QEMU is used without it); supported within
/// [MIN_VERSION, TESTED_VERSION]; `install`: how to install it here.
pub fn firecracker_row(
    found: Option<Result<(u32, u32, u32), String>>,
    kvm: bool,
    install: &str,
) -> Check {
    use crate::vmm::firecracker::{MIN_VERSION, TESTED_VERSION};
    let v = |t: (u32, u32, u32)| format!("v{}.{}.{}", t.0, t.1, t.2);
    match found {
        None => row(
            "firecracker",
            if kvm { Status::Warn } else { Status::Pass },
            "not installed: VMs use QEMU",
            kvm.then(|| {
                format!(
                    "with hardware KVM, Firecracker {} boots faster: {install}",
                    v(TESTED_VERSION)
                )
            }),
        ),
        Some(Err(e)) => row(
            "firecracker",
            Status::Fail,
            e,
            Some(format!(
                "Firecracker {}..{}, root-owned: {install}; or remove it",
                v(MIN_VERSION),
                v(TESTED_VERSION)
            )),
        ),
        Some(Ok(t)) if t > TESTED_VERSION => row(
            "firecracker",
            Status::Warn,
            format!("{} (newer than the tested {})", v(t), v(TESTED_VERSION)),
            Some("it will probably work; report what does not".into()),
        ),
        Some(Ok(t)) => row(
            "firecracker",
            Status::Pass,
            format!(
                "{}{}",
                v(t),
                if kvm {
                    ""
                } else {
                    " (used only with hardware KVM; QEMU here)"
                }
            ),
            None,
        ),
    }
}

/// The KVM row: hardware, nested PVM (this kind of machine), or none.
pub fn kvm_row() -> Check {
    if crate::host::cpu::hardware_kvm() {
        return row("kvm", Status::Pass, "hardware KVM (/dev/kvm)", None);
    }
    let why = crate::host::cpu::kvm_unavailable_reason().unwrap_or_default();
    row(
        "kvm",
        Status::Warn,
        format!("{why}: guests boot with QEMU's TCG (software emulation; boots take seconds, not milliseconds)"),
        Some("for fast VMs use a host with hardware virtualisation (vmx/svm) and /dev/kvm".into()),
    )
}

/// A route of the host (`ip -j route`): destination and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    pub dev: String,
}

fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (s, 32),
    };
    let a: Ipv4Addr = a.parse().ok()?;
    (l <= 32).then_some((u32::from(a), l))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Whether the bridge subnet collides with a route that is not ours.
pub fn subnet_row(bridge: &str, ip: Ipv4Addr, prefix: u8, routes: &[Route]) -> Check {
    let ours = (u32::from(ip), prefix);
    let clash: Vec<String> = routes
        .iter()
        .filter(|r| r.dev != bridge && r.dst != "default")
        .filter(|r| parse_cidr(&r.dst).is_some_and(|d| overlaps(d, ours)))
        .map(|r| format!("{} on {}", r.dst, r.dev))
        .collect();
    let net = format!(
        "{}/{prefix}",
        Ipv4Addr::from(ours.0 & (u32::MAX << (32 - prefix.max(1))))
    );
    if clash.is_empty() {
        row(
            "bridge subnet",
            Status::Pass,
            format!("{net} on {bridge}, no other route"),
            None,
        )
    } else {
        row(
            "bridge subnet",
            Status::Fail,
            format!("{net} overlaps {}", clash.join(", ")),
            Some("pick a free private range: [network] bridge_address = \"10.213.0.1/24\" in config.toml".into()),
        )
    }
}

/// Routes from `ip -j route show`.
pub fn parse_routes(json: &str) -> Vec<Route> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                // Addresses of this host (local, broadcast) are not routes
                // that could take the bridge's traffic.
                .filter(|r| {
                    !matches!(
                        r["type"].as_str(),
                        Some("local" | "broadcast" | "anycast" | "multicast")
                    )
                })
                .filter_map(|r| {
                    Some(Route {
                        dst: r["dst"].as_str()?.to_string(),
                        dev: r["dev"].as_str().unwrap_or("").to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Free space where images and VMs live.
pub fn space_row(what: &str, dir: &Path, avail: Option<u64>) -> Check {
    const GIB: u64 = 1 << 30;
    match avail {
        None => row(
            what,
            Status::Warn,
            format!("cannot read free space of {}", dir.display()),
            None,
        ),
        Some(a) if a < 2 * GIB => row(
            what,
            Status::Fail,
            format!("{:.1} GiB free in {}", a as f64 / GIB as f64, dir.display()),
            Some("an image needs about 1.5 GiB and each VM its disk: free some space".into()),
        ),
        Some(a) if a < 10 * GIB => row(
            what,
            Status::Warn,
            format!("{:.1} GiB free in {}", a as f64 / GIB as f64, dir.display()),
            Some("enough for a few VMs; more images or large disks need more".into()),
        ),
        Some(a) => row(
            what,
            Status::Pass,
            format!("{:.0} GiB free in {}", a as f64 / GIB as f64, dir.display()),
            None,
        ),
    }
}

/// Free bytes of the filesystem holding `dir` (or its nearest existing
/// ancestor: on a fresh install the directory does not exist yet).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut d: PathBuf = dir.to_path_buf();
    while !d.exists() {
        d = d.parent()?.to_path_buf();
    }
    let st = nix::sys::statvfs::statvfs(&d).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// What the store says, for the image and kernel rows.
pub struct Inventory {
    /// The image set as default, if one is (else the built-in default).
    pub default_image: Option<String>,
    pub images: Vec<(String, String)>,
    pub kernels: Vec<String>,
}

/// The store row and, when it can be read, its inventory. Read-only: a
/// store held by a running daemon is described by the caller instead.
pub fn store_row(layout: &Layout) -> (Check, Option<Inventory>) {
    let path = layout.store_file();
    if !path.exists() {
        return (
            row(
                "store",
                Status::Pass,
                format!("{} (created on first start)", path.display()),
                None,
            ),
            None,
        );
    }
    match crate::store::Store::open_read_only(&path) {
        Ok(s) => {
            let version = s.schema_version().unwrap_or(0);
            let inv = Inventory {
                default_image: s.setting(crate::store::DEFAULT_IMAGE_KEY).ok().flatten(),
                images: s
                    .list_images()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| (i.name, i.kernel_ref))
                    .collect(),
                kernels: s
                    .list_kernels()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| k.name)
                    .collect(),
            };
            (
                row(
                    "store",
                    Status::Pass,
                    format!("{} (schema v{version})", path.display()),
                    None,
                ),
                Some(inv),
            )
        }
        Err(e) => (
            row(
                "store",
                Status::Fail,
                format!("{}: {e}", path.display()),
                Some(
                    "see `banger daemon status`; a damaged store is named in the daemon log".into(),
                ),
            ),
            None,
        ),
    }
}

/// The default image and its kernel: present, or what the first run does.
/// `bundles`: the release URL whose bundles stand in where the host cannot
/// build (a release build with `[update] url`).
pub fn image_rows(inv: Option<&Inventory>, can_build: bool, bundles: Option<&str>) -> Vec<Check> {
    let default = inv
        .and_then(|i| i.default_image.clone())
        .unwrap_or_else(|| crate::image::recipe::DEFAULT_IMAGE.to_string());
    let image = inv.and_then(|i| i.images.iter().find(|(n, _)| *n == default));
    let build_hint = |what: &str| {
        Some(format!(
            "the first `banger vm run` {what} (about a minute); or now: banger image build {default}"
        ))
    };
    let mut rows = vec![];
    match image {
        Some((n, _)) => rows.push(row("default image", Status::Pass, n.clone(), None)),
        None if can_build => rows.push(row(
            "default image",
            Status::Warn,
            format!("{default} not built yet"),
            build_hint("builds it"),
        )),
        None if bundles.is_some() => rows.push(row(
            "default image",
            Status::Warn,
            format!(
                "{default} not here yet; the first `banger vm run` downloads it (and its kernel) from the release's bundles at {}",
                bundles.unwrap_or_default()
            ),
            None,
        )),
        None => rows.push(row(
            "default image",
            Status::Fail,
            format!("{default} not built, and it cannot be built here (see the tool rows)"),
            Some("install the missing tools, or import a bundle: banger image import FILE".into()),
        )),
    }
    let kernel = image
        .map(|(_, k)| k.clone())
        .unwrap_or_else(|| "debian-cloud".to_string());
    let have = inv.is_some_and(|i| i.kernels.contains(&kernel));
    rows.push(if have {
        row("kernel", Status::Pass, kernel, None)
    } else {
        row(
            "kernel",
            Status::Warn,
            format!("{kernel} not pulled yet"),
            Some(format!(
                "the first `banger vm run` pulls it; or now: banger kernel pull {kernel}"
            )),
        )
    });
    rows
}

/// Every host row for `layout` (`inventory`: from the daemon when it
/// runs); the service rows are `system::doctor_rows`.
pub fn run(layout: &Layout, inventory: Option<Inventory>) -> Vec<Check> {
    let mut rows = vec![];
    let arch = std::env::consts::ARCH;
    rows.push(if arch == "x86_64" {
        row("arch", Status::Pass, arch, None)
    } else {
        row(
            "arch",
            Status::Fail,
            arch,
            Some("banger runs on x86_64 hosts only".into()),
        )
    });
    rows.push(kvm_row());
    let loaded = Config::load(&layout.config_file(), HostFacts::probe());
    let (tool_rows, can_build) = tool_rows(loaded.as_ref().ok());
    rows.extend(tool_rows);
    let cfg = match loaded {
        Ok(c) => {
            let d = &c.vm_defaults;
            rows.push(row(
                "vm defaults",
                Status::Pass,
                format!(
                    "{} vcpu ({}), {} MiB ({}), disk {} ({})",
                    d.vcpu.value,
                    d.vcpu.source,
                    d.memory_mib.value,
                    d.memory_mib.source,
                    crate::size::format_size(d.disk_bytes.value),
                    d.disk_bytes.source
                ),
                None,
            ));
            Some(c)
        }
        Err(e) => {
            rows.push(row(
                "config",
                Status::Fail,
                e.to_string(),
                Some(format!("fix {}", layout.config_file().display())),
            ));
            None
        }
    };
    let inv = match inventory {
        Some(i) => {
            rows.push(row(
                "store",
                Status::Pass,
                format!(
                    "{} (held by the running daemon)",
                    layout.store_file().display()
                ),
                None,
            ));
            Some(i)
        }
        None => {
            let (r, inv) = store_row(layout);
            rows.push(r);
            inv
        }
    };
    let bundles = cfg
        .as_ref()
        .and_then(|c| c.update_url.clone())
        .filter(|_| crate::release::semver::Version::parse(crate::version::version()).is_some());
    rows.extend(image_rows(inv.as_ref(), can_build, bundles.as_deref()));
    if let Some(c) = &cfg {
        rows.extend(network_rows(c));
    }
    rows.push(space_row(
        "free space (state)",
        &layout.state_dir,
        free_bytes(&layout.state_dir),
    ));
    if layout.cache_dir != layout.state_dir {
        rows.push(space_row(
            "free space (cache)",
            &layout.cache_dir,
            free_bytes(&layout.cache_dir),
        ));
    }
    rows
}

/// The external tools' rows (a configured VMM binary checked as the helper
/// will run it), and whether images can be built.
fn tool_rows(loaded: Option<&Config>) -> (Vec<Check>, bool) {
    let configured = |tool: &str| {
        let c = loaded?;
        match tool {
            "qemu-system-x86_64" => c.qemu_binary.clone(),
            "firecracker" => c.firecracker_binary.clone(),
            _ => None,
        }
    };
    let os = std::fs::read_to_string("/etc/os-release").ok();
    let mgr = packages::detect(os.as_deref(), &|c| crate::host::system_tool(c).is_some());
    let (mut rows, mut can_build) = (vec![], true);
    rows.push(match mgr {
        Some(m) => row("package manager", Status::Pass, m.name(), None),
        None => row(
            "package manager",
            Status::Warn,
            "none known (apt, dnf, pacman, zypper, nix)",
            Some("install the tools below by their names on your distribution".into()),
        ),
    });
    for (tool, pkg, flag, needed) in TOOLS {
        let r = match configured(tool) {
            // The owner's choice: run only if root owns it (as the helper will).
            Some(p) => match crate::vmm::firecracker::check_root_owned(&p)
                .and_then(|real| tool_version(&real, flag))
            {
                Ok(v) => row(tool, Status::Pass, format!("{v} ({} from config)", p.display()), None),
                Err(e) => row(
                    tool,
                    Status::Fail,
                    format!("{} (from config): {e}", p.display()),
                    Some("bangerd-root runs only a root-owned binary nobody else can write; fix it or drop qemu_binary from config.toml".into()),
                ),
            },
            None => tool_row(tool, pkg, flag, mgr),
        };
        // A tool only some images need: missing is a warning.
        let r = match r {
            Check {
                status: Status::Fail,
                ..
            } if !needed => Check {
                status: Status::Warn,
                ..r
            },
            r => r,
        };
        if r.status != Status::Pass
            && matches!(*tool, "mmdebstrap" | "mkfs.ext4" | "apt-get" | "dpkg-deb")
        {
            can_build = false;
        }
        if *tool == "iptables" && r.status == Status::Pass {
            let flavour = crate::host::nat::iptables().unwrap_or("iptables");
            let mut r = r;
            r.detail = format!("{} (banger uses {flavour})", r.detail);
            rows.push(r);
            continue;
        }
        rows.push(r);
    }
    let fc_configured = configured("firecracker");
    let fc = fc_configured
        .as_deref()
        .into_iter()
        .chain(
            ["/usr/local/bin/firecracker", "/usr/bin/firecracker"]
                .iter()
                .map(Path::new),
        )
        .find(|p| p.exists() || fc_configured.as_deref() == Some(*p))
        .map(|p| {
            crate::vmm::firecracker::check_root_owned(p)
                .and_then(|real| crate::vmm::firecracker::version(&real))
        });
    rows.push(firecracker_row(
        fc,
        crate::host::cpu::hardware_kvm(),
        &setup::firecracker_install_hint(os.as_deref()),
    ));
    (rows, can_build)
}

/// The bridge's subnet against the host's routes, and the DNS server.
fn network_rows(c: &Config) -> Vec<Check> {
    let n = &c.network;
    let routes = crate::host::process::run_bounded(
        std::process::Command::new(crate::host::system_tool("ip").unwrap_or_else(|| "ip".into()))
            .args(["-j", "-4", "route", "show", "table", "all"]),
        Duration::from_secs(10),
        1 << 20,
    )
    .map(|o| parse_routes(&String::from_utf8_lossy(&o.stdout)))
    .unwrap_or_default();
    vec![
        subnet_row(&n.bridge, n.bridge_ip, n.prefix_len, &routes),
        row(
            "dns",
            Status::Pass,
            match n.dns_port {
                0 => "off (network.dns_port = 0)".to_string(),
                p => format!("<name>.vm on {}:{p}", n.bridge_ip),
            },
            None,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_inside_the_bridge_subnet_fails_and_others_pass() {
        let routes = parse_routes(
            r#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth0"},
                {"dst":"10.0.0.0/24","dev":"eth0"},
                {"dst":"172.16.0.0/24","dev":"banger0"},
                {"type":"local","dst":"172.16.0.1","dev":"banger0","table":"local"},
                {"type":"broadcast","dst":"10.0.0.255","dev":"eth0","table":"local"}]"#,
        );
        assert_eq!(routes.len(), 3);
        let ip = Ipv4Addr::new(172, 16, 0, 1);
        assert_eq!(subnet_row("banger0", ip, 24, &routes).status, Status::Pass);
        let mut clash = routes.clone();
        clash.push(Route {
            dst: "172.16.0.0/12".into(),
            dev: "docker0".into(),
        });
        let r = subnet_row("banger0", ip, 24, &clash);
        assert_eq!(r.status, Status::Fail);
        assert!(
            r.detail.contains("172.16.0.0/12 on docker0"),
            "{}",
            r.detail
        );
        assert!(r.hint.unwrap().contains("bridge_address"));
    }

    #[test]
    fn firecracker_rows_follow_the_supported_range() {
        assert_eq!(firecracker_row(None, false, "x").status, Status::Pass);
        assert_eq!(firecracker_row(None, true, "x").status, Status::Warn);
        assert_eq!(
            firecracker_row(Some(Ok((1, 12, 1))), false, "x").status,
            Status::Pass
        );
        assert_eq!(
            firecracker_row(Some(Ok((9, 0, 0))), true, "x").status,
            Status::Warn
        );
        let old = firecracker_row(
            Some(Err("v1.4.0 is older".into())),
            true,
            "apk add firecracker",
        );
        assert_eq!(old.status, Status::Fail);
        let hint = old.hint.unwrap();
        assert!(
            hint.contains("v1.5.0") && hint.contains("apk add firecracker"),
            "{hint}"
        );
    }

    #[test]
    fn space_and_missing_tools_say_what_to_do() {
        let gib = 1u64 << 30;
        let d = Path::new("/x");
        assert_eq!(space_row("s", d, Some(gib)).status, Status::Fail);
        assert_eq!(space_row("s", d, Some(5 * gib)).status, Status::Warn);
        assert_eq!(space_row("s", d, Some(50 * gib)).status, Status::Pass);
        let r = tool_row(
            "banger-no-such-tool",
            "git",
            "--version",
            Some(packages::Manager::Dnf),
        );
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.hint.as_deref(), Some("install it: sudo dnf install git"));
        let r = tool_row(
            "banger-no-such-tool",
            "mmdebstrap",
            "--version",
            Some(packages::Manager::Pacman),
        );
        assert_eq!(r.status, Status::Warn, "a Debian tool elsewhere: {r:?}");
        assert!(r.hint.unwrap().contains("[update] url"));
        // A tool that exists and runs.
        assert_eq!(tool_row("ip", "iproute2", "-V", None).status, Status::Pass);
    }

    #[test]
    fn an_absent_store_passes_and_an_unbuilt_image_says_how() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::resolve(&crate::paths::Env {
            home: Some(d.path().into()),
            uid: 1000,
            ..Default::default()
        });
        let (r, inv) = store_row(&layout);
        assert_eq!(r.status, Status::Pass);
        assert!(r.detail.contains("created on first start"));
        let rows = image_rows(inv.as_ref(), true, None);
        assert_eq!(rows[0].status, Status::Warn);
        assert!(rows[0]
            .hint
            .as_ref()
            .unwrap()
            .contains("banger image build debian-bookworm"));
        assert_eq!(image_rows(None, false, None)[0].status, Status::Fail);
        let r = &image_rows(None, false, Some("http://r"))[0];
        assert_eq!(
            r.status,
            Status::Warn,
            "the release's bundles stand in: {r:?}"
        );
        assert!(r.detail.contains("http://r"));
    }
}
