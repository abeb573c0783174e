//! Executes step plans on one rank: keeps the mirror of every sequence the plans describe (see
//! `tessera_core::step`), builds the flattened batch, runs the model (replaying a captured graph
//! when the device has one for the batch), and on rank 0 samples: on the device when every
//! sampled sequence is plain greedy and the device can pick tokens, else on the host.

use super::accel::DeviceAccel;
use super::StepExecutor;
use crate::sampler::{is_plain_greedy, sample, SamplingContext};
use std::collections::HashMap;
use tessera_core::step::{SampledToken, StepPlan, StepResult};
use tessera_core::{RequestId, SamplingParams};
use tessera_model::{Backend, Model, ModelInput, SeqChunk};

/// A worker's copy of one sequence, built only from plans.
struct Mirror {
    token_ids: Vec<u32>,
    num_prompt_tokens: usize,
    block_table: Vec<u32>,
    params: SamplingParams,
}

/// What one sequence computes this step, in plan order.
struct Scheduled {
    id: RequestId,
    num_computed_tokens: usize,
    num_scheduled_tokens: usize,
    sample: bool,
}

pub struct ModelRunner<B: Backend> {
    /// First, so it is dropped first: captured graphs point into the model's weights and the
    /// cache below, which must outlive them.
    accel: Option<Box<dyn DeviceAccel<B>>>,
    backend: B,
    model: Model<B>,
    cache: B::KvCache,
    block_size: usize,
    mirrors: HashMap<RequestId, Mirror>,
    /// Only rank 0 samples; every rank computes the same full logits.
    samples: bool,
}

impl<B: Backend> ModelRunner<B> {
    pub fn new(
        backend: B,
        model: Model<B>,
        num_blocks: usize,
        block_size: usize,
        samples: bool,
    ) -> Result<Self, String> {
        let cache = backend
            .alloc_kv_cache(model.kv_cache_shape(num_blocks, block_size))
            .map_err(|e| e.to_string())?;
        Ok(ModelRunner { accel: None, backend, model, cache, block_size, mirrors: HashMap::new(), samples })
    }

    /// Adds the device's shortcuts, built over this runner's model and KV cache (CUDA graphs are
    /// captured here, so after the cache exists).
    pub fn with_accel(
        mut self,
        build: impl FnOnce(&B, &Model<B>, &mut B::KvCache) -> tessera_model::Result<Box<dyn DeviceAccel<B>>>,
    ) -> Result<Self, String> {
        let accel = build(&self.backend, &self.model, &mut self.cache).map_err(|e| e.to_string())?;
        self.accel = Some(accel);
        Ok(self)
    }

    /// Steps 1-3 of the mirror protocol; returns the scheduled sequences in plan order.
    fn apply(&mut self, plan: &StepPlan) -> Vec<Scheduled> {
        for id in plan.finished_ids.iter().chain(&plan.preempted_ids) {
            self.mirrors.remove(id);
        }
        let mut scheduled = Vec::with_capacity(plan.num_scheduled_seqs());
        for seq in &plan.new_sequences {
            let mut token_ids = seq.prompt_token_ids.clone();
            token_ids.extend_from_slice(&seq.output_token_ids);
            let mirror = Mirror {
                token_ids,
                num_prompt_tokens: seq.prompt_token_ids.len(),
                block_table: seq.block_table.iter().map(|b| b.0).collect(),
                params: seq.sampling_params.clone(),
            };
            assert!(
                self.mirrors.insert(seq.request_id, mirror).is_none(),
                "{} sent twice as new",
                seq.request_id
            );
            scheduled.push(Scheduled {
                id: seq.request_id,
                num_computed_tokens: seq.num_computed_tokens,
                num_scheduled_tokens: seq.num_scheduled_tokens,
                sample: seq.sample,
            });
        }
        for seq in &plan.cached_sequences {
            let mirror = self.mirrors.get_mut(&seq.request_id).expect("a cached sequence is mirrored");
            mirror.token_ids.extend_from_slice(&seq.new_token_ids);
            mirror.block_table.extend(seq.new_block_ids.iter().map(|b| b.0));
            scheduled.push(Scheduled {
                id: seq.request_id,
                num_computed_tokens: seq.num_computed_tokens,
                num_scheduled_tokens: seq.num_scheduled_tokens,
                sample: seq.sample,
            });
        }
        scheduled
    }

    fn build_input(&self, scheduled: &[Scheduled]) -> ModelInput {
        let chunks: Vec<SeqChunk<'_>> = scheduled
            .iter()
            .map(|s| {
                let mirror = &self.mirrors[&s.id];
                let end = s.num_computed_tokens + s.num_scheduled_tokens;
                assert!(end <= mirror.token_ids.len(), "{} scheduled past its tokens", s.id);
                SeqChunk {
                    new_tokens: &mirror.token_ids[s.num_computed_tokens..end],
                    num_computed_tokens: s.num_computed_tokens,
                    block_table: &mirror.block_table,
                    wants_logits: s.sample,
                }
            })
            .collect();
        ModelInput::build(self.block_size, &chunks)
    }

    /// Runs the model over `input`: the logits of an eager run, or `None` when a captured graph
    /// ran it (its logits are then `accel.replayed_logits()`).
    fn run_model(&mut self, input: &ModelInput) -> tessera_model::Result<Option<B::Tensor>> {
        if let Some(accel) = self.accel.as_mut() {
            if accel.replay(&self.backend, input)? {
                return Ok(None);
            }
        }
        let batch = self.backend.prepare(input)?;
        self.model.forward(&self.backend, &batch, &mut self.cache).map(Some)
    }

    /// One token per sampled sequence, from `logits` (a row per sampled sequence, in plan order,
    /// possibly followed by padding rows).
    fn sample_step(
        &self,
        scheduled: &[Scheduled],
        logits: &B::Tensor,
    ) -> tessera_model::Result<Vec<SampledToken>> {
        let sampled: Vec<&Scheduled> = scheduled.iter().filter(|s| s.sample).collect();
        if let Some(accel) = &self.accel {
            if sampled.iter().all(|s| is_plain_greedy(&self.mirrors[&s.id].params)) {
                let ids = accel.argmax_rows(&self.backend, logits, sampled.len())?;
                let tokens = sampled.iter().zip(ids);
                return Ok(tokens
                    .map(|(s, token_id)| SampledToken { request_id: s.id, token_id, logprobs: None })
                    .collect());
            }
            let host = accel.rows_to_host(&self.backend, logits, sampled.len())?;
            return Ok(self.sample_all(&sampled, &host));
        }
        let host = self.backend.to_host(logits)?;
        Ok(self.sample_all(&sampled, &host))
    }

    fn sample_all(&self, sampled: &[&Scheduled], logits: &[f32]) -> Vec<SampledToken> {
        let vocab = self.model.spec().vocab_size;
        sampled
            .iter()
            .zip(logits.chunks_exact(vocab))
            .map(|(s, row)| {
                let mirror = &self.mirrors[&s.id];
                let ctx = SamplingContext {
                    params: &mirror.params,
                    prompt_token_ids: &mirror.token_ids[..mirror.num_prompt_tokens],
                    output_token_ids: &mirror.token_ids[mirror.num_prompt_tokens..],
                    seed: mirror.params.seed.expect("the engine assigns every request a seed"),
                };
                let (token_id, logprobs) = sample(row, &ctx);
                SampledToken { request_id: s.id, token_id, logprobs }
            })
            .collect()
    }
}

impl<B: Backend + Send> StepExecutor for ModelRunner<B>
where
    B::KvCache: Send,
    B::Rope: Send,
{
    fn execute(&mut self, plan: &StepPlan) -> Result<Option<StepResult>, String> {
        let scheduled = self.apply(plan);
        let mut result = StepResult { step_id: plan.step_id, sampled: Vec::new() };
        if !scheduled.is_empty() {
            let input = self.build_input(&scheduled);
            let eager = self.run_model(&input).map_err(|e| e.to_string())?;
            // Every rank's reply means its step (collectives included) is done, or it failed.
            self.backend.end_step().map_err(|e| e.to_string())?;
            if self.samples {
                let logits = match &eager {
                    Some(logits) => logits,
                    None => {
                        self.accel.as_ref().expect("a replay needs a device accelerator").replayed_logits()
                    }
                };
                result.sampled = self.sample_step(&scheduled, logits).map_err(|e| e.to_string())?;
            }
        }
        Ok(self.samples.then_some(result))
    }
}
