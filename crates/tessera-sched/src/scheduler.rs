//! The `Scheduler`: its state, admission, and ending requests. `schedule.rs` builds each step's
//! plan; `update.rs` applies each step's result.

use crate::error::AdmissionError;
use crate::sequence::{SeqKey, Sequence};
use std::collections::BTreeMap;
use tessera_core::config::SchedulerConfig;
use tessera_core::{FinishReason, KvEvent, Request, RequestId, RequestStatus};
use tessera_kv::{FastMap, KvCacheManager};

/// Counters for metrics; monotonic except the gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    /// Fraction of KV blocks in use.
    pub kv_usage: f64,
    pub num_preemptions: u64,
    /// Prompt tokens looked up in the prefix cache at admission, and how many hit.
    pub num_prefix_query_tokens: u64,
    pub num_prefix_hit_tokens: u64,
    /// Requests ended, by reason.
    pub num_finished_length: u64,
    pub num_finished_stop: u64,
    pub num_aborted: u64,
}

pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) max_model_len: usize,
    pub(crate) kv: KvCacheManager,
    pub(crate) seqs: FastMap<RequestId, Sequence>,
    /// Waiting and preempted sequences in scheduling order.
    pub(crate) waiting: BTreeMap<SeqKey, RequestId>,
    /// Running sequences in scheduling order (ascending key): the most urgent is served first and
    /// the last is the preemption victim.
    pub(crate) running: Vec<(SeqKey, RequestId)>,
    /// Ended since the last plan while the workers held them: the next plan tells them to drop.
    pub(crate) finished_for_workers: Vec<RequestId>,
    pub(crate) next_arrival: u64,
    pub(crate) next_step_id: u64,
    /// The plan handed out and not yet updated (one step in flight at a time).
    pub(crate) in_flight: Option<u64>,
    pub(crate) stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler over `kv`. `max_model_len` is the context limit after resolving the model's.
    /// The config must have passed `SchedulerConfig::validate`.
    pub fn new(config: SchedulerConfig, kv: KvCacheManager, max_model_len: usize) -> Self {
        assert!(max_model_len >= 1, "max_model_len must be positive");
        assert!(config.max_num_batched_tokens >= config.max_num_seqs, "unvalidated scheduler config");
        Scheduler {
            config,
            max_model_len,
            kv,
            seqs: FastMap::default(),
            waiting: BTreeMap::new(),
            running: Vec::new(),
            finished_for_workers: Vec::new(),
            next_arrival: 0,
            next_step_id: 0,
            in_flight: None,
            stats: SchedulerStats::default(),
        }
    }

    /// Queues `req`, or refuses it: invalid, can never fit (never retried), or the queue is full.
    pub fn add_request(&mut self, req: Request) -> Result<(), AdmissionError> {
        req.sampling_params.validate()?;
        if self.seqs.contains_key(&req.request_id) {
            return Err(AdmissionError::DuplicateRequest(req.request_id));
        }
        self.check_fits(&req)?;
        if self.waiting.len() >= self.config.max_waiting_requests {
            let max_waiting_requests = self.config.max_waiting_requests;
            return Err(AdmissionError::Overloaded { max_waiting_requests });
        }
        let seq = Sequence::new(req, self.next_arrival, self.kv.block_size());
        self.next_arrival += 1;
        self.waiting.insert(seq.key, seq.id);
        self.seqs.insert(seq.id, seq);
        Ok(())
    }

    /// Refuses requests that could not complete even alone on an idle engine.
    fn check_fits(&self, req: &Request) -> Result<(), AdmissionError> {
        let num_prompt = req.prompt_token_ids.len();
        if num_prompt == 0 {
            return Err(AdmissionError::EmptyPrompt);
        }
        let never = |reason: String| Err(AdmissionError::NeverFits { reason });
        if num_prompt > self.max_model_len {
            return never(format!("prompt has {num_prompt} tokens, max_model_len is {}", self.max_model_len));
        }
        let max_tokens = req.sampling_params.max_tokens as usize;
        let kv_tokens = Sequence::max_kv_tokens(num_prompt, max_tokens, self.max_model_len);
        let capacity = self.kv.pool().num_blocks() * self.kv.block_size();
        if kv_tokens > capacity {
            return never(format!("needs KV for {kv_tokens} tokens, the cache holds {capacity}"));
        }
        // Without chunking, a preempted request recomputes prompt and output in one step.
        let budget = self.config.max_num_batched_tokens;
        if !self.config.enable_chunked_prefill && kv_tokens > budget {
            return never(format!(
                "needs {kv_tokens} tokens in one step with chunked prefill off, max_num_batched_tokens is {budget}"
            ));
        }
        Ok(())
    }

    /// Cancels `id` in any state, freeing its blocks at once. Returns false when it is unknown or
    /// already ended (so the caller emits exactly one terminal event).
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.finish(id, FinishReason::Abort)
    }

    /// Ends `id` with `reason` from outside, e.g. `Stop` when the engine's detokenizer matched a stop
    /// string. Returns false when it is unknown or already ended.
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> bool {
        let Some(seq) = self.seqs.remove(&id) else { return false };
        match seq.status {
            RequestStatus::Running => {
                let pos = self.running.iter().position(|&(_, r)| r == id).expect("running seq is listed");
                self.running.remove(pos);
            }
            RequestStatus::Waiting | RequestStatus::Preempted => {
                self.waiting.remove(&seq.key).expect("waiting seq is queued");
            }
            RequestStatus::Finished(_) => unreachable!("finished sequences are not kept"),
        }
        self.kv.free(id);
        if seq.known_to_workers {
            self.finished_for_workers.push(id);
        }
        let counter = match reason {
            FinishReason::Length => &mut self.stats.num_finished_length,
            FinishReason::Stop => &mut self.stats.num_finished_stop,
            FinishReason::Abort => &mut self.stats.num_aborted,
        };
        *counter += 1;
        true
    }

    pub fn status(&self, id: RequestId) -> Option<RequestStatus> {
        self.seqs.get(&id).map(|s| s.status)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests admitted and not ended.
    pub fn num_unfinished(&self) -> usize {
        self.seqs.len()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_usage: self.kv.usage(),
            ..self.stats.clone()
        }
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Prefix-cache events since the last call, for a cache-aware router.
    pub fn drain_kv_events(&mut self) -> Vec<KvEvent> {
        self.kv.drain_events()
    }

    /// Checks the scheduler's state against itself and the KV manager. O(sequences + blocks); for
    /// tests and simulations.
    pub fn check_invariants(&self) {
        self.kv.check_invariants();
        assert!(self.running.len() <= self.config.max_num_seqs, "too many running");
        assert!(self.running.windows(2).all(|w| w[0].0 < w[1].0), "running out of order");
        assert_eq!(self.running.len() + self.waiting.len(), self.seqs.len(), "a sequence is lost");
        for &(key, id) in &self.running {
            let seq = &self.seqs[&id];
            assert_eq!((seq.key, seq.status), (key, RequestStatus::Running));
            let held = self.kv.block_table(id).len() * self.kv.block_size();
            assert!(held >= seq.num_computed_tokens, "{id} computed tokens past its blocks");
            assert!(seq.num_computed_tokens < seq.num_tokens(), "{id} has nothing to compute");
        }
        for (&key, &id) in &self.waiting {
            let seq = &self.seqs[&id];
            assert_eq!(seq.key, key);
            assert!(matches!(seq.status, RequestStatus::Waiting | RequestStatus::Preempted));
            assert!(self.kv.block_table(id).is_empty(), "waiting {id} holds blocks");
        }
        assert_eq!(self.kv.num_sequences(), self.running.len(), "blocks held outside running");
    }
}
