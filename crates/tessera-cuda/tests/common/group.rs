//! Tensor-parallel groups for the multi-GPU tests: one thread per rank, rank r on GPU r, all
//! joined through one NCCL id, as the engine's CUDA group does.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;
use tessera_cuda::{AbortSignal, CommConfig, CudaBackend, NcclId};

/// Whether this machine has `needed` GPUs; prints a loud line when it has not.
pub fn gpus_present(test: &str, needed: usize) -> bool {
    let have = tessera_cuda::device_count().unwrap_or(0);
    if have < needed {
        eprintln!("SKIPPED {test}: needs {needed} GPUs, this machine has {have}");
        return false;
    }
    true
}

/// The group sizes a test covers here: 2 and 4 where the GPUs exist (loud SKIPPED otherwise).
pub fn tp_sizes(test: &str) -> Vec<usize> {
    [2, 4].into_iter().filter(|&world| gpus_present(&format!("{test} at TP={world}"), world)).collect()
}

/// Runs `f` on every rank of a `world`-rank group and returns the results in rank order. With
/// `world == 1` it is a plain single-GPU backend (no NCCL), the reference the groups are held to.
pub fn run_group<T: Send>(world: usize, f: impl Fn(&CudaBackend) -> T + Sync) -> Vec<T> {
    if world == 1 {
        return vec![f(&CudaBackend::new(0).unwrap())];
    }
    let id = NcclId::new().unwrap();
    let signal = AbortSignal::new();
    let outcomes: Vec<std::thread::Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (f, signal) = (&f, signal.clone());
                s.spawn(move || {
                    let outcome = catch_unwind(AssertUnwindSafe(|| {
                        let config =
                            CommConfig::new(id, rank, world, Duration::from_secs(60), signal.clone());
                        f(&CudaBackend::new_in_group(rank, &config).unwrap())
                    }));
                    if outcome.is_err() {
                        // The peers may be waiting for this rank in a collective.
                        signal.abort(&format!("rank {rank}'s test code panicked"));
                    }
                    outcome
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("panics are caught")).collect()
    });
    outcomes.into_iter().map(|o| o.unwrap_or_else(|p| resume_unwind(p))).collect()
}
