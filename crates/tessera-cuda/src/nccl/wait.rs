//! The collective watchdog's one loop. NCCL has no timeouts: a peer that never arrives leaves a
//! collective kernel spinning forever, and any host call that waits for that stream (a
//! synchronize, a copy to the host) would wait forever too. So no host wait on a group's work
//! blocks in the driver: it polls a probe (an event query, NCCL's async error state) and gives up
//! at a deadline or when the group's `AbortSignal` is raised.

use super::signal::AbortSignal;
use std::time::{Duration, Instant};

/// What one look at the awaited work found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Done,
    Pending,
}

/// Why a wait gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// Nothing completed within the deadline: a peer is stuck, gone, or never joined.
    Timeout(String),
    /// Another rank of this process raised the group's signal.
    Aborted(String),
    /// The probe reported an error (CUDA or NCCL).
    Failed(String),
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::Timeout(m) | WaitError::Aborted(m) | WaitError::Failed(m) => f.write_str(m),
        }
    }
}

/// Spinning this long costs one core briefly; most waits (a decode step's tail) end within it.
const SPIN: Duration = Duration::from_micros(200);
/// Then short sleeps, so a step that ends a little later is still seen within ~0.1 ms...
const SHORT_PHASE: Duration = Duration::from_millis(20);
const SHORT_SLEEP: Duration = Duration::from_micros(20);
/// ...and after that 1 ms sleeps: a wait this long is prefill or a stuck peer.
const LONG_SLEEP: Duration = Duration::from_millis(1);

/// Polls `probe` until it reports `Done`. `what` names the awaited work in error messages, and
/// `timeout_name` the setting that bounds it.
pub fn poll_until(
    timeout: Duration,
    timeout_name: &str,
    signal: &AbortSignal,
    what: &str,
    mut probe: impl FnMut() -> Result<Probe, String>,
) -> Result<(), WaitError> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(Probe::Done) => return Ok(()),
            Ok(Probe::Pending) => {}
            Err(err) => return Err(WaitError::Failed(format!("{what}: {err}"))),
        }
        if let Some(reason) = signal.reason() {
            return Err(WaitError::Aborted(format!("{what} abandoned: the group failed: {reason}")));
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(WaitError::Timeout(format!(
                "{what}: no progress for {} ms ({timeout_name}); a peer rank is stuck, gone or never joined",
                timeout.as_millis()
            )));
        }
        if waited < SPIN {
            std::hint::spin_loop();
            std::thread::yield_now();
        } else if waited < SHORT_PHASE {
            std::thread::sleep(SHORT_SLEEP);
        } else {
            std::thread::sleep(LONG_SLEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: &str = "parallel.collective_timeout_ms";

    #[test]
    fn returns_once_the_probe_is_done() {
        let mut calls = 0;
        let signal = AbortSignal::new();
        let result = poll_until(Duration::from_secs(5), TIMEOUT, &signal, "step", || {
            calls += 1;
            Ok(if calls == 50 { Probe::Done } else { Probe::Pending })
        });
        assert_eq!(result, Ok(()));
        assert_eq!(calls, 50);
    }

    #[test]
    fn gives_up_at_the_deadline_and_names_the_setting() {
        let signal = AbortSignal::new();
        let start = Instant::now();
        let err =
            poll_until(Duration::from_millis(60), TIMEOUT, &signal, "all-reduce", || Ok(Probe::Pending))
                .unwrap_err();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(60) && waited < Duration::from_secs(2), "{waited:?}");
        match err {
            WaitError::Timeout(m) => assert!(m.contains("60 ms") && m.contains(TIMEOUT), "{m}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn a_raised_signal_ends_the_wait_promptly_with_its_reason() {
        let signal = AbortSignal::new();
        let raiser = signal.clone();
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            raiser.abort("rank 1 panicked");
        });
        let err =
            poll_until(Duration::from_secs(30), TIMEOUT, &signal, "step", || Ok(Probe::Pending)).unwrap_err();
        thread.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert_eq!(err, WaitError::Aborted("step abandoned: the group failed: rank 1 panicked".into()));
    }

    #[test]
    fn a_probe_error_is_returned_at_once() {
        let signal = AbortSignal::new();
        let err =
            poll_until(Duration::from_secs(30), TIMEOUT, &signal, "step", || Err("ncclRemoteError".into()))
                .unwrap_err();
        assert_eq!(err, WaitError::Failed("step: ncclRemoteError".into()));
    }
}
