//! The worker's OS thread. It owns the device state (weights, KV cache, collectives) for its
//! whole life, so actor handlers never block on model work; a panic inside a step is contained
//! here, poisons the rank's collectives (so peers fail instead of hanging), and makes the rank
//! answer every later job with an error until the group is rebuilt.

use super::StepExecutor;
use ractor::RpcReplyPort;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tessera_core::step::{StepPlan, StepResult};
use tokio::sync::oneshot;

/// Rank 0's sampled tokens (`Some`), another rank's acknowledgement (`None`), or why it failed.
pub type WorkerReply = Result<Option<StepResult>, String>;

pub enum WorkerJob {
    Execute(Arc<StepPlan>, RpcReplyPort<WorkerReply>),
}

/// A test hook: make one rank fail at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultInjection {
    pub rank: usize,
    /// The first step id at which the fault fires (it fires once per worker thread).
    pub at_step: u64,
    pub kind: FaultKind,
}

/// A fault shared by every incarnation of a rank: it fires once per engine, not once per rebuilt
/// worker.
#[derive(Clone, Debug)]
pub struct ArmedFault {
    pub fault: FaultInjection,
    pub fired: Arc<AtomicBool>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    Panic,
    /// Sleep before executing, as a stuck device or collective would.
    Hang(Duration),
}

/// Builds the rank's executor on the worker thread (weights are loaded there).
pub type ExecutorFactory = Box<dyn FnOnce() -> Result<Box<dyn StepExecutor>, String> + Send>;

/// Everything needed to start one rank.
pub struct ExecutorFactoryArgs {
    pub rank: usize,
    pub factory: ExecutorFactory,
    /// Fails the rank's collectives so that its peers stop waiting for it.
    pub poison: Box<dyn Fn(&str) + Send>,
    pub fault: Option<ArmedFault>,
}

/// Worker threads of this process that have not ended yet (every engine's).
static LIVE_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Counts a worker thread as live from its spawn until its function returns (the executor, with
/// its device state, is dropped before that).
struct LiveGuard;

impl LiveGuard {
    fn new() -> Self {
        LIVE_THREADS.fetch_add(1, Ordering::SeqCst);
        LiveGuard
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE_THREADS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until every worker thread of the process has ended (after the engines were shut down),
/// at most `timeout`; false if some are still running (e.g. stuck in a step). A process should
/// call it before `exit`: ending it while a rank still holds CUDA contexts, graphs or NCCL
/// communicators lets the libraries' exit handlers run under live threads, which crashed a
/// tensor-parallel server (SIGSEGV after a clean drain).
pub fn wait_for_worker_threads(timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while LIVE_THREADS.load(Ordering::SeqCst) > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

pub struct WorkerThread {
    jobs: Option<mpsc::Sender<WorkerJob>>,
    handle: Option<JoinHandle<()>>,
}

impl WorkerThread {
    /// Starts the thread; the receiver resolves once the executor is built (or failed to).
    pub fn spawn(
        rank: usize,
        factory: ExecutorFactory,
        poison: Box<dyn Fn(&str) + Send>,
        fault: Option<ArmedFault>,
    ) -> (Self, oneshot::Receiver<Result<(), String>>) {
        let (jobs, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let live = LiveGuard::new();
        let handle = std::thread::Builder::new()
            .name(format!("tessera-worker-{rank}"))
            .spawn(move || {
                let _live = live;
                run(rank, factory, poison, fault.filter(|f| f.fault.rank == rank), rx, ready_tx)
            })
            .expect("spawning a worker thread");
        (WorkerThread { jobs: Some(jobs), handle: Some(handle) }, ready_rx)
    }

    /// Queues a job; if the thread is gone the reply port is dropped, which the caller sees as
    /// a failed call.
    pub fn submit(&self, job: WorkerJob) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop. A thread stuck in a step is not joined
        // (it cannot be interrupted); it exits when its step returns.
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn run(
    rank: usize,
    factory: ExecutorFactory,
    poison: Box<dyn Fn(&str) + Send>,
    fault: Option<ArmedFault>,
    jobs: mpsc::Receiver<WorkerJob>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let built = catch_unwind(AssertUnwindSafe(factory)).unwrap_or_else(|p| Err(panic_message(p.as_ref())));
    let mut executor = match built {
        Ok(executor) => {
            let _ = ready.send(Ok(()));
            executor
        }
        Err(err) => {
            poison(&format!("rank {rank} failed to start: {err}"));
            let _ = ready.send(Err(err));
            return;
        }
    };
    let mut dead: Option<String> = None;
    while let Ok(WorkerJob::Execute(plan, reply)) = jobs.recv() {
        if let Some(reason) = &dead {
            let _ = reply.send(Err(reason.clone()));
            continue;
        }
        let fired = fault
            .as_ref()
            .filter(|f| plan.step_id >= f.fault.at_step && !f.fired.swap(true, Ordering::SeqCst))
            .map(|f| f.fault.kind.clone());
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            match fired {
                Some(FaultKind::Panic) => panic!("injected fault at step {}", plan.step_id),
                Some(FaultKind::Hang(duration)) => std::thread::sleep(duration),
                None => {}
            }
            executor.execute(&plan)
        }));
        let result = match outcome {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(err)) => Err(format!("rank {rank}: {err}")),
            Err(payload) => Err(format!("rank {rank} panicked: {}", panic_message(payload.as_ref()))),
        };
        if let Err(reason) = &result {
            // The rank's state (KV cache, mirrors, collectives) can no longer be trusted.
            poison(reason);
            dead = Some(reason.clone());
        }
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread still building its executor counts as live; once its factory returns and the
    /// handle is dropped (the channel closes), the wait succeeds.
    #[test]
    fn waiting_for_worker_threads_sees_them_end() {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let factory: ExecutorFactory = Box::new(move || {
            let _ = release_rx.recv();
            Err("no executor in this test".to_string())
        });
        let (thread, _ready) = WorkerThread::spawn(0, factory, Box::new(|_| {}), None);
        assert!(!wait_for_worker_threads(Duration::from_millis(50)), "the building thread is live");
        release_tx.send(()).unwrap();
        drop(thread);
        assert!(wait_for_worker_threads(Duration::from_secs(10)), "the thread ended");
    }
}
