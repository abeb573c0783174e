//! The block pool: every KV block's reference count and cached hash, the free list, the
//! least-recently-used list of cached blocks, and the hash -> block map of the prefix cache.
//!
//! A block is in exactly one of three states:
//! - free: reference count 0, no hash, on the free list;
//! - cached: reference count 0, a hash, on the LRU list (reusable by a prefix hit, evictable);
//! - in use: reference count > 0, off both lists (it may also have a hash and be hit by others).

use crate::fast_hash::FastMap;
use crate::free_list::{BlockLists, List};
use tessera_core::{BlockHash, BlockId, KvEvent};

#[derive(Clone, Copy, Debug, Default)]
struct BlockMeta {
    ref_count: u32,
    hash: Option<BlockHash>,
}

pub struct BlockPool {
    meta: Vec<BlockMeta>,
    lists: BlockLists,
    cached: FastMap<BlockHash, BlockId>,
    /// `Some` when KV events are enabled.
    events: Option<Vec<KvEvent>>,
}

impl BlockPool {
    /// `num_blocks` free blocks, handed out in id order at first.
    pub fn new(num_blocks: usize, enable_kv_events: bool) -> Self {
        assert!(num_blocks > 0, "a KV cache needs at least one block");
        let mut lists = BlockLists::new(num_blocks);
        for i in 0..num_blocks as u32 {
            lists.push_back(List::Free, i);
        }
        BlockPool {
            meta: vec![BlockMeta::default(); num_blocks],
            lists,
            cached: FastMap::default(),
            events: enable_kv_events.then(Vec::new),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.meta.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.lists.len(List::Free)
    }

    /// Cached blocks nobody uses: reusable by a hit, evictable by an allocation.
    pub fn num_cached_blocks(&self) -> usize {
        self.lists.len(List::Cached)
    }

    /// Blocks an allocation can take right now (free first, then evicting cached ones).
    pub fn num_available_blocks(&self) -> usize {
        self.num_free_blocks() + self.num_cached_blocks()
    }

    pub fn num_used_blocks(&self) -> usize {
        self.num_blocks() - self.num_available_blocks()
    }

    /// Blocks whose prefix can hit (cached or in use): the set a router mirrors from KV events.
    pub fn num_hashed_blocks(&self) -> usize {
        self.cached.len()
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.meta[block.0 as usize].ref_count
    }

    pub fn hash_of(&self, block: BlockId) -> Option<BlockHash> {
        self.meta[block.0 as usize].hash
    }

    /// The block holding the prefix named by `hash`, if cached (in use or not).
    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// A block with reference count 1, or `None` when every block is in use. Takes a free block
    /// when there is one so cached prefixes live as long as possible, else evicts the least
    /// recently used cached block.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let i = match self.lists.pop_front(List::Free) {
            Some(i) => i,
            None => {
                let i = self.lists.pop_front(List::Cached)?;
                self.evict(BlockId(i));
                i
            }
        };
        let meta = &mut self.meta[i as usize];
        assert_eq!(meta.ref_count, 0, "allocated a block in use: {i}");
        meta.ref_count = 1;
        Some(BlockId(i))
    }

    /// Takes one more reference to a cached or in-use block (a prefix hit).
    pub fn touch(&mut self, block: BlockId) {
        let meta = &mut self.meta[block.0 as usize];
        assert!(meta.hash.is_some() || meta.ref_count > 0, "touched a free block: {block}");
        if meta.ref_count == 0 {
            self.lists.remove(block.0);
        }
        meta.ref_count += 1;
    }

    /// Drops one reference; at zero the block becomes cached (most recently used) if it has a hash,
    /// free otherwise.
    pub fn release(&mut self, block: BlockId) {
        let meta = &mut self.meta[block.0 as usize];
        assert!(meta.ref_count > 0, "released a block nobody holds: {block}");
        meta.ref_count -= 1;
        if meta.ref_count == 0 {
            let list = if meta.hash.is_some() { List::Cached } else { List::Free };
            self.lists.push_back(list, block.0);
        }
    }

    /// Enters a full, computed, in-use block into the prefix cache under `hash`. Returns false (and
    /// changes nothing) when another block already holds that prefix: the first one stays the hit.
    pub fn cache(
        &mut self,
        block: BlockId,
        hash: BlockHash,
        parent: Option<BlockHash>,
        token_ids: &[u32],
    ) -> bool {
        let meta = &mut self.meta[block.0 as usize];
        assert!(meta.ref_count > 0, "cached a block nobody holds: {block}");
        assert!(meta.hash.is_none(), "block {block} is cached twice");
        if self.cached.contains_key(&hash) {
            return false;
        }
        meta.hash = Some(hash);
        self.cached.insert(hash, block);
        if let Some(events) = &mut self.events {
            let token_ids = token_ids.to_vec();
            events.push(KvEvent::BlockStored {
                block_hash: hash,
                parent_hash: parent,
                block_id: block,
                token_ids,
            });
        }
        true
    }

    /// Takes every event recorded since the last call (empty when events are disabled).
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn evict(&mut self, block: BlockId) {
        let meta = &mut self.meta[block.0 as usize];
        let hash = meta.hash.take().expect("a block on the cached list has a hash");
        let removed = self.cached.remove(&hash);
        assert_eq!(removed, Some(block), "prefix cache map disagrees with block {block}");
        if let Some(events) = &mut self.events {
            events.push(KvEvent::BlockRemoved { block_hash: hash, block_id: block });
        }
    }

    /// Checks the pool against itself: every block in exactly one state, list lengths, the hash map
    /// and the block hashes agree. O(num_blocks); for tests and simulations.
    pub fn check_invariants(&self) {
        let (mut free, mut cached, mut used) = (0, 0, 0);
        for (i, meta) in self.meta.iter().enumerate() {
            let list = self.lists.list_of(i as u32);
            let expected = match (meta.ref_count, meta.hash) {
                (0, None) => {
                    free += 1;
                    Some(List::Free)
                }
                (0, Some(_)) => {
                    cached += 1;
                    Some(List::Cached)
                }
                _ => {
                    used += 1;
                    None
                }
            };
            assert_eq!(list, expected, "block {i} is on the wrong list");
            if let Some(hash) = meta.hash {
                assert_eq!(self.cached.get(&hash), Some(&BlockId(i as u32)), "block {i}");
            }
        }
        assert_eq!(free + cached + used, self.num_blocks());
        assert_eq!((free, cached), (self.num_free_blocks(), self.num_cached_blocks()));
        let hashed = self.meta.iter().filter(|m| m.hash.is_some()).count();
        assert_eq!(hashed, self.cached.len(), "hash map holds blocks that are not hashed");
    }

    /// Cached blocks, least recently used first (the order they will be evicted in).
    pub fn eviction_order(&self) -> Vec<BlockId> {
        self.lists.iter(List::Cached).map(BlockId).collect()
    }

    /// Free blocks in the order they will be handed out.
    pub fn free_order(&self) -> Vec<BlockId> {
        self.lists.iter(List::Free).map(BlockId).collect()
    }
}
