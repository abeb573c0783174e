//! `KvManagerActor`: the engine's view of what the prefix cache holds, rebuilt exactly from the
//! KV events that the scheduler sends in one batched message per step. A cache-aware router
//! (data parallelism) asks it which prefixes a replica holds; metrics read its usage.
//!
//! Block allocation itself stays inside `tessera_sched::Scheduler`, synchronously: allocation and
//! preemption are one decision, and a round trip per sequence would cost more than the step.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashSet;
use tessera_core::{BlockHash, KvEvent};

pub enum KvManagerMsg {
    /// One step's events and the pool's usage after it.
    StepEvents {
        events: Vec<KvEvent>,
        usage: f64,
    },
    /// How many of `hashes` (a request's block-hash chain, in order) are cached, from the start.
    CachedPrefixLen(Vec<BlockHash>, RpcReplyPort<usize>),
    Snapshot(RpcReplyPort<KvSnapshot>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvSnapshot {
    pub num_cached_blocks: usize,
    pub usage: f64,
    pub num_events: u64,
}

#[derive(Default)]
pub struct KvState {
    cached: HashSet<BlockHash>,
    usage: f64,
    num_events: u64,
}

impl KvState {
    fn apply(&mut self, event: &KvEvent) {
        self.num_events += 1;
        match event {
            KvEvent::BlockStored { block_hash, .. } => {
                self.cached.insert(*block_hash);
            }
            KvEvent::BlockRemoved { block_hash, .. } => {
                self.cached.remove(block_hash);
            }
            KvEvent::AllCleared => self.cached.clear(),
        }
    }
}

pub struct KvManagerActor;

impl Actor for KvManagerActor {
    type Msg = KvManagerMsg;
    type State = KvState;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<KvManagerMsg>, _: ()) -> Result<KvState, ActorProcessingErr> {
        Ok(KvState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<KvManagerMsg>,
        msg: KvManagerMsg,
        state: &mut KvState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KvManagerMsg::StepEvents { events, usage } => {
                events.iter().for_each(|e| state.apply(e));
                state.usage = usage;
            }
            KvManagerMsg::CachedPrefixLen(hashes, reply) => {
                let _ = reply.send(hashes.iter().take_while(|h| state.cached.contains(h)).count());
            }
            KvManagerMsg::Snapshot(reply) => {
                let _ = reply.send(KvSnapshot {
                    num_cached_blocks: state.cached.len(),
                    usage: state.usage,
                    num_events: state.num_events,
                });
            }
        }
        Ok(())
    }
}
