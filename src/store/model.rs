//! Records kept in the store (JSON values, so fields can be added with
//! `#[serde(default)]` without a migration).

use serde::{Deserialize, Serialize};

use crate::protocol::cli::{VmState, VmView};

/// One VM, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    /// Stable id (16 hex digits); directories and taps derive from it.
    pub id: String,
    /// User-visible unique name (validated by [`crate::names::validate_vm_name`]).
    pub name: String,
    pub state: VmState,
    pub image: String,
    #[serde(default)]
    pub kernel: String,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    #[serde(default)]
    pub nat: bool,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub tap: Option<String>,
    pub created_at_unix: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

impl VmRecord {
    /// The wire view.
    pub fn view(&self) -> VmView {
        VmView {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state,
            image: self.image.clone(),
            vcpu: self.vcpu,
            memory_mib: self.memory_mib,
            disk_bytes: self.disk_bytes,
            ip: self.ip.clone(),
            nat: self.nat,
            created_at_unix: self.created_at_unix,
            last_error: self.last_error.clone(),
        }
    }
}

/// A fresh random VM id.
pub fn new_vm_id() -> String {
    use rand::RngExt;
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
