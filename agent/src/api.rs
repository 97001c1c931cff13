//! What the agent answers, shared with the host.

use serde::{Deserialize, Serialize};

/// The health report (`Request::Health`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Healthz {
    /// `/proc/sys/kernel/random/boot_id`: changes on every boot.
    pub boot_id: String,
    pub uptime_s: f64,
    pub hostname: String,
    pub agent_version: String,
    /// Problems the boot-time setup hit (empty when all went well).
    pub setup_errors: Vec<String>,
    /// The agent protocol version (`proto::VERSION`).
    #[serde(default)]
    pub protocol: u32,
    /// PID 1 of the guest: `systemd`, or `banger` for the agent's own init.
    #[serde(default)]
    pub init: String,
}

/// One listening socket (`Request::Ports`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Port {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub proto: String,
    pub address: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub process: Option<String>,
}

/// One of the guest's SSH host public keys (`Request::HostKeys`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostKey {
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, ...
    pub algorithm: String,
    /// Base64 key blob.
    pub key: String,
}

/// Answer of `Request::Sync` and `Request::Poweroff`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub ok: bool,
    pub detail: String,
}

/// The guest's own figures (`Request::Stats`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestStats {
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub disks: Vec<DiskUse>,
    pub uptime_s: f64,
    pub processes: u32,
}

/// Use of one mounted filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUse {
    pub mount: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// Answer of `Request::Ready`: how far the guest's boot is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Readiness {
    /// The readiness point is reached (`ready.rs`): a command may run.
    pub ready: bool,
    /// Ready, and the boot has no job left (only when asked for).
    pub settled: bool,
    /// The guest's uptime when the readiness unit ran (systemd images).
    #[serde(default)]
    pub ready_at_s: Option<f64>,
    /// `systemctl is-system-running` when settling was asked for.
    #[serde(default)]
    pub system_state: String,
    /// How long the agent waited before answering.
    pub waited_ms: u64,
}
