//! `KvCacheManager`: the block tables of all sequences on top of the block pool. The scheduler's
//! only door to KV memory.
//!
//! Lifecycle of one sequence: `find_cached_prefix` (read-only) -> `allocate_slots` with the hit
//! (takes references, grows the table) -> after each completed step `cache_full_blocks` (enters
//! newly computed full blocks into the prefix cache) -> `allocate_slots` again as it grows ->
//! `free` when it finishes, is aborted or is preempted.

use crate::block_pool::BlockPool;
use crate::fast_hash::FastMap;
use tessera_core::config::CacheConfig;
use tessera_core::{BlockHash, BlockId, KvEvent, RequestId};

/// What the manager needs to know; built from `CacheConfig` once the number of blocks is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvConfig {
    pub num_blocks: usize,
    pub block_size: usize,
    pub enable_prefix_caching: bool,
    pub enable_kv_events: bool,
}

impl KvConfig {
    /// `num_blocks` comes from the config when set, else from memory profiling by the caller.
    pub fn from_cache_config(cache: &CacheConfig, num_blocks: usize) -> Self {
        KvConfig {
            num_blocks,
            block_size: cache.block_size,
            enable_prefix_caching: cache.enable_prefix_caching,
            enable_kv_events: cache.enable_kv_events,
        }
    }
}

/// One sequence's blocks.
#[derive(Debug, Default)]
struct SeqBlocks {
    blocks: Vec<BlockId>,
    /// Leading blocks already in the prefix cache (hit or entered by this sequence).
    num_cached: usize,
}

pub struct KvCacheManager {
    config: KvConfig,
    pool: BlockPool,
    tables: FastMap<RequestId, SeqBlocks>,
}

impl KvCacheManager {
    pub fn new(config: KvConfig) -> Self {
        assert!(config.block_size > 0, "block_size must be positive");
        let pool = BlockPool::new(config.num_blocks, config.enable_kv_events && config.enable_prefix_caching);
        KvCacheManager { config, pool, tables: FastMap::default() }
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.config.block_size)
    }

    /// Fraction of blocks in use (cached-but-unused blocks count as free).
    pub fn usage(&self) -> f64 {
        self.pool.num_used_blocks() as f64 / self.pool.num_blocks() as f64
    }

    /// The longest cached prefix of `hashes`, as the blocks that hold it. Changes nothing; pass the
    /// result to `allocate_slots` in the same step, before any other allocation can evict it.
    pub fn find_cached_prefix(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        if !self.config.enable_prefix_caching {
            return Vec::new();
        }
        hashes.iter().map_while(|h| self.pool.lookup(*h)).collect()
    }

    /// Grows `id`'s block table to hold `num_tokens` tokens. A sequence's first call passes its
    /// prefix hit in `cached_prefix`, which becomes the front of its table. Returns how many blocks
    /// were appended, or `None` (and changes nothing) when there are not enough blocks.
    pub fn allocate_slots(
        &mut self,
        id: RequestId,
        num_tokens: usize,
        cached_prefix: &[BlockId],
    ) -> Option<usize> {
        let have = self.tables.get(&id).map_or(0, |t| t.blocks.len());
        if cached_prefix.is_empty() && self.blocks_for(num_tokens) <= have {
            return Some(0); // the common decode step: the last block still has room
        }
        assert!(cached_prefix.is_empty() || have == 0, "{id}: a prefix hit on a sequence that has blocks");
        let want = self.blocks_for(num_tokens).max(have + cached_prefix.len());
        let num_new = want - have - cached_prefix.len();
        // Hits nobody holds are on the cached list: touching them makes them unavailable.
        let idle_hits = cached_prefix.iter().filter(|b| self.pool.ref_count(**b) == 0).count();
        if num_new > self.pool.num_available_blocks() - idle_hits {
            return None;
        }
        let table = self.tables.entry(id).or_default();
        for &block in cached_prefix {
            self.pool.touch(block);
            table.blocks.push(block);
        }
        table.num_cached = table.num_cached.max(cached_prefix.len());
        for _ in 0..num_new {
            table.blocks.push(self.pool.allocate().expect("availability was checked"));
        }
        Some(want - have)
    }

    /// Enters `id`'s full, computed blocks into the prefix cache. Call after the step that computed
    /// them has completed, so a hit never reads KV still being written. `hashes[i]` is the hash of
    /// block `i` (see `hash::extend_block_hashes`); `token_ids` are the sequence's tokens (for
    /// events).
    pub fn cache_full_blocks(
        &mut self,
        id: RequestId,
        hashes: &[BlockHash],
        token_ids: &[u32],
        num_computed_tokens: usize,
    ) {
        if !self.config.enable_prefix_caching {
            return;
        }
        let bs = self.config.block_size;
        let table = self.tables.get_mut(&id).unwrap_or_else(|| panic!("{id} has no blocks"));
        let num_full = (num_computed_tokens / bs).min(hashes.len()).min(table.blocks.len());
        for i in table.num_cached..num_full {
            let parent = i.checked_sub(1).map(|p| hashes[p]);
            // A duplicate of a block another sequence cached first stays private; the hit
            // goes to the first copy.
            self.pool.cache(table.blocks[i], hashes[i], parent, &token_ids[i * bs..(i + 1) * bs]);
        }
        table.num_cached = table.num_cached.max(num_full);
    }

    /// Releases all of `id`'s blocks, last block first, so a sequence's tail is evicted before its
    /// (more shareable) head. Unknown ids are ignored: a waiting sequence holds no blocks.
    pub fn free(&mut self, id: RequestId) {
        if let Some(table) = self.tables.remove(&id) {
            for &block in table.blocks.iter().rev() {
                self.pool.release(block);
            }
        }
    }

    /// `id`'s block table (empty when it holds none).
    pub fn block_table(&self, id: RequestId) -> &[BlockId] {
        self.tables.get(&id).map_or(&[], |t| &t.blocks)
    }

    /// Sequences holding blocks.
    pub fn num_sequences(&self) -> usize {
        self.tables.len()
    }

    /// Takes the KV events recorded since the last call.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        self.pool.drain_events()
    }

    /// Checks the pool, and that every block's reference count equals the number of block tables
    /// holding it. O(blocks + table entries); for tests and simulations.
    pub fn check_invariants(&self) {
        self.pool.check_invariants();
        let mut holders = vec![0u32; self.pool.num_blocks()];
        for table in self.tables.values() {
            assert!(table.num_cached <= table.blocks.len());
            for block in &table.blocks {
                holders[block.0 as usize] += 1;
            }
        }
        for (i, &n) in holders.iter().enumerate() {
            assert_eq!(self.pool.ref_count(BlockId(i as u32)), n, "ref count of block {i}");
        }
    }
}
