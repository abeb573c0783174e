//! The random dataset: prompts of exactly `input_len` token ids. Sending ids rather than text
//! makes the length exact on any server (text would be re-tokenized into a different count),
//! which is what makes input-token throughput comparable across engines.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `num_prompts` prompts of `input_len` ids, each below `vocab_size`, from a seeded generator.
/// Every prompt differs from the others in its first token whenever the vocabulary allows, so
/// no prompt is a prefix-cache hit of another (that would flatter TTFT).
pub fn random_prompts(num_prompts: usize, input_len: usize, vocab_size: u32, seed: u64) -> Vec<Vec<u32>> {
    assert!(vocab_size > 0, "vocab size must be positive");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..num_prompts)
        .map(|i| {
            let mut ids: Vec<u32> = (0..input_len).map(|_| rng.gen_range(0..vocab_size)).collect();
            if let Some(first) = ids.first_mut() {
                *first = (i as u32) % vocab_size;
            }
            ids
        })
        .collect()
}

/// The workload's `num_prompts` prompts (the same as `random_prompts` gives) and one more for the
/// request sent before the run: as prompt number `num_prompts` it starts with a token of its own
/// while `num_prompts < vocab_size` (else its other random tokens set it apart), so the cache
/// blocks it leaves are no prefix of any measured prompt.
pub fn prompts_and_probe(
    num_prompts: usize,
    input_len: usize,
    vocab_size: u32,
    seed: u64,
) -> (Vec<Vec<u32>>, Vec<u32>) {
    let mut prompts = random_prompts(num_prompts + 1, input_len, vocab_size, seed);
    let probe = prompts.pop().expect("num_prompts + 1 prompts");
    (prompts, probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_not_a_workload_prompt() {
        let (prompts, probe) = prompts_and_probe(8, 32, 256, 1);
        assert_eq!(prompts, random_prompts(8, 32, 256, 1));
        assert_eq!(probe.len(), 32);
        assert!(prompts.iter().all(|p| p[0] != probe[0]));
    }

    #[test]
    fn exact_lengths_ids_in_range_and_seeded() {
        let prompts = random_prompts(8, 32, 256, 1);
        assert_eq!(prompts.len(), 8);
        assert!(prompts.iter().all(|p| p.len() == 32 && p.iter().all(|&t| t < 256)));
        assert_eq!(prompts, random_prompts(8, 32, 256, 1));
        assert_ne!(prompts, random_prompts(8, 32, 256, 2));
        let firsts: std::collections::HashSet<u32> = prompts.iter().map(|p| p[0]).collect();
        assert_eq!(firsts.len(), 8, "distinct first tokens");
        assert!(random_prompts(3, 0, 256, 1).iter().all(Vec::is_empty));
    }
}
