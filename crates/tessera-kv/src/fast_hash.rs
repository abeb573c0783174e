//! A fast, non-cryptographic hasher for maps keyed by our own ids and block hashes (FxHash's
//! multiply-rotate). The scheduler looks sequences up several times per sequence per step; SipHash
//! made that the largest cost of a step. Keys are never attacker-chosen here: request ids are
//! assigned by the engine and block hashes are already uniformly mixed.
//!
//! Not the prefix-cache block hash: that one is `hash::hash_block`, fixed across machines.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Clone, Copy, Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(SEED);
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(i.into());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with `FxHasher`.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
