//! Supervision pieces both actor trees use (the daemon's and the helper's):
//! restart backoff and the slot that holds a supervised child's current ref.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use ractor::ActorRef;

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
