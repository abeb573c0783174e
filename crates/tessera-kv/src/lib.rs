//! Pure KV-cache bookkeeping: which block holds which tokens of which sequence.
//!
//! - `block_pool`: reference-counted blocks, an index-linked free list and an LRU list of cached
//!   blocks, all O(1).
//! - `hash`: the fixed, documented hash chain that names full blocks for the prefix cache.
//! - `manager`: `KvCacheManager`, per-sequence block tables on top of the pool; the scheduler's
//!   interface.
//! - `block_table`: slot mapping for workers.
//!
//! Architecture invariant: no IO, no async runtime, no actors, no devices. This crate never sees a
//! tensor; it hands out block ids that index tensors elsewhere.

pub mod block_pool;
pub mod block_table;
pub mod fast_hash;
mod free_list;
pub mod hash;
pub mod manager;

pub use block_pool::BlockPool;
pub use block_table::{slot, slot_mapping};
pub use fast_hash::FastMap;
pub use hash::{extend_block_hashes, hash_block};
pub use manager::{KvCacheManager, KvConfig};
