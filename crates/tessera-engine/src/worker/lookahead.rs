//! Decode lookahead (`engine.decode_lookahead`): while the host turns a greedy decode step's
//! tokens into the next plan (reply, scheduler update, schedule, plan back: a few hundred
//! microseconds), the GPU already runs the step that plan will most likely ask for: the same
//! sequences one token further, less those this step ends by length, their input tokens copied on
//! the device from the step's greedy choices (`DeviceAccel::replay_chained`). When the plan comes
//! and is exactly that step, its tokens are already on their way; otherwise the queued step is
//! discarded and the plan runs after it.
//!
//! Why a discarded step is harmless: it writes each sequence's K/V at the position after the
//! last computed one, into a block the sequence owns alone and that holds an uncomputed position,
//! so it is neither shared nor in the prefix cache. If the sequence goes on, the real step writes
//! the same values there again; if it ended, its blocks are free, and any later owner writes
//! them after it (one stream). Its logits and tokens are never read.
//!
//! Why it is rarely discarded: it is queued only once the batch has been steady (`Steady`):
//! `STEADY_PLANS` plans in a row that each kept the previous plan's sequences, in order, less
//! some that ended. A plan that just lost sequences is steady only if the one before it lost some
//! too: when a request ends and nothing else does, a new one usually takes its place in the plan
//! after next (a client sends its next request), so the step queued then would be discarded;
//! when sequences end step after step with nothing arriving (the tail of a burst, where requests
//! admitted together end together), every step is queued ahead. A sequence that stops on an
//! end-of-sequence token, a stop token or string, or is aborted, and a request that arrives into
//! a steady batch, still cost one discarded step (and the step after a stop is not queued: its
//! plan just lost a sequence).

use super::runner::Scheduled;
use tessera_core::RequestId;
use tessera_model::{ModelInput, SeqChunk};

/// Plans in a row that continued the decode batch before a step is queued ahead.
pub const STEADY_PLANS: usize = 2;

/// Counts plans in a row that continued the previous plan's decode batch: the same sequences, in
/// the same order, one token each, less some that ended.
#[derive(Debug, Default)]
pub struct Steady {
    ids: Vec<RequestId>,
    plans: usize,
    /// Whether the last plan lost sequences of the one before it.
    shrank: bool,
}

impl Steady {
    /// Takes this plan's sequences; returns whether the batch has been steady long enough.
    pub fn observe(&mut self, scheduled: &[Scheduled]) -> bool {
        let decode = !scheduled.is_empty() && scheduled.iter().all(|s| s.num_scheduled_tokens == 1);
        if !decode {
            *self = Steady::default();
            return false;
        }
        let same = scheduled.iter().map(|s| s.id).eq(self.ids.iter().copied());
        let shrank = !same && is_ordered_subset(scheduled.iter().map(|s| s.id), &self.ids);
        let shrank_before = std::mem::replace(&mut self.shrank, shrank);
        self.plans = if same || shrank { self.plans + 1 } else { 0 };
        if !same {
            self.ids = scheduled.iter().map(|s| s.id).collect();
        }
        self.plans >= STEADY_PLANS && (!shrank || shrank_before)
    }
}

/// Whether `ids` are some of `of`, in `of`'s order.
fn is_ordered_subset(ids: impl Iterator<Item = RequestId>, of: &[RequestId]) -> bool {
    let mut rest = of.iter();
    ids.into_iter().all(|id| rest.any(|&o| o == id))
}

/// What one sequence of a decode step needs to predict its next step.
pub struct NextStep<'a> {
    pub id: RequestId,
    pub num_computed_tokens: usize,
    /// The sequence's tokens, this step's input included.
    pub num_tokens: usize,
    pub num_prompt_tokens: usize,
    pub max_tokens: usize,
    pub block_table: &'a [u32],
}

/// A step queued behind a decode step: its input, with token ids 0 until the device's tokens are
/// known, and for each of its rows the sequence and the row of the step before whose greedy token
/// it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Ahead {
    pub input: ModelInput,
    pub ids: Vec<RequestId>,
    pub rows: Vec<usize>,
}

impl Ahead {
    /// Whether a plan of the sequences `ids` with the input `input` is this step. The sequences
    /// are compared too: another request could have the same tokens in the same slots (one that
    /// ended, and a new one with its prompt given its freed block) and want to sample.
    pub fn serves(&self, ids: impl Iterator<Item = RequestId>, input: &ModelInput) -> bool {
        ids.eq(self.ids.iter().copied()) && same_step(&self.input, input)
    }

    /// Fills in the token ids from the step before's greedy `tokens`, one per row of that step.
    pub fn fill_tokens(&mut self, tokens: &[u32]) {
        for (id, &row) in self.input.token_ids.iter_mut().zip(&self.rows) {
            *id = tokens[row];
        }
    }
}

/// The step after a decode step of `seqs`: the sequences that go on, one position further. `None`
/// when none goes on, or when one that goes on has no block for its next position yet (the
/// scheduler will allocate one, and the plan would then differ).
pub fn next_input(block_size: usize, max_model_len: usize, seqs: &[NextStep<'_>]) -> Option<Ahead> {
    const PLACEHOLDER: [u32; 1] = [0];
    let (mut ids, mut rows) = (Vec::with_capacity(seqs.len()), Vec::with_capacity(seqs.len()));
    let mut chunks = Vec::with_capacity(seqs.len());
    for (row, s) in seqs.iter().enumerate() {
        // After this step the sequence has one more token (`Sequence::stop_reason`).
        let num_tokens = s.num_tokens + 1;
        let goes_on =
            num_tokens.saturating_sub(s.num_prompt_tokens) < s.max_tokens && num_tokens < max_model_len;
        if !goes_on {
            continue;
        }
        let position = s.num_computed_tokens + 1;
        if position >= s.block_table.len() * block_size {
            return None;
        }
        ids.push(s.id);
        rows.push(row);
        chunks.push(SeqChunk {
            new_tokens: &PLACEHOLDER,
            num_computed_tokens: position,
            block_table: s.block_table,
            wants_logits: true,
        });
    }
    (!chunks.is_empty()).then(|| Ahead { input: ModelInput::build(block_size, &chunks), ids, rows })
}

/// Whether a plan's input is the step queued ahead as `ahead`: the same everything, except that
/// a block table may have grown past the context (the scheduler hands out the block of a
/// decode's next position one plan early), which the step does not read.
fn same_step(ahead: &ModelInput, input: &ModelInput) -> bool {
    fn blocks(s: &tessera_model::SeqInput, block_size: usize) -> &[u32] {
        &s.block_table[..s.context_len.div_ceil(block_size)]
    }
    ahead.block_size == input.block_size
        && ahead.token_ids == input.token_ids
        && ahead.positions == input.positions
        && ahead.slot_mapping == input.slot_mapping
        && ahead.logits_indices == input.logits_indices
        && ahead.seqs.len() == input.seqs.len()
        && ahead.seqs.iter().zip(&input.seqs).all(|(a, b)| {
            (a.query_start, a.query_len, a.context_len) == (b.query_start, b.query_len, b.context_len)
                && blocks(a, ahead.block_size) == blocks(b, ahead.block_size)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduled(ids: &[u64], tokens: usize) -> Vec<Scheduled> {
        ids.iter()
            .map(|&id| Scheduled {
                id: RequestId(id),
                num_computed_tokens: 10,
                num_scheduled_tokens: tokens,
                sample: true,
            })
            .collect()
    }

    #[test]
    fn a_batch_is_steady_after_the_same_decode_plans_in_a_row() {
        let mut steady = Steady::default();
        assert!(!steady.observe(&scheduled(&[1, 2], 5)), "a prefill");
        assert!(!steady.observe(&scheduled(&[1, 2], 1)));
        assert!(!steady.observe(&scheduled(&[1, 2], 1)));
        assert!(steady.observe(&scheduled(&[1, 2], 1)), "third plan of the same batch");
        assert!(steady.observe(&scheduled(&[1, 2], 1)));
        assert!(!steady.observe(&scheduled(&[2, 1], 1)), "order matters");
        assert!(!steady.observe(&scheduled(&[2, 1], 1)));
        assert!(!steady.observe(&scheduled(&[2], 1)), "a sequence left");
        assert!(!steady.observe(&[]));
        assert!(!steady.observe(&scheduled(&[2], 1)));
    }

    #[test]
    fn a_batch_losing_sequences_plan_after_plan_stays_steady() {
        let mut steady = Steady::default();
        for _ in 0..3 {
            steady.observe(&scheduled(&[1, 2, 3, 4, 5, 6], 1));
        }
        // One plan that lost sequences: a request that ended is usually replaced in the plan
        // after next, so nothing is queued behind this one.
        assert!(!steady.observe(&scheduled(&[2, 3, 4, 5, 6], 1)), "a first loss");
        assert!(steady.observe(&scheduled(&[3, 4, 5, 6], 1)), "a second loss in a row");
        assert!(steady.observe(&scheduled(&[3, 5, 6], 1)), "a loss inside the batch");
        assert!(steady.observe(&scheduled(&[3, 5, 6], 1)), "then no loss");
        assert!(!steady.observe(&scheduled(&[5], 1)), "a loss after none");
        assert!(!steady.observe(&scheduled(&[5, 7], 1)), "a new sequence");
        assert!(!steady.observe(&scheduled(&[7], 1)), "one loss after a change");
        assert!(steady.observe(&scheduled(&[7], 1)), "two continuations since the change");
        let mut fresh = Steady::default();
        fresh.observe(&scheduled(&[1, 2, 3], 1));
        assert!(!fresh.observe(&scheduled(&[2, 3], 1)), "one continuation is not enough");
        assert!(fresh.observe(&scheduled(&[3], 1)));
    }

    fn step(num_computed_tokens: usize, max_tokens: usize, table: &[u32]) -> NextStep<'_> {
        NextStep {
            id: RequestId(0),
            num_computed_tokens,
            num_tokens: num_computed_tokens + 1,
            num_prompt_tokens: 1,
            max_tokens,
            block_table: table,
        }
    }

    #[test]
    fn the_next_step_is_one_position_further_with_the_same_blocks() {
        let (a, b) = ([7u32, 9], [3u32]);
        // a: 5 computed + 1 this step -> position 6 next; b: position 2 next.
        let Ahead { input: next, rows, .. } =
            next_input(4, 100, &[step(5, 10, &a), step(1, 10, &b)]).unwrap();
        assert_eq!(rows, [0, 1]);
        assert_eq!(next.positions, [6, 2]);
        assert_eq!(next.slot_mapping, [9 * 4 + 2, 3 * 4 + 2]);
        assert_eq!(next.token_ids, [0, 0]);
        assert_eq!(next.logits_indices, [0, 1]);
        assert_eq!(next.seqs.iter().map(|s| s.context_len).collect::<Vec<_>>(), [7, 3]);
    }

    #[test]
    fn sequences_ending_by_length_leave_the_next_step() {
        let (a, b, c) = ([7u32, 9], [3u32, 4], [5u32, 6]);
        // a and c end with this step's token (their sixth output, max_tokens 6); b goes on.
        let with_id = |id, s| NextStep { id: RequestId(id), ..s };
        let seqs = [with_id(1, step(5, 6, &a)), with_id(2, step(5, 10, &b)), with_id(3, step(5, 6, &c))];
        let mut ahead = next_input(4, 100, &seqs).unwrap();
        assert_eq!(
            (ahead.ids.as_slice(), ahead.rows.as_slice()),
            ([RequestId(2)].as_slice(), [1].as_slice())
        );
        assert_eq!(ahead.input.positions, [6]);
        assert_eq!(ahead.input.slot_mapping, [4 * 4 + 2]);
        assert_eq!(ahead.input.logits_indices, [0]);
        ahead.fill_tokens(&[11, 12, 13]);
        assert_eq!(ahead.input.token_ids, [12], "the token of the row it continues");
        // The plan that is this step, and the same input planned for another request.
        let plan = ahead.input.clone();
        assert!(ahead.serves([RequestId(2)].into_iter(), &plan));
        assert!(!ahead.serves([RequestId(4)].into_iter(), &plan), "same tokens and slots, another request");
        // When every sequence ends there is no next step; one that goes on without a block for
        // its next position still prevents it.
        assert!(next_input(4, 100, &[step(5, 6, &a), step(5, 6, &c)]).is_none());
        assert!(next_input(4, 100, &[step(5, 6, &a), step(7, 10, &b)]).is_none());
    }

    #[test]
    fn a_table_grown_past_the_context_is_the_same_step() {
        let (short, long) = ([7u32, 9], [7u32, 9, 11]);
        let ahead = next_input(4, 100, &[step(5, 10, &short)]).unwrap().input;
        let grown = next_input(4, 100, &[step(5, 10, &long)]).unwrap().input;
        assert!(ahead != grown && same_step(&ahead, &grown));
        let mut other = grown.clone();
        other.token_ids[0] = 3;
        assert!(!same_step(&ahead, &other));
        let moved = next_input(4, 100, &[step(5, 10, &[7, 8])]).unwrap().input;
        assert!(!same_step(&ahead, &moved), "a different block under the context");
    }

    #[test]
    fn no_next_step_past_a_limit_or_the_blocks() {
        let table = [7u32, 9];
        // Position 8 is in a third block, not allocated yet.
        assert!(next_input(4, 100, &[step(7, 10, &table)]).is_none());
        assert!(next_input(4, 100, &[step(6, 10, &table)]).is_some());
        // 6 + 1 tokens, 1 of them prompt: the step's token is the sixth output; max_tokens 6
        // ends it there.
        assert!(next_input(4, 100, &[step(5, 6, &table)]).is_none());
        assert!(next_input(4, 100, &[step(5, 7, &table)]).is_some());
        // The step's token makes 7 tokens: a model length of 7 ends it.
        assert!(next_input(4, 7, &[step(5, 10, &table)]).is_none());
        assert!(next_input(4, 8, &[step(5, 10, &table)]).is_some());
    }

    /// Drives two runners over the same plans: one whose fake device chains, one whose does
    /// not. Every token must agree, and the chained one must have used its queued steps.
    mod chaining {
        use crate::worker::{DeviceAccel, DeviceSample, ModelRunner, StepExecutor};
        use std::collections::VecDeque;
        use std::sync::{Arc, Mutex};
        use tessera_core::step::{CachedSequence, NewSequence, StepPlan};
        use tessera_core::{BlockId, RequestId, SamplingParams};
        use tessera_cpu::{CpuBackend, CpuTensor};
        use tessera_model::shapes::dummy_spec;
        use tessera_model::weights::DummySource;
        use tessera_model::{DType, Model, ModelInput, TpRank};

        const BLOCK: usize = 4;

        /// The fake model of a replayed step: a row's greedy token from its token and position.
        fn next_token(token: u32, position: u32) -> u32 {
            (token * 7 + position) % 97 + 3
        }

        #[derive(Debug, Default)]
        struct Calls {
            replays: usize,
            chained: usize,
            /// Chained steps that left out sequences the step before ended.
            chained_after_an_end: usize,
            discarded: usize,
        }

        struct ChainAccel {
            chain: bool,
            calls: Arc<Mutex<Calls>>,
            logits: CpuTensor,
            /// The last replay's greedy tokens ("logits").
            pending: Vec<u32>,
            /// The last `queue_argmax`'s tokens ("on the device").
            device_tokens: Vec<u32>,
            queued: VecDeque<Vec<u32>>,
        }

        impl DeviceAccel<CpuBackend> for ChainAccel {
            fn replay(&mut self, _: &CpuBackend, input: &ModelInput) -> tessera_model::Result<bool> {
                if !input.seqs.iter().all(|s| s.query_len == 1) {
                    return Ok(false);
                }
                self.calls.lock().unwrap().replays += 1;
                self.pending =
                    input.token_ids.iter().zip(&input.positions).map(|(&t, &p)| next_token(t, p)).collect();
                Ok(true)
            }

            fn replayed_logits(&self) -> &CpuTensor {
                &self.logits
            }

            fn rows_to_host(
                &self,
                _: &CpuBackend,
                _: &CpuTensor,
                _: usize,
            ) -> tessera_model::Result<Vec<f32>> {
                unreachable!("greedy only")
            }

            /// Eager logits (prompt steps) are real; a replay's are `pending`.
            fn argmax_rows(
                &self,
                _: &CpuBackend,
                logits: &CpuTensor,
                rows: usize,
            ) -> tessera_model::Result<Vec<u32>> {
                if !std::ptr::eq(logits, &self.logits) {
                    return Ok((0..rows).map(|r| tessera_model::argmax(logits.row(r))).collect());
                }
                assert!(!self.chain, "a chaining device chooses a replay's tokens with queue_argmax");
                Ok(self.pending[..rows].to_vec())
            }

            fn sample_rows(
                &self,
                _: &CpuBackend,
                _: &CpuTensor,
                _: &[DeviceSample<'_>],
            ) -> tessera_model::Result<Vec<u32>> {
                unreachable!("greedy only")
            }

            fn can_chain(&self) -> bool {
                self.chain
            }

            fn queue_argmax(&mut self, _: &CpuBackend, rows: usize) -> tessera_model::Result<()> {
                assert!(self.queued.len() < 2);
                self.device_tokens = self.pending[..rows].to_vec();
                self.queued.push_back(self.device_tokens.clone());
                Ok(())
            }

            fn replay_chained(
                &mut self,
                _: &CpuBackend,
                input: &ModelInput,
                rows: &[usize],
            ) -> tessera_model::Result<bool> {
                assert!(input.token_ids.iter().all(|&t| t == 0), "the host does not know the tokens yet");
                assert_eq!(rows.len(), input.num_tokens());
                let mut calls = self.calls.lock().unwrap();
                calls.chained += 1;
                calls.chained_after_an_end += usize::from(rows.len() < self.device_tokens.len());
                let tokens = rows.iter().map(|&r| self.device_tokens[r]);
                self.pending = tokens.zip(&input.positions).map(|(t, &p)| next_token(t, p)).collect();
                Ok(true)
            }

            fn take_tokens(&mut self) -> tessera_model::Result<Vec<u32>> {
                Ok(self.queued.pop_front().expect("queued"))
            }

            fn discard_tokens(&mut self) {
                self.queued.pop_front().expect("queued");
                self.calls.lock().unwrap().discarded += 1;
            }
        }

        fn runner(chain: bool, calls: Arc<Mutex<Calls>>) -> ModelRunner<CpuBackend> {
            let backend = CpuBackend::new();
            let spec = dummy_spec("tiny").unwrap();
            let model =
                Model::load(&backend, &spec, &DummySource::new(1), DType::F32, TpRank::SINGLE, 64).unwrap();
            let logits = CpuTensor::zeros(1, spec.vocab_size);
            let accel = ChainAccel {
                chain,
                calls,
                logits,
                pending: Vec::new(),
                device_tokens: Vec::new(),
                queued: VecDeque::new(),
            };
            ModelRunner::new(backend, model, 64, BLOCK, true)
                .unwrap()
                .with_accel(|_, _, _| Ok(Box::new(accel)))
                .unwrap()
        }

        /// A sequence as a minimal scheduler sees it.
        struct Seq {
            id: u64,
            tokens: Vec<u32>,
            prompt: usize,
            computed: usize,
            blocks: Vec<u32>,
            sent_tokens: usize,
            sent_blocks: usize,
            max_tokens: u32,
            known: bool,
        }

        /// Plans every live sequence (the whole prompt, then a token a step), allocating blocks
        /// as positions need them, until every sequence has its `max_tokens`; `arrivals` join at
        /// their step. Returns each step's (request, token) pairs from both runners.
        fn run(
            runners: &mut [ModelRunner<CpuBackend>],
            mut arrivals: Vec<(usize, Seq)>,
        ) -> Vec<Vec<Vec<(u64, u32)>>> {
            let mut live: Vec<Seq> = Vec::new();
            let (mut next_block, mut finished) = (0u32, Vec::new());
            let mut outputs = vec![Vec::new(); runners.len()];
            for step in 0.. {
                live.extend(arrivals.extract_if(.., |(at, _)| *at == step).map(|(_, s)| s));
                if live.is_empty() && arrivals.is_empty() {
                    break;
                }
                let mut plan = StepPlan {
                    step_id: step as u64,
                    finished_ids: std::mem::take(&mut finished),
                    ..Default::default()
                };
                for seq in &mut live {
                    let scheduled = if seq.known { 1 } else { seq.prompt };
                    // A decode gets its next position's block one plan early, as the scheduler
                    // hands it out, unless that position is past the last one whose K/V it needs
                    // (`Sequence::max_kv_tokens`: its last token's is never computed).
                    let kv_limit = seq.prompt + seq.max_tokens as usize - 1;
                    let ahead = usize::from(seq.known && seq.computed + 1 < kv_limit);
                    while seq.blocks.len() * BLOCK < seq.computed + scheduled + ahead {
                        seq.blocks.push(next_block);
                        next_block += 1;
                    }
                    if !seq.known {
                        plan.new_sequences.push(NewSequence {
                            request_id: RequestId(seq.id),
                            prompt_token_ids: seq.tokens.clone(),
                            output_token_ids: Vec::new(),
                            sampling_params: SamplingParams::greedy(seq.max_tokens),
                            block_table: seq.blocks.iter().map(|&b| BlockId(b)).collect(),
                            num_computed_tokens: 0,
                            num_scheduled_tokens: scheduled,
                            sample: true,
                        });
                    } else {
                        plan.cached_sequences.push(CachedSequence {
                            request_id: RequestId(seq.id),
                            new_token_ids: seq.tokens[seq.sent_tokens..].to_vec(),
                            new_block_ids: seq.blocks[seq.sent_blocks..]
                                .iter()
                                .map(|&b| BlockId(b))
                                .collect(),
                            num_computed_tokens: seq.computed,
                            num_scheduled_tokens: 1,
                            sample: true,
                        });
                    }
                    (seq.known, seq.sent_tokens, seq.sent_blocks) =
                        (true, seq.tokens.len(), seq.blocks.len());
                    seq.computed += scheduled;
                }
                let results: Vec<_> =
                    runners.iter_mut().map(|r| r.execute(&plan).unwrap().unwrap()).collect();
                for (out, result) in outputs.iter_mut().zip(&results) {
                    out.push(result.sampled.iter().map(|s| (s.request_id.0, s.token_id)).collect());
                }
                for sampled in &results[0].sampled {
                    let seq = live.iter_mut().find(|s| s.id == sampled.request_id.0).unwrap();
                    seq.tokens.push(sampled.token_id);
                }
                live.retain(|s| {
                    let done = s.tokens.len() - s.prompt >= s.max_tokens as usize;
                    if done {
                        finished.push(RequestId(s.id));
                    }
                    !done
                });
            }
            outputs
        }

        fn seq(id: u64, max_tokens: u32) -> Seq {
            let tokens = vec![5, 6, id as u32];
            Seq {
                id,
                prompt: tokens.len(),
                tokens,
                computed: 0,
                blocks: Vec::new(),
                sent_tokens: 0,
                sent_blocks: 0,
                max_tokens,
                known: false,
            }
        }

        #[test]
        fn chained_steps_give_the_tokens_of_plain_steps() {
            let (chained, plain) =
                (Arc::new(Mutex::new(Calls::default())), Arc::new(Mutex::new(Calls::default())));
            let mut runners = [runner(true, chained.clone()), runner(false, plain.clone())];
            // Request 3 arrives while 1 decodes alone (a queued step is discarded); 2, the middle
            // row of three, ends first, then 4, then 3, all by length before 1.
            let arrivals = vec![(0, seq(1, 30)), (0, seq(2, 12)), (0, seq(4, 16)), (20, seq(3, 9))];
            let outputs = run(&mut runners, arrivals);
            assert_eq!(outputs[0], outputs[1]);
            assert_eq!(outputs[0].iter().map(Vec::len).sum::<usize>(), 30 + 12 + 16 + 9);
            let (chained, plain) = (chained.lock().unwrap(), plain.lock().unwrap());
            assert_eq!((plain.chained, plain.discarded), (0, 0));
            // Decode steps 1 - 29 (step 0 and step 20 have prompts). Not queued: the first three
            // of a batch (1 - 3, 21 - 23: two plans must continue it first), and the one after a
            // plan that had just lost a sequence when the one before lost none (13, 17). Queued:
            // 4 - 11 for 1, 2 and 4; 12 for 1 and 4 (rows 0 and 2 of step 11, which ended 2);
            // 14 - 15; 16 for 1 alone (4 ended at 15); 18 - 19, then 20, which request 3's
            // prompt discards; 24 - 28 for 1 and 3; 29 for 1 alone (3 ended at 28).
            assert_eq!(chained.chained, 8 + 1 + 2 + 1 + 3 + 5 + 1);
            assert_eq!(chained.chained_after_an_end, 3, "steps 12, 16 and 29");
            assert_eq!(chained.discarded, 1, "only request 3's arrival changed a steady batch");
            // Every decode step is replayed once: from its own plan or chained ahead of it.
            assert_eq!(chained.replays + chained.chained - chained.discarded, plain.replays);
        }
    }
}
