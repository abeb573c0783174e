//! One request as the scheduler tracks it: its tokens, progress, and what the workers already know.

use tessera_core::{BlockHash, FinishReason, Request, RequestId, RequestStatus, SamplingParams};
use tessera_kv::extend_block_hashes;

/// Scheduling order: lower priority value first, then earlier arrival. Unique per sequence
/// (arrival numbers are never reused). Preemption picks the greatest key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqKey {
    pub priority: i32,
    pub arrival: u64,
}

#[derive(Debug)]
pub(crate) struct Sequence {
    pub id: RequestId,
    pub key: SeqKey,
    /// Prompt followed by every generated token.
    pub token_ids: Vec<u32>,
    pub num_prompt_tokens: usize,
    pub params: SamplingParams,
    pub eos_token_ids: Vec<u32>,
    pub cache_salt: Option<String>,
    /// Hash of every full block of `token_ids`, kept current as tokens are appended.
    pub block_hashes: Vec<BlockHash>,
    /// Tokens whose KV is computed (or scheduled for the step in flight, once updated).
    pub num_computed_tokens: usize,
    pub status: RequestStatus,
    /// Whether the workers hold a mirror of this sequence (sent as new, not dropped since).
    pub known_to_workers: bool,
    /// Length of the workers' mirror of `token_ids` and of the block table.
    pub num_tokens_sent: usize,
    pub num_blocks_sent: usize,
}

impl Sequence {
    pub fn new(req: Request, arrival: u64, block_size: usize) -> Self {
        let mut block_hashes = Vec::new();
        extend_block_hashes(&mut block_hashes, &req.prompt_token_ids, block_size, req.cache_salt.as_deref());
        Sequence {
            id: req.request_id,
            key: SeqKey { priority: req.priority, arrival },
            num_prompt_tokens: req.prompt_token_ids.len(),
            token_ids: req.prompt_token_ids,
            params: req.sampling_params,
            eos_token_ids: req.eos_token_ids,
            cache_salt: req.cache_salt,
            block_hashes,
            num_computed_tokens: 0,
            status: RequestStatus::Waiting,
            known_to_workers: false,
            num_tokens_sent: 0,
            num_blocks_sent: 0,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_output_tokens(&self) -> usize {
        self.token_ids.len() - self.num_prompt_tokens
    }

    /// Tokens known but not yet computed: the prompt rest in prefill, 1 in decode.
    pub fn num_uncomputed(&self) -> usize {
        self.num_tokens() - self.num_computed_tokens
    }

    pub fn append_token(&mut self, token: u32, block_size: usize) {
        self.token_ids.push(token);
        extend_block_hashes(&mut self.block_hashes, &self.token_ids, block_size, self.cache_salt.as_deref());
    }

    /// Why generation ends after `token` was appended, if it does. Stop tokens win over length, as
    /// in vLLM; stop strings are the engine's business (it calls `Scheduler::finish`).
    pub fn stop_reason(&self, token: u32, max_model_len: usize) -> Option<FinishReason> {
        if !self.params.ignore_eos && self.eos_token_ids.contains(&token) {
            return Some(FinishReason::Stop);
        }
        if self.params.stop_token_ids.contains(&token) {
            return Some(FinishReason::Stop);
        }
        let out_of_tokens = self.num_output_tokens() >= self.params.max_tokens as usize;
        (out_of_tokens || self.num_tokens() >= max_model_len).then_some(FinishReason::Length)
    }

    /// Most tokens this request can ever need KV for: every token but the last sampled one, up to
    /// the point where `max_tokens` or `max_model_len` stops it.
    pub fn max_kv_tokens(num_prompt_tokens: usize, max_tokens: usize, max_model_len: usize) -> usize {
        let last_len = (num_prompt_tokens + max_tokens).min(max_model_len.max(num_prompt_tokens + 1));
        last_len - 1
    }

    /// Forgets all progress (preemption by recompute); the tokens stay.
    pub fn reset_for_recompute(&mut self) {
        self.num_computed_tokens = 0;
        self.status = RequestStatus::Preempted;
        self.known_to_workers = false;
        self.num_tokens_sent = 0;
        self.num_blocks_sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(prompt: usize, params: SamplingParams) -> Sequence {
        let mut req = Request::new(RequestId(1), (0..prompt as u32).collect(), params);
        req.eos_token_ids = vec![2];
        Sequence::new(req, 0, 4)
    }

    #[test]
    fn stop_reasons_in_precedence_order() {
        let mut s = seq(3, SamplingParams { stop_token_ids: vec![7], max_tokens: 2, ..Default::default() });
        s.append_token(5, 4);
        assert_eq!(s.stop_reason(5, 100), None);
        assert_eq!(s.stop_reason(2, 100), Some(FinishReason::Stop));
        assert_eq!(s.stop_reason(7, 100), Some(FinishReason::Stop));
        assert_eq!(s.stop_reason(5, 4), Some(FinishReason::Length), "context limit");
        s.append_token(2, 4);
        assert_eq!(s.stop_reason(2, 100), Some(FinishReason::Stop), "stop beats length");
        s.params.ignore_eos = true;
        assert_eq!(s.stop_reason(2, 100), Some(FinishReason::Length));
    }

    #[test]
    fn hashes_follow_appended_tokens() {
        let mut s = seq(3, SamplingParams::default());
        assert!(s.block_hashes.is_empty());
        s.append_token(9, 4);
        assert_eq!(s.block_hashes.len(), 1);
    }

    #[test]
    fn max_kv_tokens_respects_both_limits() {
        assert_eq!(Sequence::max_kv_tokens(10, 5, 100), 14);
        assert_eq!(Sequence::max_kv_tokens(10, 500, 100), 99);
        assert_eq!(Sequence::max_kv_tokens(100, 5, 100), 100, "a full-context prompt still samples once");
    }
}
