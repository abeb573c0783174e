//! Seeded simulation: random arrivals, lengths, priorities, shared prefixes, aborts and stops on
//! tiny caches, with a model of the workers' mirror. After every step it checks the pool
//! accounting, every ref count, the budget, the mirror, and that every request ends exactly once.
//!
//! Starvation bound. Let S = max_num_seqs and L = the most tokens a request can have (prompt +
//! max_tokens, capped by max_model_len). The most urgent unfinished request (the "head") is never
//! preempted and, once running, computes at least one token per step, so it finishes within L steps.
//! While it waits, nothing else is admitted and the most urgent running request always progresses
//! and is never preempted, so the running set drains within S * L steps, plus at most S steps in
//! which a preemption blocks admission. A head therefore finishes within H = S * (L + 1) + L steps of
//! becoming head. A request's lifetime is covered by the head stints of itself and of more urgent
//! requests; each more urgent request already waiting at admission adds a stint, and each more urgent
//! arrival adds one stint and splits another. So every request ends within
//! (1 + ahead_at_admission + 2 * urgent_arrivals) * H steps of admission, which the simulation checks
//! for every request.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use tessera_core::config::SchedulerConfig;
use tessera_core::step::{SampledToken, StepPlan, StepResult};
use tessera_core::{BlockHash, BlockId, FinishReason, KvEvent, Request, RequestId, SamplingParams};
use tessera_kv::{KvCacheManager, KvConfig};
use tessera_sched::{AdmissionError, Scheduler, SeqKey};

const EOS: u32 = 2;
const STOP: u32 = 3;

struct Scenario {
    seed: u64,
    steps: u64,
    sched: SchedulerConfig,
    num_blocks: usize,
    block_size: usize,
    prefix_caching: bool,
    max_model_len: usize,
    max_prompt: usize,
    max_tokens: u32,
}

/// One live request as the simulation (the "engine") sees it.
struct Live {
    key: SeqKey,
    tokens: Vec<u32>,
    admitted_at: u64,
    /// More urgent requests unfinished at admission, and more urgent arrivals since.
    ahead: u64,
    urgent_arrivals: u64,
}

/// The workers' mirror of one sequence, built only from plans.
struct Mirror {
    tokens: Vec<u32>,
    blocks: Vec<BlockId>,
    num_computed: usize,
}

struct Sim {
    sc: Scenario,
    rng: ChaCha8Rng,
    s: Scheduler,
    step: u64,
    next_id: u64,
    next_arrival: u64,
    live: BTreeMap<RequestId, Live>,
    ended: HashSet<RequestId>,
    mirrors: HashMap<RequestId, Mirror>,
    router: HashSet<BlockHash>,
    /// Largest lifetime / bound over all requests (must stay <= 1).
    max_lifetime_ratio: f64,
    max_lifetime: u64,
    num_finished: u64,
    num_overloaded: u64,
    num_never_fits: u64,
    num_ended_outside: u64,
}

impl Sim {
    fn new(sc: Scenario) -> Self {
        sc.sched.validate("scheduler").unwrap();
        let kv = KvCacheManager::new(KvConfig {
            num_blocks: sc.num_blocks,
            block_size: sc.block_size,
            enable_prefix_caching: sc.prefix_caching,
            enable_kv_events: sc.prefix_caching,
        });
        let s = Scheduler::new(sc.sched.clone(), kv, sc.max_model_len);
        let rng = ChaCha8Rng::seed_from_u64(sc.seed);
        Sim {
            sc,
            rng,
            s,
            step: 0,
            next_id: 0,
            next_arrival: 0,
            live: BTreeMap::new(),
            ended: HashSet::new(),
            mirrors: HashMap::new(),
            router: HashSet::new(),
            max_lifetime_ratio: 0.0,
            max_lifetime: 0,
            num_finished: 0,
            num_overloaded: 0,
            num_never_fits: 0,
            num_ended_outside: 0,
        }
    }

    fn head_bound(&self) -> u64 {
        let l = (self.sc.max_prompt + self.sc.max_tokens as usize).min(self.sc.max_model_len + 1) as u64;
        let s = self.sc.sched.max_num_seqs as u64;
        s * (l + 1) + l
    }

    /// A prompt drawn from a few shared prefix families, so the prefix cache gets hits.
    fn random_request(&mut self) -> Request {
        // Now and then a prompt past the context limit, to be refused.
        let len = match self.rng.gen_bool(0.01) {
            true => self.sc.max_model_len + self.rng.gen_range(1..8),
            false => self.rng.gen_range(1..=self.sc.max_prompt + 8),
        };
        let family = self.rng.gen_range(0..4u32);
        let shared = self.rng.gen_range(0..=len);
        let mut prompt: Vec<u32> = (0..shared as u32).map(|i| 100 + family * 1000 + i).collect();
        prompt.extend((shared..len).map(|_| self.rng.gen_range(100..50_000)));
        let max_tokens = self.rng.gen_range(1..=self.sc.max_tokens + 4);
        let mut params = SamplingParams::greedy(max_tokens);
        params.ignore_eos = self.rng.gen_bool(0.1);
        if self.rng.gen_bool(0.3) {
            params.stop_token_ids = vec![STOP];
        }
        let mut req = Request::new(RequestId(self.next_id), prompt, params);
        self.next_id += 1;
        req.eos_token_ids = vec![EOS];
        req.priority = [-1, 0, 0, 0, 1, 2][self.rng.gen_range(0..6)];
        req.cache_salt = self.rng.gen_bool(0.1).then(|| "tenant-b".to_string());
        req
    }

    fn arrivals(&mut self) {
        let n = if self.rng.gen_bool(0.02) { 6 } else { self.rng.gen_bool(0.35) as usize };
        for _ in 0..n {
            let req = self.random_request();
            let (id, tokens) = (req.request_id, req.prompt_token_ids.clone());
            let fits = self.independently_fits(&req);
            let waiting = self.s.num_waiting();
            match self.s.add_request(req.clone()) {
                Ok(()) => {
                    assert!(fits, "{id} admitted but can never fit");
                    self.admitted(id, &req, tokens);
                }
                Err(AdmissionError::NeverFits { .. }) => {
                    assert!(!fits, "{id} refused but fits");
                    self.num_never_fits += 1;
                }
                Err(AdmissionError::Overloaded { .. }) => {
                    assert!(fits && waiting >= self.sc.sched.max_waiting_requests);
                    self.num_overloaded += 1;
                }
                Err(e) => panic!("unexpected refusal: {e}"),
            }
        }
    }

    /// The admission rule, restated from first principles.
    fn independently_fits(&self, req: &Request) -> bool {
        let p = req.prompt_token_ids.len();
        let last = (p + req.sampling_params.max_tokens as usize).min(self.sc.max_model_len.max(p + 1));
        let kv_tokens = last - 1;
        p <= self.sc.max_model_len
            && kv_tokens <= self.sc.num_blocks * self.sc.block_size
            && (self.sc.sched.enable_chunked_prefill || kv_tokens <= self.sc.sched.max_num_batched_tokens)
    }

    fn admitted(&mut self, id: RequestId, req: &Request, tokens: Vec<u32>) {
        let key = SeqKey { priority: req.priority, arrival: self.next_arrival };
        self.next_arrival += 1;
        let ahead = self.live.values().filter(|l| l.key < key).count() as u64;
        for l in self.live.values_mut().filter(|l| key < l.key) {
            l.urgent_arrivals += 1;
        }
        self.live.insert(id, Live { key, tokens, admitted_at: self.step, ahead, urgent_arrivals: 0 });
    }

    /// The engine ends a request from outside (abort, or a stop string); exactly once.
    fn end_from_outside(&mut self, reason: FinishReason) {
        if self.live.is_empty() {
            return;
        }
        let i = self.rng.gen_range(0..self.live.len());
        let id = *self.live.keys().nth(i).unwrap();
        assert!(self.s.finish(id, reason), "{id} is live");
        self.ended_now(id);
        self.num_ended_outside += 1;
        assert!(!self.s.abort(id), "{id} ended twice");
    }

    fn ended_now(&mut self, id: RequestId) {
        let live = self.live.remove(&id).expect("ends once");
        assert!(self.ended.insert(id), "{id} ended twice");
        let lifetime = self.step + 1 - live.admitted_at;
        let stints = 1 + live.ahead + 2 * live.urgent_arrivals;
        let bound = stints * self.head_bound();
        assert!(lifetime <= bound, "{id} took {lifetime} steps, bound {bound}");
        let ratio = lifetime as f64 / bound as f64;
        self.max_lifetime_ratio = self.max_lifetime_ratio.max(ratio);
        self.max_lifetime = self.max_lifetime.max(lifetime);
    }

    fn run_step(&mut self, with_arrivals: bool) {
        if with_arrivals {
            self.arrivals();
            if self.rng.gen_bool(0.01) {
                self.end_from_outside(FinishReason::Abort);
            }
            if self.rng.gen_bool(0.005) {
                self.end_from_outside(FinishReason::Stop);
            }
        }
        let plan = self.s.schedule();
        self.check_plan(&plan);
        if with_arrivals && self.rng.gen_bool(0.005) {
            self.end_from_outside(FinishReason::Abort); // while the step is in flight
        }
        let result = self.sample(&plan);
        for out in self.s.update(&plan, &result) {
            let live = self.live.get_mut(&out.request_id).expect("outputs only for live requests");
            live.tokens.push(out.token_id);
            if out.finish_reason.is_some() {
                self.ended_now(out.request_id);
                self.num_finished += 1;
            }
        }
        self.check_state();
        self.step += 1;
    }

    fn sample(&mut self, plan: &StepPlan) -> StepResult {
        let ids: Vec<RequestId> = plan.sampled_ids().collect();
        let sampled = ids
            .into_iter()
            .map(|request_id| {
                let token_id = match self.rng.gen_range(0..40) {
                    0 => EOS,
                    1 => STOP,
                    _ => self.rng.gen_range(100..50_000),
                };
                SampledToken { request_id, token_id, logprobs: None }
            })
            .collect();
        StepResult { step_id: plan.step_id, sampled }
    }

    /// Applies the plan to the worker mirror and checks it against the budget and the engine's view.
    fn check_plan(&mut self, plan: &StepPlan) {
        let cfg = &self.sc.sched;
        assert!(plan.num_scheduled_tokens() <= cfg.max_num_batched_tokens, "over budget");
        assert!(plan.num_scheduled_seqs() <= cfg.max_num_seqs, "over max_num_seqs");
        for id in plan.finished_ids.iter().chain(&plan.preempted_ids) {
            assert!(self.mirrors.remove(id).is_some(), "workers told to drop unknown {id}");
        }
        for n in &plan.new_sequences {
            let tokens = [n.prompt_token_ids.clone(), n.output_token_ids.clone()].concat();
            let mirror =
                Mirror { tokens, blocks: n.block_table.clone(), num_computed: n.num_computed_tokens };
            assert!(
                self.mirrors.insert(n.request_id, mirror).is_none(),
                "{} sent as new twice",
                n.request_id
            );
            assert_eq!(n.num_computed_tokens % self.sc.block_size, 0, "hits are whole blocks");
        }
        for c in &plan.cached_sequences {
            let m = self.mirrors.get_mut(&c.request_id).expect("diff for a sequence the workers hold");
            m.tokens.extend(&c.new_token_ids);
            m.blocks.extend(&c.new_block_ids);
            assert_eq!(m.num_computed, c.num_computed_tokens, "{} mirror out of step", c.request_id);
        }
        let scheduled = plan.new_sequences.iter().map(|n| (n.request_id, n.num_scheduled_tokens, n.sample));
        let scheduled = scheduled
            .chain(plan.cached_sequences.iter().map(|c| (c.request_id, c.num_scheduled_tokens, c.sample)));
        let mut written = HashSet::new();
        for (id, n, sample) in scheduled {
            self.check_scheduled(id, n, sample, &mut written);
        }
    }

    fn check_scheduled(&mut self, id: RequestId, n: usize, sample: bool, written: &mut HashSet<usize>) {
        let bs = self.sc.block_size;
        let m = self.mirrors.get_mut(&id).unwrap();
        assert_eq!(m.tokens, self.live[&id].tokens, "{id}: mirror tokens differ from the engine's");
        assert_eq!(m.blocks, self.s.kv().block_table(id), "{id}: mirror block table differs");
        assert!(n >= 1 && m.num_computed + n <= m.tokens.len());
        assert_eq!(sample, m.num_computed + n == m.tokens.len());
        for pos in m.num_computed..m.num_computed + n {
            let block = m.blocks[pos / bs];
            // Never write into a block another sequence reads, nor into a cached prefix.
            assert_eq!(self.s.kv().pool().ref_count(block), 1, "{id} writes shared {block}");
            assert_eq!(self.s.kv().pool().hash_of(block), None, "{id} writes cached {block}");
            assert!(written.insert(tessera_kv::slot(&m.blocks, bs, pos)), "slot written twice");
        }
        m.num_computed += n;
    }

    fn check_state(&mut self) {
        self.s.check_invariants();
        let pool = self.s.kv().pool();
        let total = pool.num_free_blocks() + pool.num_cached_blocks() + pool.num_used_blocks();
        assert_eq!(total, pool.num_blocks());
        assert_eq!(self.s.num_unfinished(), self.live.len());
        for event in self.s.drain_kv_events() {
            match event {
                KvEvent::BlockStored { block_hash, .. } => assert!(self.router.insert(block_hash)),
                KvEvent::BlockRemoved { block_hash, .. } => assert!(self.router.remove(&block_hash)),
                KvEvent::AllCleared => self.router.clear(),
            }
        }
        assert_eq!(self.router.len(), self.s.kv().pool().num_hashed_blocks(), "router lost track");
    }

    /// Runs the scenario, then lets everything finish and checks the cache is left clean.
    fn run(mut self) -> String {
        for _ in 0..self.sc.steps {
            self.run_step(true);
        }
        let drain_limit = (self.live.len() as u64 + 1) * self.head_bound();
        for _ in 0..drain_limit {
            if self.live.is_empty() {
                break;
            }
            self.run_step(false);
        }
        assert!(self.live.is_empty() && !self.s.has_unfinished(), "requests left after draining");
        assert_eq!(self.s.kv().pool().num_used_blocks(), 0, "blocks neither free nor cached");
        let plan = self.s.schedule();
        self.check_plan(&plan);
        assert!(plan.is_empty() && self.mirrors.is_empty(), "workers still hold sequences");
        let stats = self.s.stats();
        let report = format!(
            "{} steps, {} finished, {} ended from outside, {} overloaded, {} never fit, {} preemptions, \
             {}/{} prefix tokens hit, longest lifetime {} steps (head bound H = {}), worst lifetime {:.3} \
             of its bound",
            self.step,
            self.num_finished,
            self.num_ended_outside,
            self.num_overloaded,
            self.num_never_fits,
            stats.num_preemptions,
            stats.num_prefix_hit_tokens,
            stats.num_prefix_query_tokens,
            self.max_lifetime,
            self.head_bound(),
            self.max_lifetime_ratio
        );
        self.check_coverage(&report);
        report
    }

    /// The run must have exercised what it claims to test.
    fn check_coverage(&self, report: &str) {
        let stats = self.s.stats();
        assert!(self.num_finished > self.sc.steps / 20, "too few requests finished: {report}");
        let refusals = self.num_never_fits > 0 && self.num_overloaded > 0;
        assert!(self.num_ended_outside > 0 && refusals, "a path was never taken: {report}");
        assert!(stats.num_preemptions > 0, "the cache was never short: {report}");
        assert_eq!(stats.num_prefix_hit_tokens > 0, self.sc.prefix_caching, "{report}");
    }
}

fn scenario(seed: u64, sched: SchedulerConfig, num_blocks: usize, block_size: usize) -> Scenario {
    Scenario {
        seed,
        steps: 40_000,
        sched,
        num_blocks,
        block_size,
        prefix_caching: true,
        max_model_len: 48,
        max_prompt: 40,
        max_tokens: 24,
    }
}

fn sched(max_num_seqs: usize, max_num_batched_tokens: usize) -> SchedulerConfig {
    SchedulerConfig { max_num_seqs, max_num_batched_tokens, max_waiting_requests: 8, ..Default::default() }
}

fn run(sc: Scenario) {
    // Shown with --nocapture; the assertions inside are the test.
    println!("{}", Sim::new(sc).run());
}

#[test]
fn sim_tiny_cache_chunked_prefill() {
    run(scenario(1, sched(4, 16), 8, 4));
}

#[test]
fn sim_budget_equals_max_num_seqs_with_threshold() {
    let config = SchedulerConfig { long_prefill_token_threshold: 3, ..sched(8, 8) };
    run(scenario(2, config, 30, 2));
}

#[test]
fn sim_chunked_prefill_off() {
    let config = SchedulerConfig { enable_chunked_prefill: false, ..sched(3, 72) };
    run(scenario(3, config, 14, 4));
}

#[test]
fn sim_prefix_caching_off() {
    run(Scenario { prefix_caching: false, ..scenario(4, sched(6, 24), 12, 4) });
}

#[test]
fn sim_larger_batch_shared_prefixes() {
    run(Scenario { max_model_len: 64, ..scenario(5, sched(16, 64), 48, 4) });
}
