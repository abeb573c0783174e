//! `RemoteRank`: on the head, the `StepExecutor` of a rank that lives on another node. It runs on
//! its own worker thread like any rank, forwards each plan to the node's actor and waits for the
//! reply with a deadline, and gives up at once if the node is lost, so a dead or silent node
//! fails the step instead of hanging it.

use crate::group::BuildFailure;
use crate::membership::{Membership, ReadyNode};
use crate::wire::NodeMsg;
use ractor::rpc::CallResult;
use ractor::MessagingErr;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::step::{StepPlan, StepResult};
use tessera_engine::worker::StepExecutor;
use tokio::runtime::Handle;

/// Runs `call` on `runtime` from a worker thread; fails early if incarnation `incarnation` of
/// `node` is lost or the group build fails (`failed`).
pub fn block_on_until<T>(
    runtime: &Handle,
    call: impl Future<Output = Result<CallResult<T>, MessagingErr<NodeMsg>>>,
    membership: &Membership,
    node: usize,
    incarnation: u64,
    failed: Option<&BuildFailure>,
) -> Result<CallResult<T>, String> {
    runtime.block_on(async {
        let poisoned = async {
            loop {
                if let Some(reason) = failed.and_then(|f| f()) {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            answer = call => answer.map_err(|e| format!("node {node}: cannot reach its actor: {e}")),
            reason = membership.lost(node, incarnation) => Err(format!("node {node} lost: {reason}")),
            reason = poisoned => Err(format!("group failed: {reason}")),
        }
    })
}

pub struct RemoteRank {
    node: usize,
    rank: usize,
    epoch: u64,
    target: ReadyNode,
    membership: Arc<Membership>,
    runtime: Handle,
    step_timeout: Duration,
}

impl RemoteRank {
    pub fn new(
        node: usize,
        rank: usize,
        epoch: u64,
        target: ReadyNode,
        membership: Arc<Membership>,
        runtime: Handle,
        step_timeout: Duration,
    ) -> Self {
        RemoteRank { node, rank, epoch, target, membership, runtime, step_timeout }
    }
}

impl StepExecutor for RemoteRank {
    fn execute(&mut self, plan: &StepPlan) -> Result<Option<StepResult>, String> {
        let (node, rank, epoch) = (self.node, self.rank, self.epoch);
        let plan = Arc::new(plan.clone());
        let call = self
            .target
            .actor
            .call(|reply| NodeMsg::Execute { epoch, rank, plan, reply }, Some(self.step_timeout));
        match block_on_until(&self.runtime, call, &self.membership, node, self.target.incarnation, None)? {
            CallResult::Success(reply) => reply.map_err(|e| format!("node {node}: {e}")),
            CallResult::Timeout => Err(format!(
                "node {node}: rank {rank} did not answer within engine.step_timeout_ms ({} ms)",
                self.step_timeout.as_millis()
            )),
            CallResult::SenderError => Err(format!("node {node}: rank {rank} dropped the step")),
        }
    }
}
