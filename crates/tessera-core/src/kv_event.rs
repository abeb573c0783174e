//! Prefix-cache events: what a router needs to mirror one replica's cache contents exactly.

use crate::ids::BlockId;
use serde::{Deserialize, Serialize};

/// The hash of a full KV block and, through its parent, of the whole prefix before it. Computed by
/// `tessera_kv::hash` with a fixed, documented function, so it is the same on every machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockHash(pub u64);

/// One change to the set of cached block hashes, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// A full block entered the prefix cache. `parent_hash` is `None` for a sequence's first block.
    BlockStored {
        block_hash: BlockHash,
        parent_hash: Option<BlockHash>,
        block_id: BlockId,
        token_ids: Vec<u32>,
    },
    /// A cached block was evicted (reused for other tokens); its hash no longer hits.
    BlockRemoved { block_hash: BlockHash, block_id: BlockId },
    /// Every cached block was dropped at once.
    AllCleared,
}
