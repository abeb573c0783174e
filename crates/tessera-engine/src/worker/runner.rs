//! Executes step plans on one rank: keeps the mirror of every sequence the plans describe (see
//! `tessera_core::step`), builds the flattened batch, runs the model (replaying a captured graph
//! when the device has one for the batch), and on rank 0 samples: on the device when it can
//! choose tokens and no sampled sequence wants logprobs (the plain greedy argmax when that is all
//! the step needs), else on the host. A steady greedy decode batch has its next step queued on
//! the device before the plan for it comes (`lookahead.rs`).

use super::accel::{DeviceAccel, DeviceSample};
use super::lookahead::{next_input, Ahead, NextStep, Steady};
use super::StepExecutor;
use crate::sampler::{has_penalties, is_plain_greedy, penalized_tokens, sample, uniform, SamplingContext};
use std::collections::HashMap;
use std::time::Instant;
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
pub(super) struct Scheduled {
    pub id: RequestId,
    pub num_computed_tokens: usize,
    pub num_scheduled_tokens: usize,
    pub sample: bool,
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
    /// The step queued on the device behind the last one (`lookahead.rs`), its token ids filled
    /// in once the last step's tokens are known: the next plan is either exactly this input, or
    /// the queued step is discarded.
    ahead: Option<Ahead>,
    steady: Steady,
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
        Ok(ModelRunner {
            accel: None,
            backend,
            model,
            cache,
            block_size,
            mirrors: HashMap::new(),
            samples,
            ahead: None,
            steady: Steady::default(),
        })
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

    /// Whether this step's tokens can be chosen by `queue_argmax` (and a next step chained):
    /// a replayed decode step of plain greedy sequences on a device that chains.
    fn chains(&self, scheduled: &[Scheduled]) -> bool {
        self.accel.as_ref().is_some_and(|a| a.can_chain())
            && scheduled.iter().all(|s| {
                s.num_scheduled_tokens == 1 && s.sample && is_plain_greedy(&self.mirrors[&s.id].params)
            })
    }

    /// Whether the plan (`scheduled`, `input`) is the step queued ahead; a queued step that is
    /// not is discarded.
    fn take_ahead(&mut self, scheduled: &[Scheduled], input: &ModelInput) -> bool {
        let Some(ahead) = self.ahead.take() else { return false };
        let used = ahead.serves(scheduled.iter().map(|s| s.id), input);
        if !used {
            self.accel.as_mut().expect("a step was chained").discard_tokens();
        }
        if self.samples {
            crate::metrics::decode_lookahead(used);
        }
        used
    }

    /// Queues the step after this decode step behind it when the batch is steady and some of it
    /// goes on.
    fn queue_ahead(&mut self, scheduled: &[Scheduled], steady: bool) -> tessera_model::Result<()> {
        if !steady {
            return Ok(());
        }
        let seqs: Vec<NextStep<'_>> = scheduled
            .iter()
            .map(|s| {
                let mirror = &self.mirrors[&s.id];
                NextStep {
                    id: s.id,
                    num_computed_tokens: s.num_computed_tokens,
                    num_tokens: mirror.token_ids.len(),
                    num_prompt_tokens: mirror.num_prompt_tokens,
                    max_tokens: mirror.params.max_tokens as usize,
                    block_table: &mirror.block_table,
                }
            })
            .collect();
        let Some(next) = next_input(self.block_size, self.model.max_model_len(), &seqs) else {
            return Ok(());
        };
        let accel = self.accel.as_mut().expect("chaining needs a device accelerator");
        if accel.replay_chained(&self.backend, &next.input, &next.rows)? {
            accel.queue_argmax(&self.backend, next.input.num_tokens())?;
            self.ahead = Some(next);
        }
        Ok(())
    }

    /// The tokens of a step whose greedy choice was queued on the device; queues the next step
    /// first, so the device runs it while the host waits and replies.
    fn chained_tokens(&mut self, scheduled: &[Scheduled], steady: bool) -> tessera_model::Result<Vec<u32>> {
        self.queue_ahead(scheduled, steady)?;
        let tokens = self.accel.as_mut().expect("chaining needs a device accelerator").take_tokens()?;
        if let Some(ahead) = &mut self.ahead {
            ahead.fill_tokens(&tokens);
        }
        Ok(tokens)
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
            if sampled.iter().all(|s| self.mirrors[&s.id].params.logprobs.is_none()) {
                let rows: Vec<DeviceSample<'_>> = sampled.iter().map(|s| self.device_sample(s)).collect();
                let ids = accel.sample_rows(&self.backend, logits, &rows)?;
                return Ok(sampled
                    .iter()
                    .zip(ids)
                    .map(|(s, token_id)| SampledToken { request_id: s.id, token_id, logprobs: None })
                    .collect());
            }
            let host = accel.rows_to_host(&self.backend, logits, sampled.len())?;
            return Ok(self.sample_all(&sampled, &host));
        }
        let host = self.backend.to_host(logits)?;
        Ok(self.sample_all(&sampled, &host))
    }

    /// What a device needs to draw `s`'s token as the host sampler would.
    fn device_sample(&self, s: &Scheduled) -> DeviceSample<'_> {
        let mirror = &self.mirrors[&s.id];
        let (prompt, output) = mirror.token_ids.split_at(mirror.num_prompt_tokens);
        let seed = mirror.params.seed.expect("the engine assigns every request a seed");
        DeviceSample {
            params: &mirror.params,
            uniform: uniform(seed, output.len()),
            penalized: if has_penalties(&mirror.params) {
                penalized_tokens(prompt, output)
            } else {
                Vec::new()
            },
        }
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
        // Only the sampling rank reports phases, so a group counts each step once.
        let samples = self.samples;
        let phase = |name, since: Instant| {
            if samples {
                crate::metrics::step_phase(name, since.elapsed());
            }
        };
        let preparing = Instant::now();
        let scheduled = self.apply(plan);
        let steady = self.steady.observe(&scheduled);
        let mut result = StepResult { step_id: plan.step_id, sampled: Vec::new() };
        let input = self.build_input(&scheduled);
        // A step queued ahead serves only the plan that is exactly it (never an empty one).
        let used_ahead = self.take_ahead(&scheduled, &input);
        if scheduled.is_empty() {
            return Ok(self.samples.then_some(result));
        }
        phase("prepare", preparing);
        let forward = Instant::now();
        let err = |e: tessera_model::ModelError| e.to_string();
        // Queued: this step's greedy tokens are on their way to the host (`queue_argmax`).
        let queued = used_ahead || {
            let eager = self.run_model(&input).map_err(err)?;
            if eager.is_none() && self.chains(&scheduled) {
                let accel = self.accel.as_mut().expect("replayed");
                accel.queue_argmax(&self.backend, scheduled.len()).map_err(err)?;
                true
            } else {
                // Every rank's reply means its step (collectives included) is done, or it failed.
                self.backend.end_step().map_err(err)?;
                phase("forward", forward);
                let sampling = Instant::now();
                if self.samples {
                    let logits = match &eager {
                        Some(logits) => logits,
                        None => self
                            .accel
                            .as_ref()
                            .expect("a replay needs a device accelerator")
                            .replayed_logits(),
                    };
                    result.sampled = self.sample_step(&scheduled, logits).map_err(err)?;
                }
                phase("sample", sampling);
                false
            }
        };
        if queued {
            // Only one rank chains (`DeviceAccel::can_chain`), and it samples.
            assert!(self.samples, "a chained step on a rank that does not sample");
            let tokens = self.chained_tokens(&scheduled, steady).map_err(err)?;
            phase("forward", forward);
            result.sampled = scheduled
                .iter()
                .zip(tokens)
                .map(|(s, token_id)| SampledToken { request_id: s.id, token_id, logprobs: None })
                .collect();
        }
        Ok(self.samples.then_some(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tessera_core::step::{CachedSequence, NewSequence};
    use tessera_core::BlockId;
    use tessera_cpu::{CpuBackend, CpuTensor};
    use tessera_model::shapes::dummy_spec;
    use tessera_model::weights::DummySource;
    use tessera_model::{DType, TpRank};

    const VOCAB: usize = 512;
    /// Rows of the fake graph's logits: a batch of two or one is padded to this.
    const PADDED: usize = 4;

    #[derive(Debug, Default, PartialEq)]
    struct Calls {
        replays: usize,
        argmax: usize,
        to_host: usize,
        /// Each row handed to `sample_rows`: its uniform number and penalised tokens.
        samples: Vec<(f64, Vec<(u32, u32)>)>,
    }

    /// "Replays" every decode step with logits whose row `r` peaks at token `10 + r` (padding
    /// rows included), and records what the runner asked of it.
    struct FakeAccel {
        calls: Arc<Mutex<Calls>>,
        logits: CpuTensor,
    }

    impl DeviceAccel<CpuBackend> for FakeAccel {
        fn replay(&mut self, _: &CpuBackend, input: &ModelInput) -> tessera_model::Result<bool> {
            let decode = input.seqs.iter().all(|s| s.query_len == 1) && input.seqs.len() <= PADDED;
            self.calls.lock().unwrap().replays += usize::from(decode);
            Ok(decode)
        }

        fn replayed_logits(&self) -> &CpuTensor {
            &self.logits
        }

        fn rows_to_host(
            &self,
            _: &CpuBackend,
            logits: &CpuTensor,
            rows: usize,
        ) -> tessera_model::Result<Vec<f32>> {
            self.calls.lock().unwrap().to_host += 1;
            Ok(logits.data[..rows * logits.cols].to_vec())
        }

        fn argmax_rows(
            &self,
            _: &CpuBackend,
            logits: &CpuTensor,
            rows: usize,
        ) -> tessera_model::Result<Vec<u32>> {
            self.calls.lock().unwrap().argmax += 1;
            Ok((0..rows).map(|r| tessera_model::argmax(logits.row(r))).collect())
        }

        /// Row `r` draws token `20 + r`, so the device's choice is recognisable.
        fn sample_rows(
            &self,
            _: &CpuBackend,
            _: &CpuTensor,
            rows: &[DeviceSample<'_>],
        ) -> tessera_model::Result<Vec<u32>> {
            let mut calls = self.calls.lock().unwrap();
            calls.samples.extend(rows.iter().map(|r| (r.uniform, r.penalized.clone())));
            Ok((0..rows.len() as u32).map(|r| 20 + r).collect())
        }

        fn can_chain(&self) -> bool {
            false
        }

        fn queue_argmax(&mut self, _: &CpuBackend, _: usize) -> tessera_model::Result<()> {
            unreachable!("FakeAccel does not chain")
        }

        fn replay_chained(
            &mut self,
            _: &CpuBackend,
            _: &ModelInput,
            _: &[usize],
        ) -> tessera_model::Result<bool> {
            unreachable!("FakeAccel does not chain")
        }

        fn take_tokens(&mut self) -> tessera_model::Result<Vec<u32>> {
            unreachable!("FakeAccel does not chain")
        }

        fn discard_tokens(&mut self) {
            unreachable!("FakeAccel does not chain")
        }
    }

    fn runner(calls: Option<Arc<Mutex<Calls>>>) -> ModelRunner<CpuBackend> {
        let backend = CpuBackend::new();
        let spec = dummy_spec("tiny").unwrap();
        assert_eq!(spec.vocab_size, VOCAB);
        let model =
            Model::load(&backend, &spec, &DummySource::new(1), DType::F32, TpRank::SINGLE, 64).unwrap();
        let runner = ModelRunner::new(backend, model, 16, 4, true).unwrap();
        let Some(calls) = calls else { return runner };
        let mut logits = CpuTensor::zeros(PADDED, VOCAB);
        (0..PADDED).for_each(|r| logits.row_mut(r)[10 + r] = 5.0);
        runner.with_accel(|_, _, _| Ok(Box::new(FakeAccel { calls, logits }))).unwrap()
    }

    fn params(logprobs: Option<u32>) -> SamplingParams {
        SamplingParams { logprobs, seed: Some(7), ..SamplingParams::greedy(8) }
    }

    fn new_seq(id: u64, params: SamplingParams, first_block: u32) -> NewSequence {
        NewSequence {
            request_id: RequestId(id),
            prompt_token_ids: vec![5, 6, 7],
            output_token_ids: Vec::new(),
            sampling_params: params,
            block_table: vec![BlockId(first_block), BlockId(first_block + 2)],
            num_computed_tokens: 0,
            num_scheduled_tokens: 3,
            sample: true,
        }
    }

    fn decode(id: u64, token: u32, num_computed_tokens: usize) -> CachedSequence {
        CachedSequence {
            request_id: RequestId(id),
            new_token_ids: vec![token],
            new_block_ids: Vec::new(),
            num_computed_tokens,
            num_scheduled_tokens: 1,
            sample: true,
        }
    }

    fn tokens(result: &StepResult) -> Vec<u32> {
        result.sampled.iter().map(|s| s.token_id).collect()
    }

    #[test]
    fn replayed_steps_sample_their_own_rows_on_the_device_only_when_plain_greedy() {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let (mut fast, mut plain) = (runner(Some(calls.clone())), runner(None));
        // A prefill runs eagerly; one sequence wants logprobs, so both sample on the host, and
        // exactly as a runner without shortcuts does.
        let prefill = StepPlan {
            step_id: 0,
            new_sequences: vec![new_seq(1, params(None), 0), new_seq(2, params(Some(2)), 1)],
            ..Default::default()
        };
        let first = fast.execute(&prefill).unwrap().unwrap();
        assert_eq!(first.sampled, plain.execute(&prefill).unwrap().unwrap().sampled);
        assert_eq!(*calls.lock().unwrap(), Calls { to_host: 1, ..Default::default() });
        let (t1, t2) = (first.sampled[0].token_id, first.sampled[1].token_id);

        // A decode step of both is replayed; the host samples rows 0 and 1 of the padded logits.
        let step = StepPlan {
            step_id: 1,
            cached_sequences: vec![decode(1, t1, 3), decode(2, t2, 3)],
            ..Default::default()
        };
        let second = fast.execute(&step).unwrap().unwrap();
        assert_eq!(tokens(&second), [10, 11]);
        assert!(second.sampled[1].logprobs.is_some(), "logprobs come from the host sampler");
        assert_eq!(*calls.lock().unwrap(), Calls { replays: 1, to_host: 2, ..Default::default() });

        // Only plain greedy left: the device picks the token, padding rows are not sampled.
        let step = StepPlan {
            step_id: 2,
            cached_sequences: vec![decode(1, 10, 4)],
            finished_ids: vec![RequestId(2)],
            ..Default::default()
        };
        let third = fast.execute(&step).unwrap().unwrap();
        assert_eq!(tokens(&third), [10]);
        assert!(third.sampled[0].logprobs.is_none());
        assert_eq!(*calls.lock().unwrap(), Calls { replays: 2, argmax: 1, to_host: 2, ..Default::default() });

        // A sampled request (with a penalty) joins: no logprobs anywhere, so the device draws both
        // tokens, from the uniform numbers of their seeds and positions.
        let warm = SamplingParams { temperature: 0.8, repetition_penalty: 1.3, ..params(None) };
        let step = StepPlan {
            step_id: 3,
            new_sequences: vec![new_seq(3, warm, 4)],
            cached_sequences: vec![decode(1, 10, 5)],
            ..Default::default()
        };
        let fourth = fast.execute(&step).unwrap().unwrap();
        assert_eq!(
            fourth.sampled.iter().map(|s| (s.request_id.0, s.token_id)).collect::<Vec<_>>(),
            [(3, 20), (1, 21)]
        );
        let calls = calls.lock().unwrap();
        assert_eq!((calls.replays, calls.argmax, calls.to_host), (2, 1, 2), "a prefill step runs eagerly");
        let want = vec![
            (uniform(7, 0), vec![(5, 0), (6, 0), (7, 0)]),
            // Request 1 has generated t1, 10 and 10: position 3, and no penalty.
            (uniform(7, 3), Vec::new()),
        ];
        assert_eq!(calls.samples, want);
    }
}
