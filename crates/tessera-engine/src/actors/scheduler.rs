//! `SchedulerActor`: owns the scheduling policy and every live request's event channel. Tokens
//! leave here as raw ids; detokenization happens in each request's stream, off this loop.

use super::kv_manager::KvManagerMsg;
use crate::error::EngineError;
use crate::metrics;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tessera_core::config::{CacheConfig, SchedulerConfig};
use tessera_core::step::{StepPlan, StepResult, TokenLogprobs};
use tessera_core::{FinishReason, Request, RequestId, RequestStatus};
use tessera_kv::{KvCacheManager, KvConfig};
use tessera_sched::{AdmissionError, Scheduler, SchedulerStats};
use tokio::sync::mpsc::UnboundedSender;

/// What a request's stream receives. Exactly one of `Token { finish: Some(..) }`, `Aborted` or
/// `Failed` ends it.
#[derive(Debug)]
pub enum RawEvent {
    /// First scheduled: this many prompt tokens were found in the prefix cache. Sent once, before
    /// any token (a preempted request scheduled again does not send it again).
    Admitted {
        num_cached_tokens: usize,
    },
    Token {
        token_id: u32,
        logprobs: Option<TokenLogprobs>,
        finish: Option<FinishReason>,
    },
    Aborted,
    Failed(EngineError),
}

pub enum SchedulerMsg {
    Add(Request, UnboundedSender<RawEvent>, RpcReplyPort<Result<(), AdmissionError>>),
    /// Cancel (stream dropped or explicit abort).
    Abort(RequestId),
    /// End from outside, e.g. a stop string matched in the stream.
    Finish(RequestId, FinishReason),
    /// The next plan, or `None` when no request is unfinished.
    Schedule(RpcReplyPort<Option<StepPlan>>),
    Update(Arc<StepPlan>, StepResult),
    /// The worker group failed: fail every request and start over with an empty KV cache (the
    /// workers' caches are gone with them).
    FailAll(String),
    Stats(RpcReplyPort<EngineStats>),
    Status(RequestId, RpcReplyPort<Option<RequestStatus>>),
    /// Runs the scheduler's invariant checks; for tests.
    CheckInvariants(RpcReplyPort<Result<(), String>>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub scheduler: SchedulerStats,
    pub num_blocks: usize,
    pub num_free_blocks: usize,
    pub num_cached_blocks: usize,
    pub num_used_blocks: usize,
    /// Steps completed since start.
    pub num_steps: u64,
}

pub struct SchedulerArgs {
    pub config: SchedulerConfig,
    pub cache: CacheConfig,
    pub num_blocks: usize,
    pub max_model_len: usize,
    pub kv_manager: ActorRef<KvManagerMsg>,
}

struct Live {
    tx: UnboundedSender<RawEvent>,
    arrival: Instant,
    last_token: Option<Instant>,
    /// `RawEvent::Admitted` was sent.
    admitted: bool,
}

pub struct SchedulerState {
    args: SchedulerArgs,
    scheduler: Scheduler,
    live: HashMap<RequestId, Live>,
    num_steps: u64,
    /// Counters already reported to metrics, to report deltas.
    reported: SchedulerStats,
}

fn new_scheduler(args: &SchedulerArgs) -> Scheduler {
    let kv = KvCacheManager::new(KvConfig::from_cache_config(&args.cache, args.num_blocks));
    Scheduler::new(args.config.clone(), kv, args.max_model_len)
}

impl SchedulerState {
    fn add(&mut self, req: Request, tx: UnboundedSender<RawEvent>) -> Result<(), AdmissionError> {
        let id = req.request_id;
        let num_prompt = req.prompt_token_ids.len();
        self.scheduler.add_request(req)?;
        metrics::prompt_tokens(num_prompt);
        self.live.insert(id, Live { tx, arrival: Instant::now(), last_token: None, admitted: false });
        Ok(())
    }

    /// The next plan, after telling each request scheduled for the first time how much of its
    /// prompt the prefix cache held (a new sequence's computed tokens are its cache hits).
    fn schedule(&mut self) -> Option<StepPlan> {
        let plan = self.scheduler.has_unfinished().then(|| self.scheduler.schedule())?;
        for seq in &plan.new_sequences {
            if let Some(live) = self.live.get_mut(&seq.request_id).filter(|l| !l.admitted) {
                live.admitted = true;
                let _ = live.tx.send(RawEvent::Admitted { num_cached_tokens: seq.num_computed_tokens });
            }
        }
        Some(plan)
    }

    fn update(&mut self, plan: &StepPlan, result: &StepResult) {
        let now = Instant::now();
        let outputs = self.scheduler.update(plan, result);
        self.num_steps += 1;
        // Metrics first: whoever receives a token may read them at once.
        self.report();
        for out in outputs {
            let live = self.live.get_mut(&out.request_id).expect("the scheduler only reports live requests");
            match live.last_token {
                None => metrics::time_to_first_token(now - live.arrival),
                Some(last) => metrics::inter_token_latency(now - last),
            }
            live.last_token = Some(now);
            metrics::generation_tokens(1);
            let event =
                RawEvent::Token { token_id: out.token_id, logprobs: out.logprobs, finish: out.finish_reason };
            match out.finish_reason {
                Some(reason) => {
                    let live = self.live.remove(&out.request_id).expect("present");
                    metrics::request_finished(reason, now - live.arrival);
                    let _ = live.tx.send(event);
                }
                None => {
                    let _ = live.tx.send(event);
                }
            }
        }
    }

    fn end(&mut self, id: RequestId, reason: FinishReason, event: Option<RawEvent>) {
        if self.scheduler.finish(id, reason) {
            self.report();
            if let Some(live) = self.live.remove(&id) {
                metrics::request_finished(reason, live.arrival.elapsed());
                if let Some(event) = event {
                    let _ = live.tx.send(event);
                }
            }
        }
    }

    fn fail_all(&mut self, reason: &str) {
        for (_, live) in self.live.drain() {
            metrics::request_finished(FinishReason::Abort, live.arrival.elapsed());
            let _ = live.tx.send(RawEvent::Failed(EngineError::WorkerFailed(reason.to_string())));
        }
        self.scheduler = new_scheduler(&self.args);
        self.reported = SchedulerStats::default();
        self.report();
    }

    /// Gauges, counter deltas, and the step's KV events to the KV manager.
    fn report(&mut self) {
        let stats = self.scheduler.stats();
        metrics::scheduler_gauges(&stats);
        metrics::scheduler_counters(&self.reported, &stats);
        self.reported = stats.clone();
        let events = self.scheduler.drain_kv_events();
        let _ = self.args.kv_manager.cast(KvManagerMsg::StepEvents { events, usage: stats.kv_usage });
    }

    fn stats(&self) -> EngineStats {
        let pool = self.scheduler.kv().pool();
        EngineStats {
            scheduler: self.scheduler.stats(),
            num_blocks: pool.num_blocks(),
            num_free_blocks: pool.num_free_blocks(),
            num_cached_blocks: pool.num_cached_blocks(),
            num_used_blocks: pool.num_used_blocks(),
            num_steps: self.num_steps,
        }
    }
}

pub struct SchedulerActor;

impl Actor for SchedulerActor {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let scheduler = new_scheduler(&args);
        Ok(SchedulerState {
            args,
            scheduler,
            live: HashMap::new(),
            num_steps: 0,
            reported: SchedulerStats::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Add(req, tx, reply) => {
                let _ = reply.send(state.add(req, tx));
            }
            SchedulerMsg::Abort(id) => state.end(id, FinishReason::Abort, Some(RawEvent::Aborted)),
            SchedulerMsg::Finish(id, reason) => state.end(id, reason, None),
            SchedulerMsg::Schedule(reply) => {
                let _ = reply.send(state.schedule());
            }
            SchedulerMsg::Update(plan, result) => state.update(&plan, &result),
            SchedulerMsg::FailAll(reason) => state.fail_all(&reason),
            SchedulerMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
            SchedulerMsg::Status(id, reply) => {
                let _ = reply.send(state.scheduler.status(id));
            }
            SchedulerMsg::CheckInvariants(reply) => {
                let scheduler = &state.scheduler;
                let checked =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scheduler.check_invariants()));
                let _ = reply.send(
                    checked.map_err(|_| "scheduler invariants violated (see the panic above)".to_string()),
                );
            }
        }
        Ok(())
    }
}
