//! The prefix-cache block hash: a fixed function, so that every process and machine (and a router
//! written in another language) computes the same hash for the same tokens.
//!
//! The function is 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over
//! these bytes:
//!
//! - a sequence's first block: `0x00`, the salt's length as u32 little-endian, the salt's UTF-8
//!   bytes (no salt is the same as an empty one), then each token id as u32 little-endian;
//! - every later block: `0x01`, the parent block's hash as u64 little-endian, then each token id as
//!   u32 little-endian.
//!
//! A hash therefore names the whole prefix up to and including its block. Two different prefixes
//! with the same 64-bit hash would share KV; at 2^-64 per pair that is accepted, as vLLM's default
//! 64-bit hashes accept it.

use tessera_core::BlockHash;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(FNV_OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }
}

/// The hash of one full block of `token_ids`, chained to `parent` (`None` for the first block,
/// which takes the `salt` instead).
pub fn hash_block(parent: Option<BlockHash>, salt: Option<&str>, token_ids: &[u32]) -> BlockHash {
    let mut h = Fnv1a::new();
    match parent {
        None => {
            let salt = salt.unwrap_or("").as_bytes();
            h.write(&[0x00]);
            h.write(&(salt.len() as u32).to_le_bytes());
            h.write(salt);
        }
        Some(parent) => {
            h.write(&[0x01]);
            h.write(&parent.0.to_le_bytes());
        }
    }
    for t in token_ids {
        h.write(&t.to_le_bytes());
    }
    BlockHash(h.0)
}

/// Appends to `hashes` the hash of every full block of `token_ids` not hashed yet. Call it whenever
/// tokens are appended; partial blocks are never hashed.
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    token_ids: &[u32],
    block_size: usize,
    salt: Option<&str>,
) {
    let num_full = token_ids.len() / block_size;
    for i in hashes.len()..num_full {
        let parent = i.checked_sub(1).map(|p| hashes[p]);
        let hash = hash_block(parent, salt, &token_ids[i * block_size..(i + 1) * block_size]);
        hashes.push(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        let mut h = Fnv1a::new();
        h.write(b"");
        assert_eq!(h.0, 0xcbf29ce484222325);
        let mut h = Fnv1a::new();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
        let mut h = Fnv1a::new();
        h.write(b"foobar");
        assert_eq!(h.0, 0x85944171f73967e8);
    }

    #[test]
    fn block_hashes_are_pinned() {
        // Pinned values (also computed by an independent Python FNV-1a): a change here breaks every
        // router that mirrors our caches.
        let first = hash_block(None, None, &[1, 2, 3, 4]);
        assert_eq!(first, BlockHash(0x3c33_3932_8dc6_078b), "{:#x}", first.0);
        let second = hash_block(Some(first), None, &[5, 6, 7, 8]);
        assert_eq!(second, BlockHash(0xefa5_593e_9855_1871), "{:#x}", second.0);
    }

    #[test]
    fn chain_and_salt_separate_prefixes() {
        let a = hash_block(None, None, &[1, 2]);
        assert_eq!(a, hash_block(None, Some(""), &[1, 2]));
        assert_ne!(a, hash_block(None, Some("tenant-a"), &[1, 2]));
        assert_ne!(hash_block(Some(a), None, &[3, 4]), hash_block(None, None, &[3, 4]));
    }

    #[test]
    fn extend_hashes_only_full_blocks_and_is_incremental() {
        let tokens: Vec<u32> = (0..10).collect();
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, &tokens[..7], 4, None);
        assert_eq!(hashes.len(), 1);
        extend_block_hashes(&mut hashes, &tokens, 4, None);
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[1], hash_block(Some(hashes[0]), None, &[4, 5, 6, 7]));
    }
}
