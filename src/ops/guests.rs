//! What the daemon knows about each running guest beyond its record: is
//! its agent answering (from the VM's `GuestWatch`), and how often the
//! per-VM children (agent session, guest watch, VMM monitor) were restarted
//! and why. In memory only: it describes this daemon's children, which
//! start afresh with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::domain::views::ChildView;

/// Consecutive failed pings after which a running VM is shown `degraded`.
pub const DEGRADED_AFTER: u32 = 3;

/// The agent as the watch last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AgentSeen {
    /// Not checked yet (just started, or not running).
    #[default]
    Unknown,
    Answering {
        rtt_us: u64,
    },
    Silent {
        failures: u32,
        since_unix: u64,
        error: String,
    },
}

/// One child's restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarts {
    pub count: u32,
    pub last_error: Option<String>,
    pub last_unix: Option<u64>,
}

/// One VM's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestHealth {
    pub agent: AgentSeen,
    pub children: BTreeMap<&'static str, Restarts>,
}

impl GuestHealth {
    /// Running, but its agent has not answered for a while.
    pub fn degraded(&self) -> bool {
        matches!(self.agent, AgentSeen::Silent { failures, .. } if failures >= DEGRADED_AFTER)
    }

    /// Running, but its agent has been silent since more than `bound`
    /// before `now_unix`.
    pub fn unresponsive(&self, bound: std::time::Duration, now_unix: u64) -> bool {
        matches!(self.agent, AgentSeen::Silent { since_unix, failures, .. }
            if failures >= DEGRADED_AFTER && now_unix.saturating_sub(since_unix) >= bound.as_secs())
    }

    pub fn restarts(&self) -> u32 {
        self.children.values().map(|r| r.count).sum()
    }

    pub fn agent_error(&self) -> Option<String> {
        match &self.agent {
            AgentSeen::Silent { error, .. } => Some(error.clone()),
            _ => None,
        }
    }

    pub fn child_views(&self) -> Vec<ChildView> {
        self.children
            .iter()
            .map(|(name, r)| ChildView {
                name: name.to_string(),
                restarts: r.count,
                last_error: r.last_error.clone(),
                last_restart_unix: r.last_unix,
            })
            .collect()
    }
}

/// Every VM's entry, by VM id.
#[derive(Default)]
pub struct Board(Mutex<HashMap<String, GuestHealth>>);

impl Board {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut GuestHealth) -> T) -> T {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(id.to_string()).or_default())
    }

    pub fn get(&self, id: &str) -> GuestHealth {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id).cloned().unwrap_or_default()
    }

    /// A ping answered.
    pub fn answered(&self, id: &str, rtt_us: u64) {
        self.with(id, |g| g.agent = AgentSeen::Answering { rtt_us });
    }

    /// The guest was heard from without a ping: answering (its last round
    /// trip kept; 0 when it had none).
    pub fn heard(&self, id: &str) {
        self.with(id, |g| {
            if !matches!(g.agent, AgentSeen::Answering { .. }) {
                g.agent = AgentSeen::Answering { rtt_us: 0 };
            }
        });
    }

    /// A ping failed; returns the consecutive failures.
    pub fn silent(&self, id: &str, error: String) -> u32 {
        self.with(id, |g| {
            let (failures, since_unix) = match &g.agent {
                AgentSeen::Silent {
                    failures,
                    since_unix,
                    ..
                } => (failures + 1, *since_unix),
                _ => (1, crate::store::model::now_unix()),
            };
            g.agent = AgentSeen::Silent {
                failures,
                since_unix,
                error,
            };
            failures
        })
    }

    /// Not running: nothing to watch.
    pub fn idle(&self, id: &str) {
        self.with(id, |g| g.agent = AgentSeen::Unknown);
    }

    /// `child` of VM `id` died (`why`) and is being restarted.
    pub fn restarted(&self, id: &str, child: &'static str, why: String) {
        self.with(id, |g| {
            let r = g.children.entry(child).or_default();
            r.count += 1;
            r.last_error = Some(why);
            r.last_unix = Some(crate::store::model::now_unix());
        });
    }

    /// The VM is gone.
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_silent_pings_make_a_vm_degraded_and_one_answer_heals_it() {
        let b = Board::default();
        for i in 1..DEGRADED_AFTER {
            assert_eq!(b.silent("a", format!("timeout {i}")), i);
            assert!(!b.get("a").degraded());
        }
        b.silent("a", "timeout".into());
        let g = b.get("a");
        assert!(g.degraded());
        assert_eq!(g.agent_error().as_deref(), Some("timeout"));
        assert!(!b.get("b").degraded(), "other VMs are not touched");
        b.answered("a", 900);
        assert!(!b.get("a").degraded());
        b.restarted("a", "agent-session", "aborted".into());
        b.restarted("a", "agent-session", "aborted again".into());
        let g = b.get("a");
        assert_eq!(g.restarts(), 2);
        assert_eq!(
            g.child_views()[0].last_error.as_deref(),
            Some("aborted again")
        );
        b.forget("a");
        assert_eq!(b.get("a"), GuestHealth::default());
    }
}
