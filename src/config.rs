//! `config.toml` and the resolved VM defaults.
//!
//! `[vm_defaults]` resolves in three layers, each value remembering which layer
//! it came from: the config file, then values derived from the host (cpus/4
//! capped at 4; RAM/8 capped at 8 GiB), then a built-in floor.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::size::{format_size, parse_size};

/// Problems reading `config.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `auto`, `qemu` or `firecracker`.
    vmm: Option<String>,
    /// Absolute paths of the VMM binaries (bangerd-root runs them only
    /// when root owns them and nobody else can write them).
    qemu_binary: Option<String>,
    firecracker_binary: Option<String>,
    /// `error`, `warn`, `info`, `debug` or `trace` (BANGER_LOG wins).
    log_level: Option<String>,
    /// New VMs restore an automatic snapshot of their image booted to
    /// "agent ready" (made once, in the background) instead of booting.
    warm_start: Option<bool>,
    /// Seconds a guest's agent may be silent while a command runs in it
    /// before the command is given up (exit 125); default 60.
    unresponsive_after_secs: Option<u64>,
    /// QEMU's TCG translation cache per VM, in MiB (default 128; QEMU's
    /// own default is 1024): smaller costs less host memory per VM, too
    /// small slows guests down.
    tcg_tb_size_mib: Option<u32>,
    #[serde(default)]
    vm_defaults: RawVmDefaults,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    egress: RawEgress,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    update: RawUpdate,
    /// Where `--secret NAME@HOST` finds NAME's value when the environment
    /// has none: `NAME = "file:/path"` or `"env:VAR"`.
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    /// A loopback `ADDRESS:PORT` where the daemon serves its HTTP API and
    /// web dashboard (token required) from the start; without it the port
    /// opens, on a free one, when `banger dashboard` first asks.
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    /// Where `banger update` finds releases (`<url>/latest`,
    /// `<url>/<version>/SHA256SUMS`, ...): an `https://` or `http://` URL.
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    /// `deny`: every new VM gets a policy (these allowances plus its own);
    /// `open` (the default): only VMs given `--egress deny` do.
    default: Option<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    allow_nets: Vec<String>,
    /// Where allowed names are resolved (`a.b.c.d` or `a.b.c.d:port`);
    /// default: /etc/resolv.conf's name servers.
    #[serde(default)]
    resolvers: Vec<String>,
    /// PEM files of CAs the secrets proxy trusts besides the system's.
    #[serde(default)]
    ca_files: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVmDefaults {
    vcpu: Option<u32>,
    memory_mib: Option<u32>,
    disk_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    bridge: Option<String>,
    bridge_address: Option<String>,
    dns_port: Option<u16>,
}

/// Which layer a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    Config,
    Auto,
    Builtin,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provenance::Config => "config",
            Provenance::Auto => "auto",
            Provenance::Builtin => "builtin",
        })
    }
}

/// A value and the layer it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Provenance,
}

/// Facts about the host that defaults derive from.
#[derive(Debug, Clone, Copy)]
pub struct HostFacts {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostFacts {
    /// Reads the running host.
    pub fn probe() -> HostFacts {
        let memory_bytes = match sysinfo::System::new() {
            Ok(mut sys) => {
                sys.refresh_memory();
                sys.total_memory()
            }
            Err(_) => 0,
        };
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        HostFacts { cpus, memory_bytes }
    }
}

/// Built-in floor for vCPUs.
pub const FLOOR_VCPU: u32 = 2;
/// Built-in floor for memory.
pub const FLOOR_MEMORY_MIB: u32 = 1024;
/// Built-in work-disk size.
pub const BUILTIN_DISK_BYTES: u64 = 8 << 30;
const AUTO_VCPU_CAP: u32 = 4;
const AUTO_MEMORY_CAP_MIB: u32 = 8 * 1024;

/// Resolved `[vm_defaults]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDefaults {
    pub vcpu: Sourced<u32>,
    pub memory_mib: Sourced<u32>,
    pub disk_bytes: Sourced<u64>,
}

/// Resolved `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Bridge device name (default `banger0`).
    pub bridge: String,
    /// Host address on the bridge; VMs get addresses from its subnet.
    pub bridge_ip: Ipv4Addr,
    pub prefix_len: u8,
    /// UDP port of the `<name>.vm` DNS server on the bridge address (0: off).
    /// Guests reach it on port 53 (redirected by the helper).
    #[serde(default = "default_dns_port")]
    pub dns_port: u16,
}

/// Resolved `[egress]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// Every new VM is policed (`default = "deny"`).
    pub deny_by_default: bool,
    /// Allowances every policed VM has.
    pub allow: crate::domain::egress::EgressPolicy,
    pub resolvers: Vec<std::net::SocketAddr>,
    /// Extra CAs for the hosts secrets go to (`ca_files`).
    pub ca_files: Vec<PathBuf>,
}

/// The original's port, kept so existing resolver set-ups carry over.
pub const DEFAULT_DNS_PORT: u16 = 42069;

fn default_dns_port() -> u16 {
    DEFAULT_DNS_PORT
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "banger0".into(),
            bridge_ip: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            dns_port: DEFAULT_DNS_PORT,
        }
    }
}

/// QEMU's TCG translation cache per VM, in MiB, unless the config says
/// otherwise. QEMU's own default (1 GiB) grew an idle guest's QEMU to
/// ~590 MiB RSS; at 128 it is ~450 MiB with no slower boots or commands
/// (docs/benchmarks.md, "TCG translation cache").
pub const DEFAULT_TCG_TB_MIB: u32 = 128;

/// The whole resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (it may not exist).
    pub path: PathBuf,
    pub file_exists: bool,
    pub vm_defaults: VmDefaults,
    pub network: NetworkConfig,
    pub vmm: crate::domain::VmmChoice,
    pub qemu_binary: Option<PathBuf>,
    pub firecracker_binary: Option<PathBuf>,
    pub log_level: Option<String>,
    /// `warm_start` (default true).
    pub warm_start: bool,
    /// `unresponsive_after_secs` (default 60 s).
    pub unresponsive_after: std::time::Duration,
    /// `tcg_tb_size_mib` (default [`DEFAULT_TCG_TB_MIB`]).
    pub tcg_tb_mib: u32,
    pub egress: EgressConfig,
    /// `[secrets]`: NAME → `file:PATH` or `env:VAR`.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// `[api] listen`: the dashboard's loopback address, served from the
    /// start (else opened on demand on a free port).
    pub api_listen: Option<std::net::SocketAddr>,
    /// `[update] url`: where `banger update` looks for releases.
    pub update_url: Option<String>,
}

impl Config {
    /// Reads `path` (absent is fine) and resolves it against `host`.
    pub fn load(path: &Path, host: HostFacts) -> Result<Config, ConfigError> {
        let (raw, exists) = match std::fs::read_to_string(path) {
            Ok(text) => {
                let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string().trim().to_string(),
                })?;
                (raw, true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (RawConfig::default(), false),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if raw.vm_defaults.vcpu == Some(0) {
            return Err(invalid("vm_defaults.vcpu", "must be at least 1".into()));
        }
        if matches!(raw.vm_defaults.memory_mib, Some(m) if m < 128) {
            return Err(invalid(
                "vm_defaults.memory_mib",
                "must be at least 128".into(),
            ));
        }
        let disk = match &raw.vm_defaults.disk_size {
            Some(s) => {
                Some(parse_size(s).map_err(|e| invalid("vm_defaults.disk_size", e.to_string()))?)
            }
            None => None,
        };
        let network = resolve_network(&raw.network).map_err(|(k, m)| invalid(k, m))?;
        let binary =
            |key: &'static str, v: &Option<String>| -> Result<Option<PathBuf>, ConfigError> {
                match v {
                    None => Ok(None),
                    Some(p) if Path::new(p).is_absolute() && !p.split('/').any(|c| c == "..") => {
                        Ok(Some(PathBuf::from(p)))
                    }
                    Some(p) => Err(invalid(
                        key,
                        format!("{p:?} must be an absolute path without '..'"),
                    )),
                }
            };
        let qemu_binary = binary("qemu_binary", &raw.qemu_binary)?;
        let firecracker_binary = binary("firecracker_binary", &raw.firecracker_binary)?;
        if let Some(l) = &raw.log_level {
            if !["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
                return Err(invalid(
                    "log_level",
                    format!("{l:?} is not one of error, warn, info, debug, trace"),
                ));
            }
        }
        let unresponsive_after = match raw.unresponsive_after_secs {
            None => crate::guest::session::UNRESPONSIVE_AFTER,
            Some(s) if (5..=86_400).contains(&s) => std::time::Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(
                    "unresponsive_after_secs",
                    format!("{s} is out of range: give 5 to 86400 seconds (a silent guest is given up after it)"),
                ))
            }
        };
        let tcg_tb_mib = match raw.tcg_tb_size_mib {
            None => DEFAULT_TCG_TB_MIB,
            Some(m) if (16..=1024).contains(&m) => m,
            Some(m) => {
                return Err(invalid(
                    "tcg_tb_size_mib",
                    format!(
                    "{m} is out of range: give 16 to 1024 MiB (QEMU's translation cache per VM)"
                ),
                ))
            }
        };
        let egress = resolve_egress(&raw.egress).map_err(|(k, m)| invalid(k, m))?;
        let api_listen = match &raw.api.listen {
            None => None,
            Some(a) => Some(parse_loopback(a).map_err(|m| invalid("api.listen", m))?),
        };
        let update_url = match &raw.update.url {
            None => None,
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Some(u.clone()),
            Some(u) => {
                return Err(invalid(
                    "update.url",
                    format!("{u:?} is not an http(s) URL; give where releases are published, e.g. https://example.org/banger"),
                ))
            }
        };
        let vmm = match &raw.vmm {
            Some(v) => v.parse().map_err(|m| invalid("vmm", m))?,
            None => Default::default(),
        };
        Ok(Config {
            vmm,
            qemu_binary,
            firecracker_binary,
            log_level: raw.log_level.clone(),
            warm_start: raw.warm_start.unwrap_or(true),
            unresponsive_after,
            tcg_tb_mib,
            egress,
            secrets: raw.secrets.clone(),
            api_listen,
            update_url,
            path: path.to_path_buf(),
            file_exists: exists,
            vm_defaults: resolve_defaults(&raw.vm_defaults, disk, host),
            network,
        })
    }
}

/// A loopback `ADDRESS:PORT` (the API's TCP port serves this host only).
fn parse_loopback(a: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = a
        .parse()
        .map_err(|e| format!("{a:?} is not ADDRESS:PORT ({e}); e.g. \"127.0.0.1:7180\""))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{a:?} is not a loopback address: the dashboard serves this host only; use 127.0.0.1:PORT"
        ));
    }
    Ok(addr)
}

/// The `[network]` table, checked: (key, what is wrong) on a bad value.
fn resolve_network(raw: &RawNetwork) -> Result<NetworkConfig, (&'static str, String)> {
    let mut network = NetworkConfig::default();
    if let Some(b) = &raw.bridge {
        validate_ifname(b).map_err(|m| ("network.bridge", m))?;
        if !b.starts_with("banger") {
            return Err((
                "network.bridge",
                format!("{b:?} must start with \"banger\" (so banger can tell its own interfaces apart), e.g. banger1"),
            ));
        }
        network.bridge = b.clone();
    }
    if let Some(a) = &raw.bridge_address {
        let (ip, len) = parse_cidr(a).map_err(|m| ("network.bridge_address", m))?;
        network.bridge_ip = ip;
        network.prefix_len = len;
    }
    if let Some(p) = raw.dns_port {
        if p == 53 {
            return Err((
                "network.dns_port",
                "53 is where guests ask (it is redirected to this port); pick a free port above 1024, or 0 to turn DNS off".into(),
            ));
        }
        network.dns_port = p;
    }
    Ok(network)
}

/// The `[egress]` table, checked.
fn resolve_egress(raw: &RawEgress) -> Result<EgressConfig, (&'static str, String)> {
    let deny_by_default = match raw.default.as_deref() {
        None | Some("open") => false,
        Some("deny") => true,
        Some(o) => {
            return Err((
                "egress.default",
                format!("{o:?} is not \"deny\" or \"open\""),
            ))
        }
    };
    let mut allow = crate::domain::egress::EgressPolicy::default();
    allow
        .allow(&raw.allow_hosts, &raw.allow_nets)
        .map_err(|m| ("egress.allow_hosts / allow_nets", m))?;
    let resolvers = raw
        .resolvers
        .iter()
        .map(|r| {
            r.parse::<std::net::SocketAddr>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .map_err(|_| {
                    (
                        "egress.resolvers",
                        format!("{r:?} is not an address like 192.0.2.53 or 192.0.2.53:5353"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ca_files = raw
        .ca_files
        .iter()
        .map(|f| match Path::new(f).is_absolute() {
            true => Ok(PathBuf::from(f)),
            false => Err(("egress.ca_files", format!("{f:?} must be an absolute path"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EgressConfig {
        deny_by_default,
        allow,
        resolvers,
        ca_files,
    })
}

fn resolve_defaults(raw: &RawVmDefaults, disk: Option<u64>, host: HostFacts) -> VmDefaults {
    let layered = |cfg: Option<u32>, auto: u32, floor: u32| match cfg {
        Some(v) => Sourced {
            value: v,
            source: Provenance::Config,
        },
        None if auto >= floor => Sourced {
            value: auto,
            source: Provenance::Auto,
        },
        None => Sourced {
            value: floor,
            source: Provenance::Builtin,
        },
    };
    let auto_vcpu = (host.cpus / 4).min(AUTO_VCPU_CAP);
    let auto_mem = ((host.memory_bytes / 8) >> 20).min(AUTO_MEMORY_CAP_MIB as u64) as u32;
    VmDefaults {
        vcpu: layered(raw.vcpu, auto_vcpu, FLOOR_VCPU),
        memory_mib: layered(raw.memory_mib, auto_mem, FLOOR_MEMORY_MIB),
        disk_bytes: match disk {
            Some(v) => Sourced {
                value: v,
                source: Provenance::Config,
            },
            None => Sourced {
                value: BUILTIN_DISK_BYTES,
                source: Provenance::Builtin,
            },
        },
    }
}

/// Rows for `banger config show`: key, value, provenance.
pub fn describe(cfg: &Config) -> Vec<(String, String, String)> {
    let d = &cfg.vm_defaults;
    vec![
        (
            "vm_defaults.vcpu".into(),
            d.vcpu.value.to_string(),
            d.vcpu.source.to_string(),
        ),
        (
            "vm_defaults.memory_mib".into(),
            d.memory_mib.value.to_string(),
            d.memory_mib.source.to_string(),
        ),
        (
            "vm_defaults.disk_size".into(),
            format_size(d.disk_bytes.value),
            d.disk_bytes.source.to_string(),
        ),
        (
            "vmm".into(),
            format!("{:?}", cfg.vmm).to_lowercase(),
            String::new(),
        ),
        (
            "warm_start".into(),
            cfg.warm_start.to_string(),
            String::new(),
        ),
        (
            "unresponsive_after_secs".into(),
            cfg.unresponsive_after.as_secs().to_string(),
            String::new(),
        ),
        (
            "tcg_tb_size_mib".into(),
            cfg.tcg_tb_mib.to_string(),
            String::new(),
        ),
        (
            "network.bridge".into(),
            cfg.network.bridge.clone(),
            String::new(),
        ),
        (
            "network.bridge_address".into(),
            format!("{}/{}", cfg.network.bridge_ip, cfg.network.prefix_len),
            String::new(),
        ),
        (
            "network.dns_port".into(),
            match cfg.network.dns_port {
                0 => "0 (off)".into(),
                p => p.to_string(),
            },
            String::new(),
        ),
        (
            "egress.default".into(),
            if cfg.egress.deny_by_default {
                "deny"
            } else {
                "open"
            }
            .into(),
            String::new(),
        ),
        (
            "egress.allow".into(),
            match (
                cfg.egress.allow.hosts.is_empty(),
                cfg.egress.allow.nets.is_empty(),
            ) {
                (true, true) => "(none)".into(),
                _ => [
                    cfg.egress.allow.hosts.clone(),
                    cfg.egress.allow.nets.clone(),
                ]
                .concat()
                .join(", "),
            },
            String::new(),
        ),
    ]
}

/// Checks a Linux interface name we are willing to create.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable interface name: 1-15 chars, a-z first, then a-z, 0-9 or '-'"
        ))
    }
}

/// Parses `a.b.c.d/len` for a private IPv4 subnet with room for guests.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{s:?} is not an address like 172.16.0.1/24");
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=29).contains(&len) {
        return Err(format!("prefix /{len} in {s:?}: use /8 to /29"));
    }
    if !ip.is_private() {
        return Err(format!(
            "{ip} is not a private (RFC 1918) address; pick one from 10/8, 172.16/12 or 192.168/16"
        ));
    }
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cpus: u32, gib: u64) -> HostFacts {
        HostFacts {
            cpus,
            memory_bytes: gib << 30,
        }
    }

    fn load(text: &str, h: HostFacts) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p, h)
    }

    #[test]
    fn binaries_and_log_level_are_checked_and_unknown_keys_named() {
        let c = load(
            "qemu_binary = \"/opt/qemu/bin/qemu-system-x86_64\"\nlog_level = \"debug\"\n",
            host(4, 8),
        )
        .unwrap();
        assert_eq!(
            c.qemu_binary.as_deref(),
            Some(Path::new("/opt/qemu/bin/qemu-system-x86_64"))
        );
        assert_eq!(c.firecracker_binary, None);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert!(c.warm_start, "warm starts by default");
        assert!(!load("warm_start = false\n", host(4, 8)).unwrap().warm_start);
        assert_eq!(c.tcg_tb_mib, DEFAULT_TCG_TB_MIB);
        assert_eq!(c.api_listen, None);
        let api = load("[api]\nlisten = \"127.0.0.1:7180\"\n", host(4, 8)).unwrap();
        assert_eq!(api.api_listen, Some("127.0.0.1:7180".parse().unwrap()));
        let e = load("[api]\nlisten = \"0.0.0.0:7180\"\n", host(4, 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.listen") && e.contains("loopback"), "{e}");
        let small = load("tcg_tb_size_mib = 64\n", host(4, 8)).unwrap();
        assert_eq!(small.tcg_tb_mib, 64);
        let e = load("tcg_tb_size_mib = 4\n", host(4, 8))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tcg_tb_size_mib") && e.contains("16 to 1024"),
            "{e}"
        );
        let e = load("firecracker_binary = \"bin/fc\"\n", host(4, 8))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("firecracker_binary") && e.contains("absolute"),
            "{e}"
        );
        let e = load("log_level = \"loud\"\n", host(4, 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_level"), "{e}");
        // An unknown key: the file, the line and the key.
        let e = load("\n\nqemu_bin = \"/x\"\n", host(4, 8))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.toml") && e.contains("line 3") && e.contains("qemu_bin"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_uses_auto_and_builtin() {
        let c = Config::load(Path::new("/nonexistent/config.toml"), host(16, 64)).unwrap();
        assert!(!c.file_exists);
        assert_eq!(
            c.vm_defaults.vcpu,
            Sourced {
                value: 4,
                source: Provenance::Auto
            }
        );
        assert_eq!(
            c.vm_defaults.memory_mib,
            Sourced {
                value: 8192,
                source: Provenance::Auto
            }
        );
        assert_eq!(c.vm_defaults.disk_bytes.source, Provenance::Builtin);
    }

    #[test]
    fn small_host_falls_to_floor() {
        let c = Config::load(Path::new("/nonexistent"), host(2, 4)).unwrap();
        assert_eq!(
            c.vm_defaults.vcpu,
            Sourced {
                value: 2,
                source: Provenance::Builtin
            }
        );
        assert_eq!(
            c.vm_defaults.memory_mib,
            Sourced {
                value: 1024,
                source: Provenance::Builtin
            }
        );
        let c = Config::load(Path::new("/nonexistent"), host(12, 24)).unwrap();
        assert_eq!(
            c.vm_defaults.vcpu,
            Sourced {
                value: 3,
                source: Provenance::Auto
            }
        );
        assert_eq!(c.vm_defaults.memory_mib.value, 3072);
    }

    #[test]
    fn config_wins() {
        let c = load(
            "[vm_defaults]\nvcpu = 1\nmemory_mib = 512\ndisk_size = \"2G\"\n[network]\nbridge = \"banger-t0\"\nbridge_address = \"10.9.0.1/24\"\n",
            host(16, 64),
        )
        .unwrap();
        assert_eq!(
            c.vm_defaults.vcpu,
            Sourced {
                value: 1,
                source: Provenance::Config
            }
        );
        assert_eq!(c.vm_defaults.memory_mib.value, 512);
        assert_eq!(c.vm_defaults.disk_bytes.value, 2 << 30);
        assert_eq!(c.network.bridge, "banger-t0");
        assert_eq!(c.network.bridge_ip, Ipv4Addr::new(10, 9, 0, 1));
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let e = load("[vm_defaults]\nvpcu = 2\n", host(2, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vpcu"), "{e}");
        let e = load("[vm_defaults]\ndisk_size = \"lots\"\n", host(2, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk_size") && e.contains("8G"), "{e}");
        let e = load("[network]\nbridge_address = \"8.8.8.8/24\"\n", host(2, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("private"), "{e}");
        let e = load("[vm_defaults]\nvcpu = 0\n", host(2, 2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vcpu"), "{e}");
    }
}
