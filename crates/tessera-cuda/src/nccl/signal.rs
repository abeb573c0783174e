//! `AbortSignal`: how one rank tells the others of its process that the group has failed. NCCL
//! gives a rank stuck in a collective no way to learn that a peer died; the signal is checked by
//! every host wait (`poll_until`), so a poisoned group's ranks stop waiting within a poll interval
//! instead of at their own deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared by the ranks of one group build in one process; cheap to clone. Ranks in other
/// processes learn of a failure from NCCL (the aborted peer's connections fail) or their deadline.
#[derive(Clone, Debug, Default)]
pub struct AbortSignal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl AbortSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the group. The first reason is kept: it is the cause, later ones are consequences.
    pub fn abort(&self, reason: &str) {
        let mut slot = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| reason.to_string());
        self.0.raised.store(true, Ordering::Release);
    }

    /// One atomic load: cheap enough for every poll.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<String> {
        if !self.is_raised() {
            return None;
        }
        self.0.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_reason_and_is_seen_by_clones() {
        let signal = AbortSignal::new();
        let peer = signal.clone();
        assert!(!peer.is_raised());
        assert_eq!(peer.reason(), None);
        signal.abort("rank 1 timed out");
        peer.abort("rank 0: group failed");
        assert!(peer.is_raised());
        assert_eq!(signal.reason().as_deref(), Some("rank 1 timed out"));
    }
}
