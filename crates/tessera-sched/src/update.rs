//! Applying a step's result: advance progress, cache newly computed full blocks, append sampled
//! tokens, and end sequences that stopped.

use crate::scheduler::Scheduler;
use tessera_core::step::{SampledToken, StepPlan, StepResult, TokenLogprobs};
use tessera_core::{FinishReason, RequestId, RequestStatus};

/// What one request got from one step: a token, and whether it was the last.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestOutput {
    pub request_id: RequestId,
    pub token_id: u32,
    pub logprobs: Option<TokenLogprobs>,
    /// `Some` exactly once per request, on its last output. Requests ended by `abort` or `finish`
    /// get no output: the caller of those emits the terminal event.
    pub finish_reason: Option<FinishReason>,
}

impl Scheduler {
    /// Applies the workers' `result` for `plan` (the last plan `schedule` returned). Sequences ended
    /// meanwhile by `abort`/`finish` are skipped. Returns one output per sampled, still-live request.
    pub fn update(&mut self, plan: &StepPlan, result: &StepResult) -> Vec<RequestOutput> {
        assert_eq!(self.in_flight, Some(plan.step_id), "update for a plan that is not in flight");
        assert_eq!(result.step_id, plan.step_id, "result answers another step");
        self.in_flight = None;
        let scheduled = plan
            .new_sequences
            .iter()
            .map(|s| (s.request_id, s.num_computed_tokens, s.num_scheduled_tokens, s.sample))
            .chain(
                plan.cached_sequences
                    .iter()
                    .map(|s| (s.request_id, s.num_computed_tokens, s.num_scheduled_tokens, s.sample)),
            );
        let mut sampled = result.sampled.iter();
        let mut outputs = Vec::with_capacity(result.sampled.len());
        for (id, num_computed_before, n, sample) in scheduled {
            let token = sample.then(|| sampled.next().expect("a sampled token for every sample entry"));
            if let Some(t) = token {
                assert_eq!(t.request_id, id, "result out of plan order");
            }
            if !self.is_still_scheduled(id, num_computed_before) {
                continue;
            }
            self.advance(id, n);
            if let Some(t) = token {
                outputs.push(self.append_sampled(t));
            }
        }
        assert!(sampled.next().is_none(), "result has tokens the plan did not ask for");
        outputs
    }

    /// False when `id` ended (or ended and came back under the same id) after the plan was made.
    fn is_still_scheduled(&self, id: RequestId, num_computed_before: usize) -> bool {
        self.seqs.get(&id).is_some_and(|s| {
            s.status == RequestStatus::Running && s.num_computed_tokens == num_computed_before
        })
    }

    /// Marks `n` more tokens computed and enters the blocks they filled into the prefix cache.
    fn advance(&mut self, id: RequestId, n: usize) {
        let seq = self.seqs.get_mut(&id).expect("checked live");
        seq.num_computed_tokens += n;
        assert!(seq.num_computed_tokens <= seq.num_tokens(), "{id} computed tokens it does not have");
        self.kv.cache_full_blocks(id, &seq.block_hashes, &seq.token_ids, seq.num_computed_tokens);
    }

    fn append_sampled(&mut self, t: &SampledToken) -> RequestOutput {
        let block_size = self.kv.block_size();
        let seq = self.seqs.get_mut(&t.request_id).expect("checked live");
        assert_eq!(seq.num_computed_tokens, seq.num_tokens(), "{} sampled mid-prefill", t.request_id);
        seq.append_token(t.token_id, block_size);
        let finish_reason = seq.stop_reason(t.token_id, self.max_model_len);
        if let Some(reason) = finish_reason {
            self.finish(t.request_id, reason);
        }
        RequestOutput {
            request_id: t.request_id,
            token_id: t.token_id,
            logprobs: t.logprobs.clone(),
            finish_reason,
        }
    }
}
