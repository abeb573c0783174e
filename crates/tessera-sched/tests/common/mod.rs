//! Helpers shared by the scheduler's test files.
#![allow(dead_code)]

use tessera_core::config::SchedulerConfig;
use tessera_core::step::{SampledToken, StepPlan, StepResult};
use tessera_core::{BlockId, Request, RequestId, SamplingParams};
use tessera_kv::{KvCacheManager, KvConfig};
use tessera_sched::{RequestOutput, Scheduler};

pub const BS: usize = 4;
pub const EOS: u32 = 0;

pub fn config(max_num_seqs: usize, max_num_batched_tokens: usize) -> SchedulerConfig {
    SchedulerConfig { max_num_seqs, max_num_batched_tokens, max_waiting_requests: 64, ..Default::default() }
}

pub fn scheduler(config: SchedulerConfig, num_blocks: usize, max_model_len: usize) -> Scheduler {
    config.validate("scheduler").unwrap();
    let kv = KvCacheManager::new(KvConfig {
        num_blocks,
        block_size: BS,
        enable_prefix_caching: true,
        enable_kv_events: false,
    });
    Scheduler::new(config, kv, max_model_len)
}

/// A greedy request of `prompt_len` distinct tokens starting at `first`, with eos id `EOS`.
pub fn request(id: u64, first: u32, prompt_len: usize, max_tokens: u32) -> Request {
    let mut req = Request::new(
        RequestId(id),
        (first..first + prompt_len as u32).collect(),
        SamplingParams::greedy(max_tokens),
    );
    req.eos_token_ids = vec![EOS];
    req
}

/// The result a worker would send: token `1000 + step_id` for every sampling sequence.
pub fn result_for(plan: &StepPlan) -> StepResult {
    let sampled = plan
        .sampled_ids()
        .map(|request_id| SampledToken { request_id, token_id: 1000 + plan.step_id as u32, logprobs: None })
        .collect();
    StepResult { step_id: plan.step_id, sampled }
}

/// One whole step; checks the scheduler's invariants after it.
pub fn step(s: &mut Scheduler) -> (StepPlan, Vec<RequestOutput>) {
    let plan = s.schedule();
    let outputs = s.update(&plan, &result_for(&plan));
    s.check_invariants();
    (plan, outputs)
}

/// Scheduled tokens per request in `plan`, new sequences first.
pub fn chunks(plan: &StepPlan) -> Vec<(u64, usize)> {
    let new = plan.new_sequences.iter().map(|s| (s.request_id.0, s.num_scheduled_tokens));
    new.chain(plan.cached_sequences.iter().map(|s| (s.request_id.0, s.num_scheduled_tokens))).collect()
}

pub fn ids(ids: &[u32]) -> Vec<BlockId> {
    ids.iter().map(|&i| BlockId(i)).collect()
}

/// Runs steps until nothing is left (at most `limit`), then checks every block is free or cached.
pub fn drain(s: &mut Scheduler, limit: usize) -> Vec<RequestOutput> {
    let mut all = Vec::new();
    for _ in 0..limit {
        if !s.has_unfinished() {
            break;
        }
        all.extend(step(s).1);
    }
    assert!(!s.has_unfinished(), "not drained in {limit} steps");
    assert_eq!(s.kv().pool().num_used_blocks(), 0, "blocks still in use after everything finished");
    all
}
