//! `CoordinatorActor`: drives the step loop (plan from the scheduler, execute on every worker,
//! rank 0's result back to the scheduler) and supervises the worker group. A worker error, panic,
//! lost reply or missed deadline fails the whole group: every in-flight request gets an error,
//! then the group is rebuilt or the engine stops, as configured.

use super::scheduler::SchedulerMsg;
use super::worker::{WorkerActor, WorkerMsg};
use crate::health::{Health, HealthState};
use crate::metrics;
use crate::worker::{ExecutorFactoryArgs, WorkerReply};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tessera_core::config::{EngineSection, OnWorkerFailure};
use tessera_core::step::{StepPlan, StepResult};
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

/// Builds a fresh set of ranks (new collectives each time).
pub trait WorkerGroupFactory: Send + Sync + 'static {
    fn build(&self) -> Vec<ExecutorFactoryArgs>;
}

pub enum CoordinatorMsg {
    /// A request arrived: start stepping if idle.
    Wake,
    Step,
    /// Fail the group outside a step if `still_broken()` says so when this is handled: a node of
    /// a multi-node group lost while idle. (A step that already failed for it has rebuilt the
    /// group by then, and the check says no.)
    FailGroup {
        reason: String,
        still_broken: Box<dyn FnOnce() -> bool + Send>,
    },
    Shutdown(RpcReplyPort<()>),
}

pub struct CoordinatorArgs {
    pub scheduler: ActorRef<SchedulerMsg>,
    pub group: Box<dyn WorkerGroupFactory>,
    pub config: EngineSection,
    pub health: Arc<Health>,
}

pub struct CoordinatorState {
    args: CoordinatorArgs,
    workers: Vec<ActorRef<WorkerMsg>>,
    /// A `Step` is queued or running.
    active: bool,
    stopped: bool,
    consecutive_restarts: u32,
}

/// Spawns every rank, linked to the coordinator so that an actor death is a supervision event.
async fn spawn_workers(
    group: &dyn WorkerGroupFactory,
    supervisor: &ActorRef<CoordinatorMsg>,
) -> Result<Vec<ActorRef<WorkerMsg>>, String> {
    let mut starting = Vec::new();
    for args in group.build() {
        let supervisor = supervisor.get_cell();
        starting.push(tokio::spawn(
            async move { Actor::spawn_linked(None, WorkerActor, args, supervisor).await },
        ));
    }
    let mut workers = Vec::new();
    let mut failure = None;
    for (rank, handle) in starting.into_iter().enumerate() {
        match handle.await {
            Ok(Ok((worker, _))) => workers.push(worker),
            Ok(Err(err)) => failure = failure.or(Some(format!("rank {rank}: {err}"))),
            Err(err) => failure = failure.or(Some(format!("rank {rank}: {err}"))),
        }
    }
    match failure {
        None => Ok(workers),
        Some(err) => {
            workers.iter().for_each(|w| w.stop(None));
            Err(err)
        }
    }
}

/// The first of the pending replies to arrive, removed from `pending`, with its rank.
async fn next_reply(
    pending: &mut Vec<(usize, oneshot::Receiver<WorkerReply>)>,
) -> (usize, Result<WorkerReply, oneshot::error::RecvError>) {
    std::future::poll_fn(|cx| {
        for i in 0..pending.len() {
            if let Poll::Ready(reply) = Pin::new(&mut pending[i].1).poll(cx) {
                let (rank, _) = pending.swap_remove(i);
                return Poll::Ready((rank, reply));
            }
        }
        Poll::Pending
    })
    .await
}

impl CoordinatorState {
    /// Runs one step; `Err` carries why the group failed.
    async fn step(&mut self) -> Result<bool, String> {
        let scheduling = Instant::now();
        let plan = ractor::call!(self.args.scheduler, SchedulerMsg::Schedule)
            .map_err(|e| format!("scheduler: {e}"))?;
        let Some(plan) = plan else { return Ok(false) };
        crate::metrics::step_phase("schedule", scheduling.elapsed());
        let executing = Instant::now();
        let plan = Arc::new(plan);
        let deadline = Instant::now() + Duration::from_millis(self.args.config.step_timeout_ms);
        let mut replies: Vec<oneshot::Receiver<WorkerReply>> = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (tx, rx) = oneshot::channel();
            worker
                .cast(WorkerMsg::Execute(plan.clone(), tx.into()))
                .map_err(|e| format!("worker gone: {e}"))?;
            replies.push(rx);
        }
        // Replies are taken as they come, so the first rank to fail fails the step at once,
        // even while a lower rank is still stuck (it would otherwise hold the error back until
        // the step deadline).
        let mut pending: Vec<(usize, oneshot::Receiver<WorkerReply>)> =
            replies.into_iter().enumerate().collect();
        let mut result: Option<StepResult> = None;
        while !pending.is_empty() {
            match timeout_at(deadline, next_reply(&mut pending)).await {
                Err(_) => {
                    let waiting: Vec<usize> = pending.iter().map(|(rank, _)| *rank).collect();
                    return Err(format!(
                        "step {} exceeded step_timeout_ms ({} ms) waiting for rank(s) {waiting:?}",
                        plan.step_id, self.args.config.step_timeout_ms
                    ));
                }
                Ok((rank, Err(_))) => return Err(format!("rank {rank} stopped without replying")),
                Ok((_, Ok(Err(err)))) => return Err(err),
                Ok((_, Ok(Ok(reply)))) => result = result.or(reply),
            }
        }
        let result = result.ok_or("rank 0 returned no step result")?;
        let executed = executing.elapsed();
        crate::metrics::step_phase("execute", executed);
        trace_step(&plan, executed);
        self.args
            .scheduler
            .cast(SchedulerMsg::Update(plan, result))
            .map_err(|e| format!("scheduler: {e}"))?;
        self.args.health.step_done();
        self.consecutive_restarts = 0;
        Ok(true)
    }

    async fn fail(&mut self, myself: &ActorRef<CoordinatorMsg>, reason: String) {
        tracing::error!(%reason, "worker group failed");
        metrics::step_failed();
        let config = &self.args.config;
        let give_up = config.on_worker_failure == OnWorkerFailure::Exit
            || self.consecutive_restarts >= config.max_consecutive_restarts;
        let next = if give_up { HealthState::Stopped } else { HealthState::Recovering };
        self.args.health.set(next, Some(reason.clone()));
        let _ = self.args.scheduler.cast(SchedulerMsg::FailAll(reason));
        self.stop_workers();
        if give_up {
            self.stopped = true;
            return;
        }
        self.consecutive_restarts += 1;
        match spawn_workers(self.args.group.as_ref(), myself).await {
            Ok(workers) => {
                self.workers = workers;
                self.args.health.set(HealthState::Ready, None);
                tracing::info!(restarts = self.consecutive_restarts, "worker group rebuilt");
            }
            Err(err) => {
                self.args.health.set(HealthState::Stopped, Some(format!("rebuilding workers failed: {err}")));
                self.stopped = true;
            }
        }
    }

    fn stop_workers(&mut self) {
        for worker in self.workers.drain(..) {
            worker.stop(None);
        }
    }
}

/// One line per step at debug level under the `tessera::step` target (`RUST_LOG=info,tessera::step=debug`):
/// what the step computed and how long it took, to see where a run's time goes step by step.
/// `decode_rows` counts the cached sequences computing one token: decodes, and the rare prompt
/// chunk of a single token.
fn trace_step(plan: &StepPlan, executed: Duration) {
    if !tracing::enabled!(target: "tessera::step", tracing::Level::DEBUG) {
        return;
    }
    let tokens = plan.num_scheduled_tokens();
    let seqs = plan.num_scheduled_seqs();
    let decode_rows = plan.cached_sequences.iter().filter(|s| s.num_scheduled_tokens == 1).count();
    tracing::debug!(
        target: "tessera::step",
        step = plan.step_id,
        tokens,
        seqs,
        decode_rows,
        execute_us = executed.as_micros() as u64,
    );
}

pub struct CoordinatorActor;

impl Actor for CoordinatorActor {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        args: CoordinatorArgs,
    ) -> Result<CoordinatorState, ActorProcessingErr> {
        let workers = spawn_workers(args.group.as_ref(), &myself).await?;
        args.health.set(HealthState::Ready, None);
        Ok(CoordinatorState { args, workers, active: false, stopped: false, consecutive_restarts: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::Wake => {
                if !state.active && !state.stopped {
                    state.active = true;
                    state.args.health.set_busy(true);
                    myself.cast(CoordinatorMsg::Step)?;
                }
            }
            CoordinatorMsg::Step => {
                if state.stopped {
                    state.active = false;
                    return Ok(());
                }
                match state.step().await {
                    Ok(true) => myself.cast(CoordinatorMsg::Step)?,
                    Ok(false) => {
                        state.active = false;
                        state.args.health.set_busy(false);
                    }
                    Err(reason) => {
                        state.fail(&myself, reason).await;
                        // Requests that arrived meanwhile wait in the new scheduler.
                        myself.cast(CoordinatorMsg::Step)?;
                    }
                }
            }
            CoordinatorMsg::FailGroup { reason, still_broken } => {
                if !state.stopped && still_broken() {
                    state.fail(&myself, reason).await;
                }
            }
            CoordinatorMsg::Shutdown(reply) => {
                state.stopped = true;
                state.args.health.set(HealthState::Stopped, Some("engine shut down".into()));
                let _ = state.args.scheduler.cast(SchedulerMsg::FailAll("engine shut down".into()));
                state.stop_workers();
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        event: SupervisionEvent,
        _state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        // A worker actor that dies outside a step is noticed at the next step (its cast fails or
        // its reply is lost); here it is only logged, so supervision never kills the coordinator.
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            tracing::warn!(actor = %cell.get_id(), %err, "worker actor failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_are_taken_in_arrival_order_not_rank_order() {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| oneshot::channel::<WorkerReply>()).unzip();
        let mut pending: Vec<(usize, oneshot::Receiver<WorkerReply>)> =
            receivers.into_iter().enumerate().collect();
        let mut senders: Vec<Option<oneshot::Sender<WorkerReply>>> = senders.into_iter().map(Some).collect();
        // Rank 0 is stuck; rank 2 fails first.
        senders[2].take().unwrap().send(Err("rank 2: collective timed out".into())).unwrap();
        let (rank, reply) = next_reply(&mut pending).await;
        assert_eq!(rank, 2);
        assert_eq!(reply.unwrap(), Err("rank 2: collective timed out".to_string()));
        senders[1].take().unwrap().send(Ok(None)).unwrap();
        let (rank, reply) = next_reply(&mut pending).await;
        assert_eq!((rank, reply.unwrap()), (1, Ok(None)));
        // A dropped sender is a rank that stopped without replying.
        drop(senders[0].take());
        let (rank, reply) = next_reply(&mut pending).await;
        assert_eq!(rank, 0);
        assert!(reply.is_err());
        assert!(pending.is_empty());
    }
}
