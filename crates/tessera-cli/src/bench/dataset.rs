//! The random dataset: prompts of token ids. Sending ids rather than text makes the length exact
//! on any server (text would be re-tokenized into a different count), which is what makes
//! input-token throughput comparable across engines.
//!
//! As in vLLM's random dataset, lengths may vary around their nominal values (`range_ratio`: each
//! prompt's and each output's length uniform in `[floor(L (1 - r)), ceil(L (1 + r))]`) and every
//! prompt may start with one shared prefix (`prefix_len` tokens, for measuring prefix caching).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomSpec {
    pub num_prompts: usize,
    /// Nominal prompt length after the prefix.
    pub input_len: usize,
    /// Nominal output length.
    pub output_len: u32,
    /// 0 for fixed lengths; below 1.
    pub range_ratio: f64,
    /// Tokens of the prefix every prompt starts with.
    pub prefix_len: usize,
    pub vocab_size: u32,
    pub seed: u64,
}

/// One request of the workload.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRequest {
    pub prompt: Vec<u32>,
    pub output_len: u32,
}

impl RandomSpec {
    /// Checks the values a user gave; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.range_ratio) {
            return Err(format!(
                "--range-ratio must be in [0, 1), got {} (0 gives fixed lengths, as 1 did in older vLLM versions)",
                self.range_ratio
            ));
        }
        if self.input_len + self.prefix_len == 0 {
            return Err("--input-len and --prefix-len are both 0: the prompts would be empty".into());
        }
        Ok(())
    }

    /// The inclusive range of prompt lengths after the prefix. Never below 1 where the nominal
    /// length is at least 1, so a prompt keeps the token that sets it apart (below).
    pub fn input_bounds(&self) -> (usize, usize) {
        let (low, high) = bounds(self.input_len as f64, self.range_ratio);
        (low.max(self.input_len.min(1) as u64) as usize, high as usize)
    }

    /// The inclusive range of output lengths, at least 1.
    pub fn output_bounds(&self) -> (u32, u32) {
        let (low, high) = bounds(self.output_len as f64, self.range_ratio);
        (low.max(1) as u32, high.max(1) as u32)
    }

    /// The workload's requests and one more for the request sent before the run.
    ///
    /// Every prompt is the shared prefix followed by random ids below `vocab_size`; the first id
    /// after the prefix is the prompt's index (modulo the vocabulary), so no prompt is a
    /// prefix-cache hit of another beyond the shared prefix (that would flatter TTFT). One
    /// exception: with more prompts than `vocab_size`, prompts whose indices agree modulo it share
    /// the cache block that ends at that token, which is a block of its own only when the prefix
    /// ends one token short of a block boundary (a larger `vocab_size` avoids it). The extra
    /// request is prompt number `num_prompts`: it carries the prefix, so the run starts with the
    /// prefix cached as it would be on a warm server (vLLM's test request does the same), and
    /// nothing of any measured prompt after it; with varied lengths it takes the longest of each,
    /// so a server that cannot hold the longest request refuses it before the run. With fixed
    /// lengths and no prefix the prompts are the ones earlier versions generated for the same
    /// seed, so older runs stay comparable.
    pub fn generate(&self) -> (Vec<BenchRequest>, BenchRequest) {
        assert!(self.vocab_size > 0, "vocab size must be positive");
        let total = self.num_prompts + 1;
        // Three independent streams: the ids keep their sequence whatever the lengths and prefix.
        let mut ids_rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut len_rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x6c65_6e67_7468_7321);
        let mut prefix_rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7072_6566_6978_2121);
        let prefix: Vec<u32> =
            (0..self.prefix_len).map(|_| prefix_rng.gen_range(0..self.vocab_size)).collect();
        let (in_low, in_high) = self.input_bounds();
        let (out_low, out_high) = self.output_bounds();
        let mut requests: Vec<BenchRequest> = (0..total)
            .map(|i| {
                // With fixed lengths both ranges are one value, so this is the nominal length.
                let (input_len, output_len) = if i == self.num_prompts {
                    (in_high, out_high)
                } else {
                    // Drawn as u64, so the lengths for a seed are the same on every platform.
                    let input = len_rng.gen_range(in_low as u64..=in_high as u64) as usize;
                    (input, len_rng.gen_range(out_low..=out_high))
                };
                let mut prompt = prefix.clone();
                prompt.extend((0..input_len).map(|_| ids_rng.gen_range(0..self.vocab_size)));
                if let Some(first) = prompt.get_mut(self.prefix_len) {
                    *first = (i as u32) % self.vocab_size;
                }
                BenchRequest { prompt, output_len }
            })
            .collect();
        let probe = requests.pop().expect("num_prompts + 1 requests");
        (requests, probe)
    }
}

/// `[floor(len (1 - ratio)), ceil(len (1 + ratio))]`, vLLM's bounds.
fn bounds(len: f64, ratio: f64) -> (u64, u64) {
    ((len * (1.0 - ratio)).floor() as u64, (len * (1.0 + ratio)).ceil() as u64)
}

/// `num_prompts` prompts of exactly `input_len` ids (no prefix), as `bench latency` uses them.
pub fn random_prompts(num_prompts: usize, input_len: usize, vocab_size: u32, seed: u64) -> Vec<Vec<u32>> {
    let spec = RandomSpec {
        num_prompts,
        input_len,
        output_len: 1,
        range_ratio: 0.0,
        prefix_len: 0,
        vocab_size,
        seed,
    };
    spec.generate().0.into_iter().map(|r| r.prompt).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(num_prompts: usize, input_len: usize, range_ratio: f64, prefix_len: usize) -> RandomSpec {
        RandomSpec {
            num_prompts,
            input_len,
            output_len: 16,
            range_ratio,
            prefix_len,
            vocab_size: 256,
            seed: 1,
        }
    }

    #[test]
    fn probe_is_not_a_workload_prompt() {
        let (requests, probe) = spec(8, 32, 0.0, 0).generate();
        let prompts: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
        assert_eq!(prompts, random_prompts(8, 32, 256, 1));
        assert_eq!(probe.prompt.len(), 32);
        assert!(prompts.iter().all(|p| p[0] != probe.prompt[0]));
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
        let (requests, _) = spec(8, 32, 0.0, 0).generate();
        assert!(requests.iter().all(|r| r.output_len == 16));
    }

    /// The same ids as the generator of sessions 1 - 17 (ChaCha8 from the seed, prompt by
    /// prompt, first id replaced by the index), so the published runs' prompts are reproduced.
    #[test]
    fn fixed_lengths_reproduce_the_earlier_prompts() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let earlier: Vec<Vec<u32>> = (0..5u32)
            .map(|i| {
                let mut ids: Vec<u32> = (0..20).map(|_| rng.gen_range(0..100)).collect();
                ids[0] = i % 100;
                ids
            })
            .collect();
        assert_eq!(random_prompts(5, 20, 100, 7), earlier);
    }

    #[test]
    fn ranged_lengths_stay_in_vllms_bounds_and_vary() {
        let s = RandomSpec { output_len: 10, ..spec(400, 100, 0.5, 0) };
        assert_eq!(s.input_bounds(), (50, 150));
        assert_eq!(s.output_bounds(), (5, 15));
        let (requests, probe) = s.generate();
        let lens: Vec<usize> = requests.iter().map(|r| r.prompt.len()).collect();
        let outs: Vec<u32> = requests.iter().map(|r| r.output_len).collect();
        assert!(lens.iter().all(|l| (50..=150).contains(l)), "{lens:?}");
        assert!(outs.iter().all(|o| (5..=15).contains(o)), "{outs:?}");
        // 400 uniform draws reach both ends of the range and average near its middle.
        assert_eq!((*lens.iter().min().unwrap(), *lens.iter().max().unwrap()), (50, 150));
        assert_eq!((*outs.iter().min().unwrap(), *outs.iter().max().unwrap()), (5, 15));
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((mean - 100.0).abs() < 6.0, "mean prompt length {mean}");
        assert_eq!((probe.prompt.len(), probe.output_len), (150, 15), "the test request is the longest");
        assert_eq!(s.generate().0, requests, "seeded");
    }

    #[test]
    fn bounds_round_outward_and_keep_one_token() {
        // floor(7 * 0.7) = 4, ceil(7 * 1.3) = 10.
        assert_eq!(RandomSpec { output_len: 7, ..spec(1, 7, 0.3, 0) }.input_bounds(), (4, 10));
        assert_eq!(RandomSpec { output_len: 7, ..spec(1, 7, 0.3, 0) }.output_bounds(), (4, 10));
        // floor(1 * 0.1) = 0 is raised to 1: a prompt keeps the token that sets it apart.
        let tiny = RandomSpec { output_len: 1, ..spec(1, 1, 0.9, 0) };
        assert_eq!(tiny.input_bounds(), (1, 2));
        assert_eq!(tiny.output_bounds(), (1, 2));
        // No input after a prefix: the prompts are the prefix alone.
        assert_eq!(spec(1, 0, 0.5, 4).input_bounds(), (0, 0));
    }

    #[test]
    fn shared_prefix_then_distinct_prompts() {
        let s = spec(6, 12, 0.0, 20);
        let (requests, probe) = s.generate();
        let prefix = &probe.prompt[..20];
        for (i, r) in requests.iter().enumerate() {
            assert_eq!(r.prompt.len(), 32);
            assert_eq!(&r.prompt[..20], prefix, "every prompt starts with the one prefix");
            assert_eq!(r.prompt[20], i as u32, "the first id after it is the prompt's index");
        }
        assert_eq!(probe.prompt[20], 6, "the probe's first id after the prefix is its own");
        // The prefix does not move the ids after it: they are the prompts without a prefix.
        let (plain, _) = spec(6, 12, 0.0, 0).generate();
        for (with, without) in requests.iter().zip(&plain) {
            assert_eq!(&with.prompt[20..], &without.prompt[..]);
        }
    }

    #[test]
    fn validation_names_the_flag() {
        assert!(spec(1, 8, 0.0, 0).validate().is_ok());
        assert!(spec(1, 8, 0.99, 0).validate().is_ok());
        assert!(spec(1, 8, 1.0, 0).validate().unwrap_err().contains("--range-ratio"));
        assert!(spec(1, 8, -0.1, 0).validate().unwrap_err().contains("--range-ratio"));
        assert!(spec(1, 8, f64::NAN, 0).validate().unwrap_err().contains("--range-ratio"));
        assert!(spec(1, 0, 0.0, 0).validate().unwrap_err().contains("empty"));
        assert!(spec(1, 0, 0.0, 3).validate().is_ok());
    }
}
