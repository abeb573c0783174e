//! One scheduling step (`schedule` + `update`) with 256 running sequences decoding.
//!
//! Run: `cargo bench -p tessera-sched --bench schedule_step`. The figure goes in
//! docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tessera_core::config::SchedulerConfig;
use tessera_core::step::{SampledToken, StepResult};
use tessera_core::{Request, RequestId, SamplingParams};
use tessera_kv::{KvCacheManager, KvConfig};
use tessera_sched::Scheduler;

const NUM_SEQS: usize = 256;
const PROMPT_LEN: usize = 128;
const MAX_MODEL_LEN: usize = 4096;
/// Steps on one scheduler before a fresh one is built (outside the timing), so sequences stay in
/// a realistic length range.
const STEPS_PER_SCHEDULER: u64 = 1024;

/// A scheduler whose 256 sequences have finished their prefill and are decoding.
fn warm_scheduler(waiting: usize) -> Scheduler {
    let config = SchedulerConfig { max_num_seqs: NUM_SEQS, ..Default::default() };
    let kv = KvCacheManager::new(KvConfig {
        num_blocks: NUM_SEQS * MAX_MODEL_LEN / 16,
        block_size: 16,
        enable_prefix_caching: true,
        enable_kv_events: false,
    });
    let mut s = Scheduler::new(config, kv, MAX_MODEL_LEN);
    for i in 0..(NUM_SEQS + waiting) as u64 {
        let prompt = (0..PROMPT_LEN as u32).map(|t| t + i as u32 * 7).collect();
        s.add_request(Request::new(RequestId(i), prompt, SamplingParams::greedy(3000))).unwrap();
    }
    while s.num_running() < NUM_SEQS {
        run_step(&mut s);
    }
    run_step(&mut s);
    s
}

fn run_step(s: &mut Scheduler) -> usize {
    let plan = s.schedule();
    let sampled =
        plan.sampled_ids().map(|request_id| SampledToken { request_id, token_id: 7, logprobs: None });
    let result = StepResult { step_id: plan.step_id, sampled: sampled.collect() };
    s.update(&plan, &result).len()
}

fn bench_step(c: &mut Criterion, name: &str, waiting: usize) {
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut s = warm_scheduler(waiting);
            let mut steps = 0;
            for _ in 0..iters {
                if steps == STEPS_PER_SCHEDULER {
                    s = warm_scheduler(waiting);
                    steps = 0;
                }
                let start = Instant::now();
                black_box(run_step(&mut s));
                total += start.elapsed();
                steps += 1;
            }
            total
        })
    });
}

fn schedule_step(c: &mut Criterion) {
    bench_step(c, "schedule+update, 256 decoding", 0);
    bench_step(c, "schedule+update, 256 decoding, 1000 waiting", 1000);
}

criterion_group!(benches, schedule_step);
criterion_main!(benches);
