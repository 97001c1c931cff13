//! Egress by policy (`--egress deny --allow-host NAME`): nothing of a
//! policed VM leaves but through the daemon.
//!
//! - Its DNS (the bridge address, as for every guest) is answered by
//!   `actors::dns_server`: `<name>.vm` as always; an allowed name is
//!   resolved on the host ([`resolve`]) and the addresses in the answer are
//!   remembered for the VM with their TTL; any other name is refused and
//!   logged.
//! - Its TCP connections are redirected by bangerd-root (a per-VM REDIRECT
//!   rule, `host::nat::egress_rules`) to the daemon's proxy ([`proxy`]) on
//!   the bridge address, which reads where each was going
//!   (`SO_ORIGINAL_DST`) and admits it when the address is in an allowed
//!   network, or was resolved for the VM from an allowed name and the
//!   connection's own name (TLS SNI, HTTP Host; [`sniff`]), if it has one,
//!   is allowed too — so a shared or changed address never admits a name
//!   the policy does not. Admitted connections are spliced to their
//!   destination; refused ones are closed and logged.
//! - Nothing else is forwarded: a policed VM has no NAT rules, so UDP other
//!   than its DNS and every other protocol stop at the bridge.
//!
//! The log and the resolved addresses live here ([`Book`]), in memory:
//! what a VM was refused since this daemon started (`vm egress`).

pub mod mitm;
pub mod proxy;
pub mod resolve;
pub mod secrets;
pub mod sniff;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::egress::{Allowances, EgressRefusal};

/// Addresses remembered per VM, at most.
pub const MAX_RESOLVED: usize = 4096;
/// Distinct refusals logged per VM, at most (more are counted under one
/// entry).
pub const MAX_REFUSALS: usize = 512;
/// The shortest time an address resolved from an allowed name stays
/// admitted, whatever its TTL: a guest may connect a little after it asked,
/// and its resolver may cache.
pub const MIN_KEEP: Duration = Duration::from_secs(300);
/// The longest.
pub const MAX_KEEP: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct VmBook {
    /// Address → (the allowed name it was resolved from, until when).
    resolved: HashMap<Ipv4Addr, (String, Instant)>,
    /// (kind, name, address) → the refusal's counts.
    refused: BTreeMap<(String, Option<String>, Option<String>), EgressRefusal>,
}

/// What the daemon knows of policed VMs' traffic, by VM id.
#[derive(Default)]
pub struct Book(Mutex<HashMap<String, VmBook>>);

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Book {
    fn with<T>(&self, vm_id: &str, f: impl FnOnce(&mut VmBook) -> T) -> T {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(vm_id.to_string()).or_default())
    }

    /// Remembers that `name` (allowed) resolved to `ips` for this VM.
    pub fn resolved(&self, vm_id: &str, name: &str, ips: &[(Ipv4Addr, u32)]) {
        let now = Instant::now();
        self.with(vm_id, |b| {
            if b.resolved.len() + ips.len() > MAX_RESOLVED {
                b.resolved.retain(|_, (_, until)| *until > now);
            }
            for (ip, ttl) in ips {
                if b.resolved.len() >= MAX_RESOLVED && !b.resolved.contains_key(ip) {
                    break;
                }
                let keep = Duration::from_secs(u64::from(*ttl)).clamp(MIN_KEEP, MAX_KEEP);
                b.resolved.insert(*ip, (name.to_string(), now + keep));
            }
        })
    }

    /// The allowed name `ip` was resolved from for this VM, while it holds.
    pub fn resolved_name(&self, vm_id: &str, ip: Ipv4Addr) -> Option<String> {
        self.with(vm_id, |b| {
            b.resolved
                .get(&ip)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(n, _)| n.clone())
        })
    }

    /// Logs one refusal.
    pub fn refuse(&self, vm_id: &str, kind: &str, name: Option<String>, address: Option<String>) {
        let now = now_unix();
        tracing::debug!(vm_id, kind, ?name, ?address, "egress refused");
        self.with(vm_id, |b| {
            let mut key = (kind.to_string(), name, address);
            if b.refused.len() >= MAX_REFUSALS && !b.refused.contains_key(&key) {
                key = (kind.to_string(), Some("(more)".into()), None);
            }
            let e = b.refused.entry(key.clone()).or_insert(EgressRefusal {
                kind: key.0,
                name: key.1,
                address: key.2,
                count: 0,
                first_unix: now,
                last_unix: now,
            });
            e.count += 1;
            e.last_unix = now;
        })
    }

    /// What the VM was refused, most recent first.
    pub fn refusals(&self, vm_id: &str) -> Vec<EgressRefusal> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<EgressRefusal> = m
            .get(vm_id)
            .map(|b| b.refused.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.last_unix.cmp(&a.last_unix).then(b.count.cmp(&a.count)));
        v
    }

    /// A boot starts with no resolved addresses (the log stays).
    pub fn rebooted(&self, vm_id: &str) {
        self.with(vm_id, |b| b.resolved.clear());
    }

    /// The VM is gone.
    pub fn forget(&self, vm_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
    }
}

/// One running VM as the DNS server and the proxy see it.
#[derive(Clone)]
pub struct Guest {
    pub id: String,
    pub name: String,
    /// Its policy, if it has one.
    pub policy: Option<Arc<Allowances>>,
}

/// The running VMs by address, as of a store generation: packets and
/// connections are judged from memory, and the store is read again (once)
/// only after a VM was written — so a policy changed by `vm set` holds
/// from the next question or connection on.
#[derive(Default)]
pub struct Running {
    generation: Option<u64>,
    by_ip: HashMap<Ipv4Addr, Guest>,
    by_name: HashMap<String, Ipv4Addr>,
}

impl Running {
    /// Reads the store again if a VM was written since.
    pub async fn refresh(&mut self, ctx: &Arc<super::Ctx>) {
        let g = ctx.store.vm_generation();
        if self.generation == Some(g) {
            return;
        }
        let c = ctx.clone();
        match tokio::task::spawn_blocking(move || c.store.list_vms()).await {
            Ok(Ok(vms)) => {
                self.by_ip.clear();
                self.by_name.clear();
                for v in vms {
                    if !v.state.may_have_vmm() {
                        continue;
                    }
                    let Some(ip) = v.ip.as_deref().and_then(|i| i.parse::<Ipv4Addr>().ok()) else {
                        continue;
                    };
                    if v.state == crate::domain::VmState::Running {
                        self.by_name.insert(v.name.clone(), ip);
                    }
                    let policy = v.egress.as_ref().map(|p| Arc::new(p.allowances()));
                    self.by_ip.insert(
                        ip,
                        Guest {
                            id: v.id,
                            name: v.name,
                            policy,
                        },
                    );
                }
                self.generation = Some(g);
            }
            Ok(Err(e)) => tracing::warn!("egress: reading the VMs: {e}"),
            Err(e) => tracing::warn!("egress: reading the VMs: {e}"),
        }
    }

    /// The running VM named `name` (lowercase), for `<name>.vm`.
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.by_name.get(name).copied()
    }

    /// The VM at `ip` (starting or running).
    pub fn guest(&self, ip: Ipv4Addr) -> Option<&Guest> {
        self.by_ip.get(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_target_and_bounded() {
        let b = Book::default();
        b.refuse("v", "dns", Some("a.test".into()), None);
        b.refuse("v", "dns", Some("a.test".into()), None);
        b.refuse("v", "tcp", None, Some("10.0.0.1:80".into()));
        let r = b.refusals("v");
        assert_eq!(r.len(), 2);
        let a = r.iter().find(|e| e.kind == "dns").unwrap();
        assert_eq!((a.count, a.target().as_str()), (2, "a.test"));
        assert!(b.refusals("other").is_empty(), "per VM");
        for i in 0..MAX_REFUSALS + 10 {
            b.refuse(
                "v",
                "tcp",
                None,
                Some(format!("10.0.{}.{}:1", i / 256, i % 256)),
            );
        }
        let r = b.refusals("v");
        assert_eq!(r.len(), MAX_REFUSALS + 1, "one entry holds the rest");
        let more = r
            .iter()
            .find(|e| e.name.as_deref() == Some("(more)"))
            .unwrap();
        assert!(more.count >= 10);
    }

    #[test]
    fn resolved_addresses_are_kept_per_vm_with_the_name() {
        let b = Book::default();
        let ip: Ipv4Addr = "10.0.0.2".parse().unwrap();
        b.resolved("v", "allowed.test", &[(ip, 0)]);
        assert_eq!(b.resolved_name("v", ip).as_deref(), Some("allowed.test"));
        assert_eq!(b.resolved_name("w", ip), None);
        b.rebooted("v");
        assert_eq!(b.resolved_name("v", ip), None);
    }
}
