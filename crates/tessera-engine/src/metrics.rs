//! Engine metrics through the `metrics` crate (names prefixed `tessera_`); whatever recorder the
//! process installs (Prometheus in the server) collects them.

use std::time::Duration;
use tessera_core::FinishReason;
use tessera_sched::SchedulerStats;

pub fn scheduler_gauges(stats: &SchedulerStats) {
    metrics::gauge!("tessera_num_requests_running").set(stats.num_running as f64);
    metrics::gauge!("tessera_num_requests_waiting").set(stats.num_waiting as f64);
    metrics::gauge!("tessera_kv_cache_usage_ratio").set(stats.kv_usage);
}

/// Reports counters as deltas since `before` (the scheduler's own counters are cumulative).
pub fn scheduler_counters(before: &SchedulerStats, now: &SchedulerStats) {
    let delta = |a: u64, b: u64| b.saturating_sub(a);
    metrics::counter!("tessera_num_preemptions_total")
        .increment(delta(before.num_preemptions, now.num_preemptions));
    metrics::counter!("tessera_prefix_cache_queries_total")
        .increment(delta(before.num_prefix_query_tokens, now.num_prefix_query_tokens));
    metrics::counter!("tessera_prefix_cache_hits_total")
        .increment(delta(before.num_prefix_hit_tokens, now.num_prefix_hit_tokens));
}

pub fn prompt_tokens(n: usize) {
    metrics::counter!("tessera_prompt_tokens_total").increment(n as u64);
}

pub fn generation_tokens(n: usize) {
    metrics::counter!("tessera_generation_tokens_total").increment(n as u64);
}

pub fn time_to_first_token(d: Duration) {
    metrics::histogram!("tessera_time_to_first_token_seconds").record(d.as_secs_f64());
}

pub fn inter_token_latency(d: Duration) {
    metrics::histogram!("tessera_inter_token_latency_seconds").record(d.as_secs_f64());
}

pub fn request_finished(reason: FinishReason, e2e: Duration) {
    let reason = match reason {
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
        FinishReason::Abort => "abort",
    };
    metrics::counter!("tessera_request_finished_total", "finish_reason" => reason).increment(1);
    metrics::histogram!("tessera_e2e_request_latency_seconds").record(e2e.as_secs_f64());
}

/// Time of one phase of a step: `schedule` (the scheduler's plan, after its update from the last
/// step), `execute` (the workers' round trip), and on the sampling rank `prepare` (the step's
/// inputs on the host), `forward` (the model on the device, until it is done) and `sample`. Where
/// a step's time goes when the device is not the bottleneck.
pub fn step_phase(phase: &'static str, d: Duration) {
    metrics::histogram!("tessera_step_phase_seconds", "phase" => phase).record(d.as_secs_f64());
}

/// A decode step queued ahead of its plan (`engine.decode_lookahead`): `used` when the plan was
/// that step, `discarded` when the batch changed and its device time was lost.
pub fn decode_lookahead(used: bool) {
    let outcome = if used { "used" } else { "discarded" };
    metrics::counter!("tessera_decode_lookahead_steps_total", "outcome" => outcome).increment(1);
}

pub fn step_failed() {
    metrics::counter!("tessera_worker_failures_total").increment(1);
}
