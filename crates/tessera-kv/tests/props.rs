//! Property tests: any sequence of manager operations keeps the pool consistent, and hits and
//! refusals mean what they say.

use proptest::prelude::*;
use std::collections::HashMap;
use tessera_core::{BlockHash, RequestId};
use tessera_kv::{extend_block_hashes, KvCacheManager, KvConfig};

const BS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// Start sequence `seq` with a prompt from a tiny alphabet (so prefixes repeat).
    Start {
        seq: u8,
        prompt: Vec<u32>,
    },
    /// Append `n` tokens to `seq` and grow its blocks.
    Grow {
        seq: u8,
        n: usize,
    },
    /// Mark everything `seq` holds as computed, caching its full blocks.
    Compute {
        seq: u8,
    },
    Free {
        seq: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u8, prop::collection::vec(0..3u32, 1..12)).prop_map(|(seq, prompt)| Op::Start { seq, prompt }),
        (0..6u8, 1..5usize).prop_map(|(seq, n)| Op::Grow { seq, n }),
        (0..6u8).prop_map(|seq| Op::Compute { seq }),
        (0..6u8).prop_map(|seq| Op::Free { seq }),
    ]
}

struct Seq {
    tokens: Vec<u32>,
    hashes: Vec<BlockHash>,
}

fn counts(kv: &KvCacheManager) -> (usize, usize, usize) {
    let pool = kv.pool();
    (pool.num_free_blocks(), pool.num_cached_blocks(), pool.num_used_blocks())
}

fn apply(kv: &mut KvCacheManager, seqs: &mut HashMap<u8, Seq>, op: Op) {
    match op {
        Op::Start { seq, prompt } if !seqs.contains_key(&seq) => {
            let mut hashes = Vec::new();
            extend_block_hashes(&mut hashes, &prompt, BS, None);
            let hit = kv.find_cached_prefix(&hashes);
            for (block, hash) in hit.iter().zip(&hashes) {
                assert_eq!(kv.pool().hash_of(*block), Some(*hash), "a hit is the prefix it names");
            }
            let before = counts(kv);
            match kv.allocate_slots(RequestId(seq.into()), prompt.len(), &hit) {
                Some(_) => {
                    assert_eq!(kv.block_table(RequestId(seq.into()))[..hit.len()], hit[..]);
                    seqs.insert(seq, Seq { tokens: prompt, hashes });
                }
                None => assert_eq!(counts(kv), before, "a refused allocation changes nothing"),
            }
        }
        Op::Grow { seq, n } => {
            let Some(s) = seqs.get_mut(&seq) else { return };
            let before = counts(kv);
            let len = s.tokens.len() + n;
            match kv.allocate_slots(RequestId(seq.into()), len, &[]) {
                Some(_) => {
                    s.tokens.extend((0..n).map(|i| i as u32 % 3));
                    extend_block_hashes(&mut s.hashes, &s.tokens, BS, None);
                }
                None => assert_eq!(counts(kv), before, "a refused allocation changes nothing"),
            }
        }
        Op::Compute { seq } => {
            if let Some(s) = seqs.get(&seq) {
                kv.cache_full_blocks(RequestId(seq.into()), &s.hashes, &s.tokens, s.tokens.len());
            }
        }
        Op::Free { seq } => {
            seqs.remove(&seq);
            kv.free(RequestId(seq.into()));
        }
        Op::Start { .. } => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_operation_sequence_keeps_the_pool_consistent(
        num_blocks in 1..12usize,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let config = KvConfig { num_blocks, block_size: BS, enable_prefix_caching: true, enable_kv_events: true };
        let mut kv = KvCacheManager::new(config);
        let mut seqs = HashMap::new();
        for op in ops {
            apply(&mut kv, &mut seqs, op);
            kv.check_invariants();
            let (free, cached, used) = counts(&kv);
            prop_assert_eq!(free + cached + used, num_blocks);
            for (id, s) in &seqs {
                let table = kv.block_table(RequestId((*id).into()));
                prop_assert!(table.len() * BS >= s.tokens.len());
            }
        }
        let ids: Vec<u8> = seqs.keys().copied().collect();
        for id in ids {
            kv.free(RequestId(id.into()));
        }
        prop_assert_eq!(kv.pool().num_used_blocks(), 0);
        kv.check_invariants();
    }
}
