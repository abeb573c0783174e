//! Property tests: for any small configuration and any interleaving of arrivals, steps, aborts and
//! external stops, the scheduler stays consistent, respects its limits, and ends every admitted
//! request exactly once.

mod common;

use common::{request, result_for, BS};
use proptest::prelude::*;
use std::collections::HashSet;
use tessera_core::config::SchedulerConfig;
use tessera_core::{FinishReason, RequestId};
use tessera_kv::{KvCacheManager, KvConfig};
use tessera_sched::Scheduler;

#[derive(Clone, Debug)]
enum Op {
    /// A request with this prompt length, max_tokens, priority and prefix family.
    Add {
        prompt: usize,
        max_tokens: u32,
        priority: i32,
        family: u32,
    },
    Step,
    /// End the `k`-th live request (modulo their number) from outside.
    End {
        k: usize,
        abort: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1..30usize, 1..12u32, -1..2i32, 0..3u32)
            .prop_map(|(prompt, max_tokens, priority, family)| Op::Add { prompt, max_tokens, priority, family }),
        5 => Just(Op::Step),
        1 => (0..8usize, any::<bool>()).prop_map(|(k, abort)| Op::End { k, abort }),
    ]
}

fn config() -> impl Strategy<Value = (SchedulerConfig, usize)> {
    (1..5usize, 0..12usize, any::<bool>(), 0..4usize, 3..16usize).prop_map(
        |(seqs, extra_budget, chunked, threshold, blocks)| {
            let config = SchedulerConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: seqs + extra_budget,
                max_waiting_requests: 4,
                enable_chunked_prefill: chunked,
                long_prefill_token_threshold: if chunked { threshold } else { 0 },
            };
            (config, blocks)
        },
    )
}

struct World {
    s: Scheduler,
    budget: usize,
    live: HashSet<RequestId>,
    ended: HashSet<RequestId>,
    next_id: u64,
}

impl World {
    fn step(&mut self) {
        let plan = self.s.schedule();
        assert!(plan.num_scheduled_tokens() <= self.budget, "over the token budget");
        assert!(plan.num_scheduled_seqs() <= self.s.num_running());
        let outputs = self.s.update(&plan, &result_for(&plan));
        for out in outputs {
            assert!(self.live.contains(&out.request_id), "output for an ended request");
            if out.finish_reason.is_some() {
                self.end(out.request_id);
            }
        }
        self.s.check_invariants();
    }

    fn end(&mut self, id: RequestId) {
        assert!(self.live.remove(&id) && self.ended.insert(id), "{id} ended twice");
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Add { prompt, max_tokens, priority, family } => {
                let mut req = request(self.next_id, family * 100, prompt, max_tokens);
                req.priority = priority;
                if self.s.add_request(req).is_ok() {
                    self.live.insert(RequestId(self.next_id));
                }
                self.next_id += 1;
            }
            Op::Step => self.step(),
            Op::End { k, abort } if !self.live.is_empty() => {
                let id = *self.live.iter().min().unwrap();
                let id = if k % 2 == 0 { id } else { *self.live.iter().max().unwrap() };
                let reason = if abort { FinishReason::Abort } else { FinishReason::Stop };
                assert!(self.s.finish(id, reason));
                self.end(id);
            }
            Op::End { .. } => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_admitted_request_ends_exactly_once_within_limits(
        (config, num_blocks) in config(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let budget = config.max_num_batched_tokens;
        let kv = KvCacheManager::new(KvConfig {
            num_blocks,
            block_size: BS,
            enable_prefix_caching: true,
            enable_kv_events: false,
        });
        let s = Scheduler::new(config, kv, 40);
        let mut world = World { s, budget, live: HashSet::new(), ended: HashSet::new(), next_id: 0 };
        for op in ops {
            world.apply(op);
        }
        for _ in 0..5_000 {
            if world.live.is_empty() {
                break;
            }
            world.step();
        }
        prop_assert!(world.live.is_empty(), "requests never finished: {:?}", world.live);
        prop_assert!(!world.s.has_unfinished());
        prop_assert_eq!(world.s.kv().pool().num_used_blocks(), 0);
    }
}
