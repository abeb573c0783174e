//! Greedy, temperature and top-p sampling of one sequence's logits on the host.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tessera_core::SamplingParams;
use tessera_model::argmax;

pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    if params.is_greedy() {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / params.temperature).exp())).collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < probs.len() && (kept == 0 || mass < params.top_p * total) {
        mass += probs[kept].1;
        kept += 1;
    }
    let mut target = rng.gen::<f32>() * mass;
    for &(token, p) in &probs[..kept] {
        if target < p {
            return token;
        }
        target -= p;
    }
    probs[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_and_tiny_top_p_pick_the_maximum() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&logits, &SamplingParams::greedy(1), &mut rng), 1);
        let params = SamplingParams { top_p: 1e-6, ..Default::default() };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &params, &mut rng), 1);
        }
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let logits = [0.0, (3.0f32).ln()];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let params = SamplingParams::default();
        let ones = (0..4000).filter(|_| sample(&logits, &params, &mut rng) == 1).count();
        assert!((2800..3200).contains(&ones), "expected about 3000 of 4000, got {ones}");
    }
}
