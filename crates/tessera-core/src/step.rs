//! The step wire types: what the scheduler tells every worker to compute (`StepPlan`) and what
//! rank 0 sends back (`StepResult`).
//!
//! # The worker mirror
//!
//! Workers keep, per sequence, a mirror of its token ids, its block table and its
//! `num_computed_tokens`, built only from plans, so a plan carries each sequence in full once and
//! diffs after that. Apply a plan in this order:
//!
//! 1. Drop the mirror of every id in `finished_ids` and `preempted_ids`. Their blocks may be handed
//!    to other sequences in this very plan.
//! 2. For each `NewSequence`, create a mirror: `token_ids = prompt_token_ids ++ output_token_ids`,
//!    `block_table = block_table`. A preempted sequence that is readmitted arrives here again, in
//!    full, with the tokens it had generated so far in `output_token_ids`.
//! 3. For each `CachedSequence`, append `new_token_ids` to the mirror's tokens and `new_block_ids`
//!    to its block table.
//! 4. Every scheduled sequence (new or cached) computes the KV of tokens
//!    `num_computed_tokens .. num_computed_tokens + num_scheduled_tokens` of its mirror, at those
//!    positions, writing slot `block_table[pos / block_size] * block_size + pos % block_size`. When
//!    `sample` is true, the logits of its last scheduled token are sampled and the token goes into
//!    the `StepResult`. The worker does not append the sampled token to its mirror itself: it comes
//!    back as `new_token_ids` in the next plan that schedules the sequence.
//!
//! The scheduler asserts the same facts on its side: `num_computed_tokens` in a plan always equals
//! the worker's mirror state, and the block table always covers every scheduled position.

use crate::ids::{BlockId, RequestId};
use crate::sampling::SamplingParams;
use serde::{Deserialize, Serialize};

/// A sequence the workers have not seen (or dropped at preemption): everything, once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewSequence {
    pub request_id: RequestId,
    pub prompt_token_ids: Vec<u32>,
    /// Tokens generated before a preemption; empty for a first admission.
    pub output_token_ids: Vec<u32>,
    pub sampling_params: SamplingParams,
    pub block_table: Vec<BlockId>,
    /// Tokens whose KV is already in the cache: a prefix-cache hit, a multiple of the block size.
    pub num_computed_tokens: usize,
    /// Tokens this sequence computes in this step.
    pub num_scheduled_tokens: usize,
    /// A token is sampled after this step (false for a non-final prefill chunk).
    pub sample: bool,
}

/// A sequence the workers already mirror: only what changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedSequence {
    pub request_id: RequestId,
    /// Tokens appended since the last plan that mentioned this sequence (the sampled ones).
    pub new_token_ids: Vec<u32>,
    /// Blocks appended to its block table.
    pub new_block_ids: Vec<BlockId>,
    /// Tokens whose KV is in the cache before this step.
    pub num_computed_tokens: usize,
    pub num_scheduled_tokens: usize,
    pub sample: bool,
}

/// Everything the workers do in one step. The same value goes to every tensor-parallel rank.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepPlan {
    /// Consecutive from 0; a `StepResult` names the plan it answers.
    pub step_id: u64,
    pub new_sequences: Vec<NewSequence>,
    pub cached_sequences: Vec<CachedSequence>,
    /// Finished or aborted since the previous plan: workers drop their state.
    pub finished_ids: Vec<RequestId>,
    /// Preempted in this step (blocks taken back): workers drop their state.
    pub preempted_ids: Vec<RequestId>,
}

impl StepPlan {
    /// Tokens computed in this step, over all sequences: at most the token budget.
    pub fn num_scheduled_tokens(&self) -> usize {
        let new: usize = self.new_sequences.iter().map(|s| s.num_scheduled_tokens).sum();
        new + self.cached_sequences.iter().map(|s| s.num_scheduled_tokens).sum::<usize>()
    }

    /// Sequences that compute something in this step.
    pub fn num_scheduled_seqs(&self) -> usize {
        self.new_sequences.len() + self.cached_sequences.len()
    }

    /// True when there is nothing to run (the workers may skip the step).
    pub fn is_empty(&self) -> bool {
        self.num_scheduled_seqs() == 0
    }

    /// Ids of the sequences that sample a token in this step, in plan order.
    pub fn sampled_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        let new = self.new_sequences.iter().filter(|s| s.sample).map(|s| s.request_id);
        new.chain(self.cached_sequences.iter().filter(|s| s.sample).map(|s| s.request_id))
    }
}

/// The log-probability data of one sampled token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// Log-probability of the chosen token.
    pub logprob: f32,
    /// The `top_n` most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// One sampled token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledToken {
    pub request_id: RequestId,
    pub token_id: u32,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<TokenLogprobs>,
}

/// What rank 0 returns for a plan: one entry per sequence with `sample == true`, in plan order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub step_id: u64,
    pub sampled: Vec<SampledToken>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips_through_serde_and_counts_tokens() {
        let plan = StepPlan {
            step_id: 3,
            new_sequences: vec![NewSequence {
                request_id: RequestId(1),
                prompt_token_ids: vec![1, 2, 3],
                output_token_ids: vec![],
                sampling_params: SamplingParams::greedy(4),
                block_table: vec![BlockId(7)],
                num_computed_tokens: 0,
                num_scheduled_tokens: 3,
                sample: true,
            }],
            cached_sequences: vec![CachedSequence {
                request_id: RequestId(2),
                new_token_ids: vec![9],
                new_block_ids: vec![],
                num_computed_tokens: 5,
                num_scheduled_tokens: 1,
                sample: false,
            }],
            finished_ids: vec![RequestId(0)],
            preempted_ids: vec![],
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<StepPlan>(&json).unwrap(), plan);
        assert_eq!(plan.num_scheduled_tokens(), 4);
        assert_eq!(plan.sampled_ids().collect::<Vec<_>>(), vec![RequestId(1)]);
    }
}
