//! Exact plans: block ids, chunk sizes, hit lengths, preemption victims, admission and endings.

mod common;

use common::*;
use tessera_core::step::{CachedSequence, NewSequence, SampledToken, StepResult};
use tessera_core::{FinishReason, RequestId, RequestStatus, SamplingParams};
use tessera_sched::AdmissionError;

#[test]
fn one_request_new_once_then_diffs_then_finished() {
    let mut s = scheduler(config(4, 16), 16, 64);
    s.add_request(request(1, 1, 6, 4)).unwrap();
    let (plan, out) = step(&mut s);
    assert_eq!(
        plan.new_sequences,
        vec![NewSequence {
            request_id: RequestId(1),
            prompt_token_ids: vec![1, 2, 3, 4, 5, 6],
            output_token_ids: vec![],
            sampling_params: SamplingParams::greedy(4),
            block_table: ids(&[0, 1]),
            num_computed_tokens: 0,
            num_scheduled_tokens: 6,
            sample: true,
        }]
    );
    assert_eq!((out[0].token_id, out[0].finish_reason), (1000, None));
    let (plan, _) = step(&mut s);
    let decode = |tok: u32, blocks: &[u32], computed: usize| CachedSequence {
        request_id: RequestId(1),
        new_token_ids: vec![tok],
        new_block_ids: ids(blocks),
        num_computed_tokens: computed,
        num_scheduled_tokens: 1,
        sample: true,
    };
    assert_eq!(plan.cached_sequences, vec![decode(1000, &[], 6)]);
    // Token 9 lives in position 8, the third block, which comes with the decode before it (one
    // slot ahead, for the workers' decode lookahead).
    assert_eq!(step(&mut s).0.cached_sequences, vec![decode(1001, &[2], 7)]);
    let (plan, out) = step(&mut s);
    assert_eq!(plan.cached_sequences, vec![decode(1002, &[], 8)]);
    assert_eq!((out[0].token_id, out[0].finish_reason), (1003, Some(FinishReason::Length)));
    let (plan, out) = step(&mut s);
    assert_eq!((plan.finished_ids.clone(), plan.is_empty(), out), (vec![RequestId(1)], true, vec![]));
    assert_eq!(s.kv().pool().num_used_blocks(), 0);
}

#[test]
fn the_block_of_the_next_decode_comes_ahead_only_when_free() {
    // Two requests of 3 prompt tokens (one block each) and 3 blocks in all.
    let mut s = scheduler(config(4, 16), 3, 64);
    s.add_request(request(1, 1, 3, 8)).unwrap();
    s.add_request(request(2, 10, 3, 8)).unwrap();
    step(&mut s);
    // Both decode position 3 and want position 4's block ahead: 1 takes the last free block, 2
    // finds none, and nobody is preempted for a block that is only wanted ahead.
    let (plan, _) = step(&mut s);
    assert!(plan.preempted_ids.is_empty());
    let blocks: Vec<usize> = plan.cached_sequences.iter().map(|c| c.new_block_ids.len()).collect();
    assert_eq!(blocks, [1, 0]);
    // Ahead of its block, request 1 gets nothing new; request 2 needs one now and has to preempt.
    let (plan, _) = step(&mut s);
    assert_eq!(plan.preempted_ids, vec![RequestId(2)]);
    assert!(plan.cached_sequences[0].new_block_ids.is_empty());
    drain(&mut s, 40);
}

#[test]
fn chunked_prefill_splits_a_long_prompt_and_samples_only_at_its_end() {
    let mut s = scheduler(config(4, 8), 32, 64);
    s.add_request(request(2, 100, 3, 5)).unwrap();
    assert_eq!(chunks(&step(&mut s).0), vec![(2, 3)]);
    s.add_request(request(1, 1, 20, 2)).unwrap();
    let (plan, _) = step(&mut s);
    assert_eq!(chunks(&plan), vec![(1, 7), (2, 1)]);
    assert!(!plan.new_sequences[0].sample);
    assert_eq!(chunks(&step(&mut s).0), vec![(2, 1), (1, 7)]);
    let (plan, _) = step(&mut s);
    assert_eq!(chunks(&plan), vec![(2, 1), (1, 6)]);
    assert!(plan.cached_sequences[1].sample);
    assert_eq!(plan.cached_sequences[1].num_computed_tokens, 14);
    drain(&mut s, 20);
}

#[test]
fn a_long_prefill_never_starves_a_decode() {
    let mut s = scheduler(config(4, 8), 32, 64);
    s.add_request(request(2, 100, 2, 10)).unwrap();
    step(&mut s);
    let mut urgent = request(1, 1, 30, 1);
    urgent.priority = -1;
    s.add_request(urgent).unwrap();
    assert_eq!(chunks(&step(&mut s).0), vec![(1, 7), (2, 1)]);
    // The urgent prefill now runs first, yet leaves one token for the decode behind it.
    for _ in 0..3 {
        let plan = step(&mut s).0;
        assert_eq!(plan.num_scheduled_tokens(), 8);
        assert_eq!(chunks(&plan).last(), Some(&(2, 1)));
    }
    drain(&mut s, 20);
}

#[test]
fn long_prefill_threshold_lets_prompts_progress_together() {
    let config = tessera_core::config::SchedulerConfig { long_prefill_token_threshold: 4, ..config(4, 16) };
    let mut s = scheduler(config, 32, 64);
    s.add_request(request(1, 1, 10, 1)).unwrap();
    s.add_request(request(2, 50, 10, 1)).unwrap();
    assert_eq!(chunks(&step(&mut s).0), vec![(1, 4), (2, 4)]);
    assert_eq!(chunks(&step(&mut s).0), vec![(1, 4), (2, 4)]);
    let (plan, out) = step(&mut s);
    assert_eq!(chunks(&plan), vec![(1, 2), (2, 2)]);
    assert_eq!(out.iter().filter(|o| o.finish_reason == Some(FinishReason::Length)).count(), 2);
    drain(&mut s, 2);
}

#[test]
fn prefix_hits_skip_cached_blocks_but_leave_a_token_to_sample() {
    let mut s = scheduler(config(4, 64), 16, 64);
    s.add_request(request(1, 1, 10, 1)).unwrap();
    drain(&mut s, 3);
    s.add_request(request(2, 1, 10, 1)).unwrap();
    s.add_request(request(3, 1, 8, 1)).unwrap();
    let (plan, _) = step(&mut s);
    let got: Vec<_> = plan
        .new_sequences
        .iter()
        .map(|n| (n.num_computed_tokens, n.num_scheduled_tokens, n.block_table.clone()))
        .collect();
    // Request 3's 8 tokens are both cached, but one block is recomputed to get logits.
    assert_eq!(got, vec![(8, 2, ids(&[0, 1, 3])), (4, 4, ids(&[0, 4]))]);
    let stats = s.stats();
    assert_eq!((stats.num_prefix_hit_tokens, stats.num_prefix_query_tokens), (12, 28));
    drain(&mut s, 3);
}

#[test]
fn preemption_takes_the_lowest_priority_then_the_latest_arrival() {
    let mut s = scheduler(config(4, 64), 6, 64);
    let mut low = request(2, 20, 8, 4);
    low.priority = 5;
    s.add_request(request(1, 1, 8, 4)).unwrap();
    s.add_request(low).unwrap();
    s.add_request(request(3, 40, 8, 4)).unwrap();
    let (plan, _) = step(&mut s);
    let tables: Vec<_> = plan.new_sequences.iter().map(|n| (n.request_id.0, n.block_table.clone())).collect();
    assert_eq!(tables, vec![(1, ids(&[0, 1])), (3, ids(&[2, 3])), (2, ids(&[4, 5]))]);
    // Every sequence needs a third block now; the cache is full.
    let (plan, _) = step(&mut s);
    assert_eq!(plan.preempted_ids, vec![RequestId(2)]);
    let grown: Vec<_> =
        plan.cached_sequences.iter().map(|c| (c.request_id.0, c.new_block_ids.clone())).collect();
    // Request 2's blocks were released tail first: block 5 is evicted before block 4.
    assert_eq!(grown, vec![(1, ids(&[5])), (3, ids(&[4]))]);
    assert_eq!(s.status(RequestId(2)), Some(RequestStatus::Preempted));
    assert!(plan.new_sequences.is_empty(), "no admission in a step that preempted");
    drain(&mut s, 30);
}

#[test]
fn a_preempted_request_comes_back_in_full_and_finishes() {
    let mut s = scheduler(config(4, 64), 4, 64);
    s.add_request(request(1, 1, 6, 10)).unwrap();
    s.add_request(request(2, 50, 6, 10)).unwrap();
    for _ in 0..3 {
        step(&mut s);
    }
    let (plan, _) = step(&mut s);
    assert_eq!(plan.preempted_ids, vec![RequestId(2)]);
    assert_eq!(plan.cached_sequences[0].new_block_ids, ids(&[3]));
    let mut outputs_of_2 = vec![1000, 1001, 1002];
    let mut resumed = None;
    while s.has_unfinished() {
        let (plan, out) = step(&mut s);
        if let Some(n) = plan.new_sequences.iter().find(|n| n.request_id == RequestId(2)) {
            resumed = Some((n.output_token_ids.clone(), n.num_computed_tokens));
        }
        outputs_of_2.extend(out.iter().filter(|o| o.request_id == RequestId(2)).map(|o| o.token_id));
    }
    // It resumed with the tokens it had generated; nothing of its prefix survived request 1.
    assert_eq!(resumed, Some((vec![1000, 1001, 1002], 0)));
    assert_eq!(outputs_of_2.len(), 10);
    assert_eq!(s.kv().pool().num_used_blocks(), 0);
}

#[test]
fn max_num_seqs_caps_the_batch() {
    let mut s = scheduler(config(2, 64), 32, 64);
    for i in 0..3 {
        s.add_request(request(i, 10 * i as u32, 4, 2)).unwrap();
    }
    assert_eq!(chunks(&step(&mut s).0), vec![(0, 4), (1, 4)]);
    assert_eq!(s.num_waiting(), 1);
    drain(&mut s, 10);
}

#[test]
fn without_chunking_a_prompt_waits_for_room_for_all_of_it() {
    let config = tessera_core::config::SchedulerConfig { enable_chunked_prefill: false, ..config(4, 8) };
    let mut s = scheduler(config, 32, 64);
    s.add_request(request(1, 1, 6, 3)).unwrap();
    s.add_request(request(2, 50, 4, 3)).unwrap();
    assert_eq!(chunks(&step(&mut s).0), vec![(1, 6)]);
    assert_eq!(chunks(&step(&mut s).0), vec![(2, 4), (1, 1)]);
    drain(&mut s, 10);
}

#[test]
fn admission_refuses_what_can_never_fit_and_what_would_overflow_the_queue() {
    let config = tessera_core::config::SchedulerConfig { max_waiting_requests: 2, ..config(4, 16) };
    let mut s = scheduler(config.clone(), 4, 20);
    let never = |r: Result<(), AdmissionError>| matches!(r, Err(AdmissionError::NeverFits { .. }));
    assert!(never(s.add_request(request(1, 1, 21, 1))), "longer than max_model_len");
    assert!(never(s.add_request(request(1, 1, 10, 8))), "needs 17 KV slots of 16");
    assert_eq!(s.add_request(request(1, 1, 0, 1)), Err(AdmissionError::EmptyPrompt));
    s.add_request(request(1, 1, 10, 7)).unwrap();
    assert_eq!(s.add_request(request(1, 1, 3, 1)), Err(AdmissionError::DuplicateRequest(RequestId(1))));
    s.add_request(request(2, 1, 3, 1)).unwrap();
    assert_eq!(
        s.add_request(request(3, 1, 3, 1)),
        Err(AdmissionError::Overloaded { max_waiting_requests: 2 })
    );
    let no_chunks = tessera_core::config::SchedulerConfig { enable_chunked_prefill: false, ..config };
    let mut s = scheduler(no_chunks, 64, 64);
    assert!(never(s.add_request(request(1, 1, 17, 1))), "one step cannot hold it");
}

#[test]
fn abort_works_in_every_state_exactly_once() {
    let mut s = scheduler(config(1, 16), 16, 64);
    s.add_request(request(1, 1, 4, 10)).unwrap();
    s.add_request(request(2, 50, 4, 10)).unwrap();
    step(&mut s);
    // Waiting: the workers never saw it, so no plan mentions it.
    assert!(s.abort(RequestId(2)));
    assert!(!s.abort(RequestId(2)));
    // In flight: the result for it is dropped, its blocks are free at once.
    let plan = s.schedule();
    assert!(s.abort(RequestId(1)));
    assert_eq!(s.kv().pool().num_used_blocks(), 0);
    assert_eq!(s.update(&plan, &result_for(&plan)), vec![]);
    let (plan, _) = step(&mut s);
    assert_eq!(plan.finished_ids, vec![RequestId(1)]);
    assert!(!s.has_unfinished());
    assert_eq!(s.stats().num_aborted, 2);
}

#[test]
fn the_engine_can_end_a_request_with_stop() {
    let mut s = scheduler(config(4, 16), 16, 64);
    s.add_request(request(1, 1, 4, 10)).unwrap();
    step(&mut s);
    assert!(s.finish(RequestId(1), FinishReason::Stop));
    assert_eq!(step(&mut s).0.finished_ids, vec![RequestId(1)]);
    assert_eq!(s.stats().num_finished_stop, 1);
}

/// Runs one step in which every sampling sequence gets `token`.
fn step_with_token(s: &mut tessera_sched::Scheduler, token: u32) -> Vec<tessera_sched::RequestOutput> {
    let plan = s.schedule();
    let sampled = plan
        .sampled_ids()
        .map(|request_id| SampledToken { request_id, token_id: token, logprobs: None })
        .collect();
    s.update(&plan, &StepResult { step_id: plan.step_id, sampled })
}

#[test]
fn stop_tokens_eos_and_the_context_limit_end_sequences() {
    let mut s = scheduler(config(4, 64), 32, 8);
    s.add_request(request(1, 1, 4, 10)).unwrap();
    let mut stopper = request(2, 20, 4, 10);
    stopper.sampling_params.stop_token_ids = vec![7];
    s.add_request(stopper).unwrap();
    let mut ignorer = request(3, 40, 6, 10);
    ignorer.sampling_params.ignore_eos = true;
    s.add_request(ignorer).unwrap();
    let reasons = |out: Vec<tessera_sched::RequestOutput>| -> Vec<_> {
        out.iter().map(|o| (o.request_id.0, o.finish_reason)).collect()
    };
    assert_eq!(reasons(step_with_token(&mut s, 5)), vec![(1, None), (2, None), (3, None)]);
    assert_eq!(
        reasons(step_with_token(&mut s, 7)),
        vec![(1, None), (2, Some(FinishReason::Stop)), (3, Some(FinishReason::Length))]
    );
    assert_eq!(reasons(step_with_token(&mut s, EOS)), vec![(1, Some(FinishReason::Stop))]);
    assert!(!s.has_unfinished());
}
