//! Building one step's plan.
//!
//! One token budget covers prefill and decode alike (a decode is a one-token "prefill"):
//!
//! 1. Running sequences, most urgent first. Each takes what it has left to compute, capped by
//!    `long_prefill_token_threshold` and by the budget minus one token reserved for every running
//!    sequence after it, so a long prefill never starves a decode. When blocks run out, the least
//!    urgent running sequence (greatest `SeqKey`: lowest priority, then latest arrival) is
//!    preempted by recompute, until the allocation fits or the sequence preempts itself.
//! 2. Waiting sequences in order, if nothing was preempted: each starts from its longest prefix
//!    hit. The first that does not fit (sequence slots, budget, blocks) stops admission, so no
//!    request is overtaken by a less urgent one.

use crate::scheduler::Scheduler;
use crate::sequence::Sequence;
use tessera_core::step::{CachedSequence, NewSequence, StepPlan};
use tessera_core::{RequestId, RequestStatus};

impl Scheduler {
    /// The next step's plan. Call `update` with it (and the workers' result) before the next call.
    pub fn schedule(&mut self) -> StepPlan {
        assert!(self.in_flight.is_none(), "schedule() called with step {:?} not updated", self.in_flight);
        let mut plan = StepPlan {
            step_id: self.next_step_id,
            finished_ids: std::mem::take(&mut self.finished_for_workers),
            ..StepPlan::default()
        };
        let mut budget = self.config.max_num_batched_tokens;
        self.schedule_running(&mut plan, &mut budget);
        if plan.preempted_ids.is_empty() {
            self.schedule_waiting(&mut plan, &mut budget);
        }
        self.in_flight = Some(plan.step_id);
        self.next_step_id += 1;
        plan
    }

    fn schedule_running(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        let cap = self.config.max_tokens_per_seq();
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i].1;
            let reserved = self.running.len() - i - 1;
            let seq = &self.seqs[&id];
            // Holds because max_num_batched_tokens >= max_num_seqs >= running sequences.
            let allowance = budget.checked_sub(reserved).expect("budget covers one token per running seq");
            let n = seq.num_uncomputed().min(cap).min(allowance);
            assert!(n >= 1, "{id}: nothing to schedule for a running sequence");
            let target = seq.num_computed_tokens + n;
            let decode = seq.num_uncomputed() == 1;
            let kv_limit = Sequence::max_kv_tokens(
                seq.num_prompt_tokens,
                seq.params.max_tokens as usize,
                self.max_model_len,
            );
            if !self.allocate_or_preempt(id, target, plan) {
                break; // it preempted itself, and it was the last one
            }
            if decode && target < kv_limit {
                // The next decode's slot too, when a block is free (never preempting for it): the
                // workers can then queue that step before its plan comes (decode lookahead)
                // instead of waiting for the plan that brings the block.
                let _ = self.kv.allocate_slots(id, target + 1, &[]);
            }
            *budget -= n;
            plan.cached_sequences.push(self.cached_entry(id, n));
            i += 1;
        }
    }

    /// Grows `id`'s blocks to `num_tokens`, preempting from the back of `running` until it fits.
    /// False when `id` itself had to go.
    fn allocate_or_preempt(&mut self, id: RequestId, num_tokens: usize, plan: &mut StepPlan) -> bool {
        while self.kv.allocate_slots(id, num_tokens, &[]).is_none() {
            let victim = self.running.last().expect("the allocating sequence is running").1;
            self.preempt(victim, plan);
            if victim == id {
                return false;
            }
        }
        true
    }

    fn preempt(&mut self, id: RequestId, plan: &mut StepPlan) {
        let (key, last) = self.running.pop().expect("preempting from an empty running list");
        assert_eq!(last, id);
        self.kv.free(id);
        self.seqs.get_mut(&id).expect("running seq exists").reset_for_recompute();
        self.waiting.insert(key, id);
        plan.preempted_ids.push(id);
        self.stats.num_preemptions += 1;
    }

    fn schedule_waiting(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        let cap = self.config.max_tokens_per_seq();
        while self.running.len() < self.config.max_num_seqs && *budget > 0 {
            let Some((&key, &id)) = self.waiting.first_key_value() else { break };
            let seq = &self.seqs[&id];
            // Leave at least one token to compute: its logits give the next token.
            let max_hit_blocks = (seq.num_tokens() - 1) / self.kv.block_size();
            let hit =
                self.kv.find_cached_prefix(&seq.block_hashes[..max_hit_blocks.min(seq.block_hashes.len())]);
            let num_computed = hit.len() * self.kv.block_size();
            let remaining = seq.num_tokens() - num_computed;
            let n = remaining.min(cap).min(*budget);
            if n < remaining && !self.config.enable_chunked_prefill {
                break;
            }
            if self.kv.allocate_slots(id, num_computed + n, &hit).is_none() {
                break;
            }
            self.stats.num_prefix_query_tokens += seq.num_tokens() as u64;
            self.stats.num_prefix_hit_tokens += num_computed as u64;
            self.waiting.remove(&key);
            let at = self.running.partition_point(|&(k, _)| k < key);
            self.running.insert(at, (key, id));
            let seq = self.seqs.get_mut(&id).expect("waiting seq exists");
            seq.status = RequestStatus::Running;
            seq.num_computed_tokens = num_computed;
            *budget -= n;
            plan.new_sequences.push(self.new_entry(id, n));
        }
    }

    /// The full description of a sequence the workers do not hold.
    fn new_entry(&mut self, id: RequestId, n: usize) -> NewSequence {
        let block_table = self.kv.block_table(id).to_vec();
        let seq = self.seqs.get_mut(&id).expect("scheduled seq exists");
        seq.known_to_workers = true;
        seq.num_tokens_sent = seq.num_tokens();
        seq.num_blocks_sent = block_table.len();
        NewSequence {
            request_id: id,
            prompt_token_ids: seq.token_ids[..seq.num_prompt_tokens].to_vec(),
            output_token_ids: seq.token_ids[seq.num_prompt_tokens..].to_vec(),
            sampling_params: seq.params.clone(),
            block_table,
            num_computed_tokens: seq.num_computed_tokens,
            num_scheduled_tokens: n,
            sample: sample_after(seq, n),
        }
    }

    /// What changed for a sequence the workers hold.
    fn cached_entry(&mut self, id: RequestId, n: usize) -> CachedSequence {
        let blocks = self.kv.block_table(id);
        let seq = self.seqs.get_mut(&id).expect("scheduled seq exists");
        assert!(seq.known_to_workers, "{id} is running but the workers do not hold it");
        let entry = CachedSequence {
            request_id: id,
            new_token_ids: seq.token_ids[seq.num_tokens_sent..].to_vec(),
            new_block_ids: blocks[seq.num_blocks_sent..].to_vec(),
            num_computed_tokens: seq.num_computed_tokens,
            num_scheduled_tokens: n,
            sample: sample_after(seq, n),
        };
        seq.num_tokens_sent = seq.num_tokens();
        seq.num_blocks_sent = blocks.len();
        entry
    }
}

/// A token is sampled once every known token is computed.
fn sample_after(seq: &Sequence, n: usize) -> bool {
    seq.num_computed_tokens + n == seq.num_tokens()
}
