//! `WorkerActor`: forwards plans to its rank's OS thread, which replies directly, so the
//! handler never blocks the runtime.

use crate::worker::{ExecutorFactoryArgs, WorkerJob, WorkerReply, WorkerThread};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use tessera_core::step::StepPlan;

pub enum WorkerMsg {
    Execute(Arc<StepPlan>, RpcReplyPort<WorkerReply>),
}

pub struct WorkerActor;

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerThread;
    type Arguments = ExecutorFactoryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: ExecutorFactoryArgs,
    ) -> Result<WorkerThread, ActorProcessingErr> {
        let rank = args.rank;
        let (thread, ready) = WorkerThread::spawn(args.rank, args.factory, args.poison, args.fault);
        match ready.await {
            Ok(Ok(())) => Ok(thread),
            Ok(Err(err)) => Err(format!("worker rank {rank} failed to start: {err}").into()),
            Err(_) => Err(format!("worker rank {rank} exited while starting").into()),
        }
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        thread: &mut WorkerThread,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Execute(plan, reply) => thread.submit(WorkerJob::Execute(plan, reply)),
        }
        Ok(())
    }
}
