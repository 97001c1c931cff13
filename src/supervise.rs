//! Supervision pieces every supervisor uses (the daemon's supervisor, the
//! VM registry, each VM actor, the helper's supervisor): how a child ended,
//! the one restart routine (backoff per child, then a message to the
//! supervisor), and the slot that holds a supervised child's current ref.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorRef, SupervisionEvent};

/// How a supervised child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It panicked or its handler failed: the message.
    Failed(String),
    /// It stopped, with its reason when it gave one.
    Stopped(Option<String>),
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Failed(e) => write!(f, "failed: {e}"),
            Ending::Stopped(Some(r)) => write!(f, "stopped: {r}"),
            Ending::Stopped(None) => f.write_str("stopped"),
        }
    }
}

/// A child's end as its supervisor sees it: the child and how it ended.
/// Other supervision events are not endings.
pub fn ended(evt: SupervisionEvent) -> Option<(ActorCell, Ending)> {
    match evt {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, Ending::Failed(err.to_string()))),
        SupervisionEvent::ActorTerminated(cell, _, reason) => Some((cell, Ending::Stopped(reason))),
        _ => None,
    }
}

/// The one restart routine: a backoff per child (`K` names it), and the
/// supervisor's own restart message sent to it after the delay.
pub struct Restarts<K>(HashMap<K, Backoff>);

impl<K> Default for Restarts<K> {
    fn default() -> Self {
        Restarts(HashMap::new())
    }
}

impl<K: Eq + Hash> Restarts<K> {
    /// Sends `msg` to `supervisor` after `child`'s next delay; the delay.
    pub fn schedule<M: ractor::Message>(
        &mut self,
        child: K,
        supervisor: &ActorRef<M>,
        msg: impl FnOnce() -> M + Send + 'static,
    ) -> Duration {
        let d = self.0.entry(child).or_default().next_delay();
        supervisor.send_after(d, msg);
        d
    }

    /// Forgets a child that is gone for good.
    pub fn forget(&mut self, child: &K) {
        self.0.remove(child);
    }
}

/// Exponential restart backoff for one child, forgiven after a quiet period.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
    last_failure: Option<Instant>,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(30);
    /// A child that ran this long without failing starts over at BASE.
    pub const FORGIVE_AFTER: Duration = Duration::from_secs(60);

    /// Records a failure and returns how long to wait before restarting.
    pub fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) > Self::FORGIVE_AFTER)
        {
            self.failures = 0;
        }
        self.last_failure = Some(now);
        let d = Self::BASE.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        d.min(Self::MAX)
    }
}

/// The current `ActorRef` of a supervised child; the supervisor replaces it
/// on restart, everyone else reads it. Empty while the child is restarting.
pub struct Slot<M: ractor::Message>(RwLock<Option<ActorRef<M>>>);

impl<M: ractor::Message> Default for Slot<M> {
    fn default() -> Self {
        Slot(RwLock::new(None))
    }
}

impl<M: ractor::Message> Slot<M> {
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, r: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(400));
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Backoff::MAX);
    }
}
