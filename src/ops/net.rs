//! The daemon's side of VM networking: taps through bangerd-root, the
//! name servers a NAT'd guest gets.

use std::net::Ipv4Addr;

use super::Privileged;
use crate::config::NetworkConfig;
use crate::ops::OpError;

/// A fresh banger tap name.
pub fn new_tap_name() -> String {
    use rand::RngExt;
    format!("bgt{:08x}", rand::rng().random::<u32>())
}

/// Taps this daemon created and has not deleted: never orphans of an
/// earlier run, whatever the store says yet (a warm tap, one a resumed
/// start just leased). The orphan pass at start-up spares them. One per
/// daemon, shared by its context and its tap pool.
#[derive(Default)]
pub struct TapLedger(std::sync::Mutex<std::collections::HashSet<String>>);

impl TapLedger {
    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this daemon created `tap` (and has not deleted it).
    pub fn created_here(&self, tap: &str) -> bool {
        self.set().contains(tap)
    }
}

/// Taps the daemon's pool keeps ready (a start that finds them all gone
/// tries that many plus one).
pub const WARM_TAPS: usize = 2;

/// Ensures the bridge and creates one tap on it.
pub async fn create_tap(
    helper: &dyn Privileged,
    net: &NetworkConfig,
    ledger: &TapLedger,
) -> Result<String, OpError> {
    helper
        .ensure_bridge(super::Bridge {
            name: net.bridge.clone(),
            address: net.bridge_ip,
            prefix_len: net.prefix_len,
            dns_port: net.dns_port,
        })
        .await?;
    let name = new_tap_name();
    ledger.set().insert(name.clone());
    helper.create_tap(name.clone(), net.bridge.clone()).await?;
    Ok(name)
}

/// Deletes a tap (absent is fine).
pub async fn delete_tap(
    helper: &dyn Privileged,
    name: String,
    ledger: &TapLedger,
) -> Result<(), OpError> {
    let r = helper.delete_tap(name.clone()).await;
    if r.is_ok() {
        ledger.set().remove(&name);
    }
    r
}

/// Whether a VM reaches anything through NAT: `--nat` and no egress
/// policy (a policed VM's traffic goes through the daemon only).
pub fn open_nat(rec: &crate::store::VmRecord) -> bool {
    rec.nat && rec.egress.is_none()
}

/// A guest's name servers: banger's own on the bridge first (`<peer>.vm`;
/// it refuses other names, so a resolver moves on), then, for a NAT'd
/// guest, the host's.
pub fn guest_dns(net: &NetworkConfig, nat: bool) -> Vec<Ipv4Addr> {
    let mut v = Vec::new();
    if net.dns_port != 0 {
        v.push(net.bridge_ip);
    }
    if nat {
        v.extend(host_dns());
    }
    v.truncate(3);
    v
}

/// Name servers a NAT'd guest can use: the host's, unless they are loopback.
pub fn host_dns() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .take(3)
        .collect()
}
