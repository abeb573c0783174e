//! Exact block ids, hit lengths and eviction order of the KV-cache manager.

use tessera_core::{BlockHash, BlockId, KvEvent, RequestId};
use tessera_kv::{extend_block_hashes, hash_block, KvCacheManager, KvConfig};

const BS: usize = 4;

fn manager(num_blocks: usize) -> KvCacheManager {
    KvCacheManager::new(KvConfig {
        num_blocks,
        block_size: BS,
        enable_prefix_caching: true,
        enable_kv_events: true,
    })
}

fn hashes(tokens: &[u32]) -> Vec<BlockHash> {
    let mut h = Vec::new();
    extend_block_hashes(&mut h, tokens, BS, None);
    h
}

fn ids(ids: &[u32]) -> Vec<BlockId> {
    ids.iter().map(|&i| BlockId(i)).collect()
}

/// Allocates, "computes" and caches a whole sequence of `tokens`, with its prefix hit.
fn run_prefill(kv: &mut KvCacheManager, id: u64, tokens: &[u32]) -> Vec<BlockId> {
    let id = RequestId(id);
    let h = hashes(tokens);
    let hit = kv.find_cached_prefix(&h);
    kv.allocate_slots(id, tokens.len(), &hit).expect("fits");
    kv.cache_full_blocks(id, &h, tokens, tokens.len());
    hit
}

#[test]
fn fresh_blocks_come_in_id_order_and_grow_one_block_at_a_time() {
    let mut kv = manager(8);
    let a = RequestId(1);
    assert_eq!(kv.allocate_slots(a, 5, &[]), Some(2));
    assert_eq!(kv.block_table(a), ids(&[0, 1]));
    assert_eq!(kv.allocate_slots(a, 8, &[]), Some(0), "5..8 fits in block 1");
    assert_eq!(kv.allocate_slots(a, 9, &[]), Some(1));
    assert_eq!(kv.block_table(a), ids(&[0, 1, 2]));
    assert_eq!((kv.pool().num_free_blocks(), kv.pool().num_used_blocks()), (5, 3));
    kv.check_invariants();
}

#[test]
fn out_of_blocks_is_none_and_changes_nothing() {
    let mut kv = manager(3);
    kv.allocate_slots(RequestId(1), 8, &[]).unwrap();
    assert_eq!(kv.allocate_slots(RequestId(2), 8, &[]), None);
    assert_eq!(kv.block_table(RequestId(2)), &[] as &[BlockId]);
    assert_eq!(kv.pool().num_free_blocks(), 1);
    kv.check_invariants();
}

#[test]
fn prefix_hit_shares_full_blocks_and_counts_references() {
    let mut kv = manager(8);
    let prompt: Vec<u32> = (0..10).collect();
    assert_eq!(run_prefill(&mut kv, 1, &prompt), ids(&[]));
    assert_eq!(kv.block_table(RequestId(1)), ids(&[0, 1, 2]));
    // Same first 9 tokens: the two full blocks (8 tokens) hit; block 2 was partial, never cached.
    let other: Vec<u32> = (0..9).chain([99, 98, 97]).collect();
    assert_eq!(run_prefill(&mut kv, 2, &other), ids(&[0, 1]));
    assert_eq!(kv.block_table(RequestId(2)), ids(&[0, 1, 3]));
    assert_eq!(kv.pool().ref_count(BlockId(0)), 2);
    assert_eq!(kv.pool().ref_count(BlockId(3)), 1);
    kv.check_invariants();
}

#[test]
fn freed_blocks_become_cached_tail_first_and_are_evicted_lru() {
    let mut kv = manager(6);
    run_prefill(&mut kv, 1, &[1, 1, 1, 1, 2, 2, 2, 2]); // blocks 0, 1
    run_prefill(&mut kv, 2, &[3, 3, 3, 3, 4, 4, 4, 4]); // blocks 2, 3
    kv.free(RequestId(1));
    kv.free(RequestId(2));
    // Freed tail first: within a sequence the last block is evicted first.
    assert_eq!(kv.pool().eviction_order(), ids(&[1, 0, 3, 2]));
    assert_eq!((kv.pool().num_free_blocks(), kv.pool().num_cached_blocks()), (2, 4));
    kv.drain_events();
    // Four blocks needed: the two free ones go first, then the two least recently used cached.
    kv.allocate_slots(RequestId(3), 16, &[]).unwrap();
    assert_eq!(kv.block_table(RequestId(3)), ids(&[4, 5, 1, 0]));
    let removed: Vec<BlockId> = kv
        .drain_events()
        .into_iter()
        .map(|e| match e {
            KvEvent::BlockRemoved { block_id, .. } => block_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(removed, ids(&[1, 0]));
    // Sequence 1's prefix is gone, sequence 2's still hits in full.
    assert!(kv.find_cached_prefix(&hashes(&[1, 1, 1, 1])).is_empty());
    assert_eq!(kv.find_cached_prefix(&hashes(&[3, 3, 3, 3, 4, 4, 4, 4])), ids(&[2, 3]));
    kv.check_invariants();
}

#[test]
fn a_hit_refreshes_lru_position() {
    let mut kv = manager(4);
    run_prefill(&mut kv, 1, &[1, 1, 1, 1]); // block 0
    run_prefill(&mut kv, 2, &[2, 2, 2, 2]); // block 1
    kv.free(RequestId(1));
    kv.free(RequestId(2));
    assert_eq!(kv.pool().eviction_order(), ids(&[0, 1]));
    // Reuse block 0, then let it go: it is now the most recently used.
    assert_eq!(run_prefill(&mut kv, 3, &[1, 1, 1, 1, 5]), ids(&[0]));
    kv.free(RequestId(3));
    assert_eq!(kv.pool().eviction_order(), ids(&[1, 0]));
    kv.check_invariants();
}

#[test]
fn idle_hits_are_not_counted_as_available() {
    let mut kv = manager(2);
    run_prefill(&mut kv, 1, &[1, 1, 1, 1, 2, 2, 2, 2]);
    kv.free(RequestId(1));
    let hit = kv.find_cached_prefix(&hashes(&[1, 1, 1, 1, 2, 2, 2, 2]));
    assert_eq!(hit.len(), 2);
    // 12 tokens need a third block: the two cached ones are the hit itself, so nothing is left.
    assert_eq!(kv.allocate_slots(RequestId(2), 12, &hit), None);
    assert_eq!(kv.allocate_slots(RequestId(2), 8, &hit), Some(2));
    kv.check_invariants();
}

#[test]
fn duplicate_content_keeps_the_first_copy_as_the_hit() {
    let mut kv = manager(4);
    let tokens = [7, 7, 7, 7];
    let h = hashes(&tokens);
    // Both miss (neither is computed yet), both compute the same block.
    kv.allocate_slots(RequestId(1), 4, &[]).unwrap();
    kv.allocate_slots(RequestId(2), 4, &[]).unwrap();
    kv.cache_full_blocks(RequestId(1), &h, &tokens, 4);
    kv.cache_full_blocks(RequestId(2), &h, &tokens, 4);
    assert_eq!(kv.find_cached_prefix(&h), ids(&[0]));
    kv.free(RequestId(2));
    assert_eq!((kv.pool().num_free_blocks(), kv.pool().num_cached_blocks()), (3, 0));
    kv.check_invariants();
}

#[test]
fn stored_events_carry_the_hash_chain() {
    let mut kv = manager(4);
    run_prefill(&mut kv, 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let first = hash_block(None, None, &[1, 2, 3, 4]);
    let second = hash_block(Some(first), None, &[5, 6, 7, 8]);
    assert_eq!(
        kv.drain_events(),
        vec![
            KvEvent::BlockStored {
                block_hash: first,
                parent_hash: None,
                block_id: BlockId(0),
                token_ids: vec![1, 2, 3, 4]
            },
            KvEvent::BlockStored {
                block_hash: second,
                parent_hash: Some(first),
                block_id: BlockId(1),
                token_ids: vec![5, 6, 7, 8]
            },
        ]
    );
    assert!(kv.drain_events().is_empty());
}

#[test]
fn salts_isolate_tenants() {
    let mut kv = manager(4);
    run_prefill(&mut kv, 1, &[1, 2, 3, 4]);
    let mut salted = Vec::new();
    extend_block_hashes(&mut salted, &[1, 2, 3, 4], BS, Some("tenant-b"));
    assert!(kv.find_cached_prefix(&salted).is_empty());
}

#[test]
fn caching_disabled_never_hits_and_frees_everything() {
    let mut kv = KvCacheManager::new(KvConfig {
        num_blocks: 4,
        block_size: BS,
        enable_prefix_caching: false,
        enable_kv_events: false,
    });
    run_prefill(&mut kv, 1, &[1, 2, 3, 4]);
    assert!(kv.find_cached_prefix(&hashes(&[1, 2, 3, 4])).is_empty());
    kv.free(RequestId(1));
    assert_eq!(kv.pool().num_free_blocks(), 4);
    kv.check_invariants();
}
