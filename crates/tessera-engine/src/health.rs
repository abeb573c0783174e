//! The engine's health, shared between the coordinator (which sets it) and the API (which reads
//! it to refuse requests early and to answer readiness probes).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    Starting,
    Ready,
    /// Workers failed and are being rebuilt.
    Recovering,
    /// Stopped for good (worker failure with `on_worker_failure = "exit"`, too many restarts, or
    /// shutdown).
    Stopped,
}

#[derive(Default)]
pub struct Health {
    state: AtomicU8,
    /// Milliseconds since the epoch when the last step completed.
    last_step_ms: AtomicU64,
    /// True while the step loop has work.
    busy: AtomicBool,
    reason: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Health {
    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Acquire) {
            0 => HealthState::Starting,
            1 => HealthState::Ready,
            2 => HealthState::Recovering,
            _ => HealthState::Stopped,
        }
    }

    pub(crate) fn set(&self, state: HealthState, reason: Option<String>) {
        if reason.is_some() || state == HealthState::Ready {
            *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        }
        let code = match state {
            HealthState::Starting => 0,
            HealthState::Ready => 1,
            HealthState::Recovering => 2,
            HealthState::Stopped => 3,
        };
        self.state.store(code, Ordering::Release);
    }

    /// Why the engine is not ready, if it says.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn step_done(&self) {
        self.last_step_ms.store(now_ms(), Ordering::Release);
    }

    pub(crate) fn set_busy(&self, busy: bool) {
        if busy && !self.busy.load(Ordering::Acquire) {
            // The clock of a hung step starts when work arrives, not at the last step long ago.
            self.step_done();
        }
        self.busy.store(busy, Ordering::Release);
    }

    /// Ready to serve: healthy, and either idle or a step completed within `max_step_age_ms`.
    /// A hung engine (busy, no step for longer) is not ready.
    pub fn is_ready(&self, max_step_age_ms: u64) -> bool {
        if self.state() != HealthState::Ready {
            return false;
        }
        !self.busy.load(Ordering::Acquire)
            || now_ms().saturating_sub(self.last_step_ms.load(Ordering::Acquire)) <= max_step_age_ms
    }
}
