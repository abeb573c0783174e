//! Host-side sampling of one sequence's next token: the reference the GPU sampler is tested against.
//!
//! Order, as in vLLM: penalties on the raw logits; argmax when the temperature is 0; otherwise
//! temperature, top-k, top-p, min-p, then one draw from what is left, renormalised. Logprobs
//! describe the raw model logits (vLLM's default), not the penalised or filtered distribution.
//!
//! Where the definition has a choice, this module makes the strict one so that two implementations
//! can agree token for token:
//! - NaN logits count as -inf and are never chosen. When no logit is finite and none is +inf the
//!   sampler returns token 0 instead of panicking (there is no distribution to draw from).
//! - Ties rank the lower id first: greedy takes the first maximum, top-k keeps exactly k tokens
//!   (vLLM keeps every token tied with the k-th), and top-p accumulates in that order.
//! - The draw walks the surviving tokens in id order with one uniform f64 in [0, 1).
//! - Randomness depends only on the request's seed and the position (`output_token_ids.len()`),
//!   never on the batch, so a preempted and recomputed sequence redraws the same tokens.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use tessera_core::sampling::SamplingParams;
use tessera_core::step::TokenLogprobs;

/// Everything `sample` needs to know about one sequence besides its logits.
pub struct SamplingContext<'a> {
    pub params: &'a SamplingParams,
    pub prompt_token_ids: &'a [u32],
    /// Generated so far, before the token being sampled.
    pub output_token_ids: &'a [u32],
    /// The request's seed (the engine assigns one when `params.seed` is `None`).
    pub seed: u64,
}

/// Returns the chosen token and, when `params.logprobs` is `Some(n)`, its logprob and the top-n
/// alternatives (most likely first).
pub fn sample(logits: &[f32], ctx: &SamplingContext<'_>) -> (u32, Option<TokenLogprobs>) {
    assert!(!logits.is_empty(), "sampling needs at least one logit");
    let params = ctx.params;
    // Copy the logits only when penalties change them; both paths below treat NaN as -inf.
    let penalised;
    let work = if has_penalties(params) {
        penalised = penalise(logits, ctx);
        &penalised[..]
    } else {
        logits
    };
    let token = if params.is_greedy() {
        argmax(work)
    } else {
        draw(work, params, uniform(ctx.seed, ctx.output_token_ids.len()))
    };
    let logprobs = params.logprobs.map(|n| token_logprobs(logits, token, n as usize));
    (token, logprobs)
}

/// The uniform number in [0, 1) that the draw at `position` (tokens generated before it) of a
/// request with `seed` uses: a device sampler given it draws the same token. One ChaCha key per
/// request and one stream per position: streams of one key never overlap, so positions are
/// independent, and nothing but (seed, position) decides a draw.
pub fn uniform(seed: u64, position: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(position as u64);
    rng.gen::<f64>()
}

/// Each distinct token of the prompt and the output, ascending, with its count in the output:
/// everything the penalties need, for a device sampler.
pub fn penalized_tokens(prompt_token_ids: &[u32], output_token_ids: &[u32]) -> Vec<(u32, u32)> {
    let mut counts: std::collections::BTreeMap<u32, u32> =
        prompt_token_ids.iter().map(|&id| (id, 0)).collect();
    for &id in output_token_ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// First index of the largest value; NaN never wins; 0 when nothing beats -inf.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &x) in values.iter().enumerate() {
        if x > best_value {
            best = i;
            best_value = x;
        }
    }
    best as u32
}

/// Whether the token is just the argmax of the raw logits (greedy, no penalties, no logprobs), so
/// a device can choose it without sending the logits to the host.
pub fn is_plain_greedy(params: &SamplingParams) -> bool {
    params.is_greedy() && params.logprobs.is_none() && !has_penalties(params)
}

pub fn has_penalties(params: &SamplingParams) -> bool {
    params.repetition_penalty != 1.0 || params.frequency_penalty != 0.0 || params.presence_penalty != 0.0
}

/// Repetition penalty over prompt and output, then frequency and presence penalties over the
/// output only. Ids outside the vocabulary are ignored (the model never produced them).
fn penalise(raw: &[f32], ctx: &SamplingContext<'_>) -> Vec<f32> {
    let params = ctx.params;
    let mut logits = raw.to_vec();
    if params.repetition_penalty != 1.0 {
        // A mask rather than a set: one pass over the vocabulary beats hashing a long prompt.
        let mut seen = vec![false; logits.len()];
        for &id in ctx.prompt_token_ids.iter().chain(ctx.output_token_ids) {
            if let Some(s) = seen.get_mut(id as usize) {
                *s = true;
            }
        }
        let penalty = params.repetition_penalty;
        for (x, _) in logits.iter_mut().zip(&seen).filter(|(_, &s)| s) {
            *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        let mut ids = ctx.output_token_ids.to_vec();
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            if let Some(x) = logits.get_mut(run[0] as usize) {
                *x -= params.frequency_penalty * run.len() as f32 + params.presence_penalty;
            }
        }
    }
    logits
}

/// Most likely first; equal weights put the lower id first.
fn by_rank(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// One draw from what the filters leave, with `uniform` in [0, 1).
fn draw(logits: &[f32], params: &SamplingParams, uniform: f64) -> u32 {
    let t = params.temperature;
    // f32::max skips NaN; dividing by t > 0 is monotone, so this is the max of the scaled logits.
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) / t;
    if !max.is_finite() {
        // All -inf (no distribution), or +inf somewhere (that token is certain).
        return argmax(logits);
    }
    // Scaled logits of the tokens that can be drawn at all (NaN and -inf fail the comparison).
    let mut cands: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > f32::NEG_INFINITY)
        .map(|(i, &x)| (i as u32, x / t))
        .collect();
    let mut in_id_order = true;
    let k = params.top_k as usize;
    if k > 0 && k < cands.len() {
        // On logits, before exponentiating: the ranking is the same and only k exps remain.
        cands.select_nth_unstable_by(k - 1, by_rank);
        cands.truncate(k);
        in_id_order = false;
    }
    // Unnormalised probabilities. Tokens whose weight underflows to 0 can never be drawn whatever
    // the later filters keep, so dropping them is exact and often shrinks the work a lot.
    for c in &mut cands {
        c.1 = (c.1 - max).exp();
    }
    cands.retain(|c| c.1 > 0.0);
    if params.top_p < 1.0 {
        keep_top_p(&mut cands, params.top_p);
        in_id_order = false;
    }
    if params.min_p > 0.0 {
        // The most likely token survives top-k and top-p, so this is min_p times the max prob.
        let threshold = params.min_p * cands.iter().map(|c| c.1).fold(0.0, f32::max);
        cands.retain(|c| c.1 >= threshold);
    }
    if !in_id_order {
        cands.sort_unstable_by_key(|c| c.0);
    }
    let total: f64 = cands.iter().map(|c| f64::from(c.1)).sum();
    let target = uniform * total;
    let mut acc = 0.0;
    for &(id, w) in &cands {
        acc += f64::from(w);
        if acc > target {
            return id;
        }
    }
    // Only reachable through rounding in the running sum.
    cands.last().expect("the most likely token always survives").0
}

/// Keeps the smallest set of most likely tokens whose mass reaches `top_p` of the total (at least
/// one). Sorting the whole vocabulary is rarely needed: look at the best 64 first and widen the
/// partial selection until the mass is reached.
fn keep_top_p(cands: &mut Vec<(u32, f32)>, top_p: f32) {
    let target = f64::from(top_p) * cands.iter().map(|c| f64::from(c.1)).sum::<f64>();
    let mut n = cands.len().min(64);
    loop {
        if n < cands.len() {
            cands.select_nth_unstable_by(n - 1, by_rank);
        }
        cands[..n].sort_unstable_by(by_rank);
        let mut acc = 0.0;
        for (i, c) in cands[..n].iter().enumerate() {
            acc += f64::from(c.1);
            if acc >= target {
                cands.truncate(i + 1);
                return;
            }
        }
        if n == cands.len() {
            return; // rounding kept the sum just short of the target: keep everything
        }
        n = cands.len().min(n * 8);
    }
}

/// Logprobs of the raw logits. NaN counts as -inf and +inf as f32::MAX, so the answer never holds
/// a NaN; when every logit is -inf every logprob is -inf.
fn token_logprobs(raw: &[f32], token: u32, top_n: usize) -> TokenLogprobs {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x.min(f32::MAX) };
    let max = raw.iter().copied().map(clean).fold(f32::NEG_INFINITY, f32::max);
    let log_sum_exp = if max == f32::NEG_INFINITY {
        f64::INFINITY
    } else {
        let max = f64::from(max);
        max + raw.iter().map(|&x| (f64::from(clean(x)) - max).exp()).sum::<f64>().ln()
    };
    let logprob = |id: u32| (f64::from(clean(raw[id as usize])) - log_sum_exp) as f32;
    // At most 20 alternatives: a small sorted buffer beats selecting over the whole vocabulary.
    let top_n = top_n.min(raw.len());
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        for (i, &x) in raw.iter().enumerate() {
            let entry = (i as u32, clean(x));
            if top.len() == top_n && by_rank(&entry, &top[top_n - 1]) != Ordering::Less {
                continue;
            }
            let at = top.partition_point(|t| by_rank(t, &entry) == Ordering::Less);
            top.insert(at, entry);
            top.truncate(top_n);
        }
    }
    TokenLogprobs { logprob: logprob(token), top: top.into_iter().map(|(id, _)| (id, logprob(id))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    fn pick(logits: &[f32], p: &SamplingParams, prompt: &[u32], output: &[u32], seed: u64) -> u32 {
        sample(
            logits,
            &SamplingContext { params: p, prompt_token_ids: prompt, output_token_ids: output, seed },
        )
        .0
    }

    /// Deterministic pseudo-random logits in [-4, 4).
    fn noisy_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-4.0..4.0)).collect()
    }

    /// Counts of each token over `n` draws at positions 0..n of one request.
    fn histogram(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<usize> {
        let output = vec![0u32; n];
        let mut counts = vec![0; logits.len()];
        for pos in 0..n {
            counts[pick(logits, p, &[], &output[..pos], 7) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_picks_first_max_and_never_nan() {
        let greedy = SamplingParams::greedy(1);
        assert_eq!(pick(&[0.5, 2.0, -1.0, 2.0], &greedy, &[], &[], 0), 1);
        assert_eq!(pick(&[f32::NAN, 1.0, f32::NAN], &greedy, &[], &[], 0), 1);
        let warm = params(|p| p.temperature = 0.8);
        for seed in 0..20 {
            assert_eq!(pick(&[f32::NAN, -3.0, f32::NAN], &warm, &[], &[], seed), 1);
        }
    }

    #[test]
    fn all_masked_logits_return_token_zero() {
        let masked = [f32::NAN, f32::NEG_INFINITY, f32::NAN];
        assert_eq!(pick(&masked, &SamplingParams::greedy(1), &[], &[], 0), 0);
        let p = params(|p| p.logprobs = Some(2));
        let ctx = SamplingContext { params: &p, prompt_token_ids: &[], output_token_ids: &[], seed: 3 };
        let (token, lp) = sample(&masked, &ctx);
        assert_eq!(token, 0);
        let lp = lp.unwrap();
        assert!(lp.logprob == f32::NEG_INFINITY && lp.top.iter().all(|t| t.1 == f32::NEG_INFINITY));
        // +inf is certain, whatever the temperature.
        assert_eq!(pick(&[1.0, f32::INFINITY, 2.0], &params(|_| {}), &[], &[], 1), 1);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 1.2;
        });
        assert_eq!(pick(&[2.0, 1.9], &p, &[], &[], 0), 0);
        assert_eq!(pick(&[2.0, 1.9], &p, &[0], &[], 0), 1, "prompt tokens count");
        assert_eq!(pick(&[2.0, 1.9], &p, &[], &[0], 0), 1, "output tokens count");
        // 2.0 / 1.2 = 1.67 still beats 1.9 / 1.2 = 1.58: both seen, order kept.
        assert_eq!(pick(&[2.0, 1.9], &p, &[0, 1], &[], 0), 0);
        // Negative: -1.0 * 1.2 = -1.2 falls below -1.1.
        assert_eq!(pick(&[-1.0, -1.1], &p, &[0], &[], 0), 1);
    }

    #[test]
    fn frequency_penalty_scales_with_count_in_output() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.frequency_penalty = 0.3;
        });
        assert_eq!(pick(&[3.0, 2.5], &p, &[0, 0, 0], &[0], 0), 0, "3.0 - 0.3 > 2.5; prompt ignored");
        assert_eq!(pick(&[3.0, 2.5], &p, &[], &[0, 0], 0), 1, "3.0 - 0.6 < 2.5");
    }

    #[test]
    fn presence_penalty_applies_once_to_output_tokens() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 0.6;
        });
        assert_eq!(pick(&[3.0, 2.5], &p, &[0], &[], 0), 0, "prompt tokens are not penalised");
        assert_eq!(pick(&[3.0, 2.5], &p, &[], &[0], 0), 1);
        assert_eq!(pick(&[3.0, 2.3], &p, &[], &[0, 0, 0, 0], 0), 0, "3.0 - 0.6 > 2.3 however often");
    }

    #[test]
    fn filters_that_keep_one_token_equal_greedy() {
        for seed in 0..8 {
            let logits = noisy_logits(5000, seed);
            let want = argmax(&logits);
            for p in [
                params(|p| p.top_k = 1),
                params(|p| p.top_p = 1e-6),
                params(|p| p.min_p = 1.0),
                params(|p| p.temperature = 0.0),
            ] {
                for pos in 0..4 {
                    assert_eq!(pick(&logits, &p, &[], &vec![9; pos], seed), want, "{p:?}");
                }
            }
        }
    }

    #[test]
    fn temperature_sampling_follows_softmax() {
        // Probabilities 1:2:5. Chi-square with 2 degrees of freedom: 13.8 is the 0.1% tail.
        let logits = [1f32.ln(), 2f32.ln(), 5f32.ln()];
        let n = 4000;
        let counts = histogram(&logits, &params(|_| {}), n);
        let chi2: f64 = counts
            .iter()
            .zip([1.0, 2.0, 5.0])
            .map(|(&c, w)| {
                let expected = n as f64 * w / 8.0;
                (c as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 13.8, "counts {counts:?}, chi2 {chi2}");
        // Temperature 2 flattens 3:1 odds to sqrt(3):1, i.e. p0 = 0.634 (sd 0.008 over 4000).
        let counts = histogram(&[3f32.ln(), 0.0], &params(|p| p.temperature = 2.0), n);
        let p0 = counts[0] as f64 / n as f64;
        assert!((p0 - 0.634).abs() < 0.03, "p0 {p0}");
    }

    #[test]
    fn top_k_top_p_and_min_p_restrict_the_support() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let support =
            |p: SamplingParams| histogram(&logits, &p, 2000).iter().map(|&c| c > 0).collect::<Vec<_>>();
        assert_eq!(support(params(|_| {})), [true; 4]);
        assert_eq!(support(params(|p| p.top_k = 2)), [true, true, false, false]);
        assert_eq!(support(params(|p| p.top_p = 0.75)), [true, true, false, false]);
        assert_eq!(support(params(|p| p.top_p = 0.85)), [true, true, true, false]);
        assert_eq!(support(params(|p| p.min_p = 0.25)), [true, true, true, false]);
        assert_eq!(support(params(|p| p.min_p = 0.5)), [true, true, false, false]);
        // Renormalised after top-k: 5:3 odds, p0 = 0.625 (sd 0.011 over 2000).
        let counts = histogram(&logits, &params(|p| p.top_k = 2), 2000);
        assert!((counts[0] as f64 / 2000.0 - 0.625).abs() < 0.04, "{counts:?}");
    }

    #[test]
    fn top_p_over_a_large_flat_vocabulary_keeps_the_lowest_ids() {
        // Equal weights rank by id, so exactly ids 0..5000 hold half the mass; this needs the
        // widening partial selection well past its first 64 candidates.
        let p = params(|p| p.top_p = 0.5);
        let logits = vec![0.0f32; 10_000];
        let output = vec![0u32; 300];
        let picks: Vec<u32> = (0..300).map(|pos| pick(&logits, &p, &[], &output[..pos], 5)).collect();
        assert!(picks.iter().all(|&t| t < 5000), "{picks:?}");
        assert!(picks.iter().any(|&t| t >= 2500), "the whole kept set is drawn from");
    }

    #[test]
    fn same_seed_and_position_give_the_same_token() {
        let logits = noisy_logits(1000, 1).iter().map(|x| x * 0.1).collect::<Vec<_>>();
        let p = params(|_| {});
        let output = vec![3u32; 64];
        let run = |seed: u64, prompt: &[u32]| {
            (0..64).map(|pos| pick(&logits, &p, prompt, &output[..pos], seed)).collect::<Vec<_>>()
        };
        let first = run(42, &[1, 2, 3]);
        assert_eq!(first, run(42, &[9]), "only the seed and the position matter");
        assert_ne!(first, run(43, &[1, 2, 3]));
        assert!(first.windows(2).any(|w| w[0] != w[1]), "positions draw independently");
    }

    #[test]
    fn logprobs_come_from_raw_logits_ordered_and_normalised() {
        let mut logits = noisy_logits(10, 3);
        logits[7] = logits[2]; // a tie: the lower id must rank first
        let p = params(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 100.0;
            p.logprobs = Some(10);
        });
        let top_raw = argmax(&logits);
        let ctx =
            SamplingContext { params: &p, prompt_token_ids: &[top_raw], output_token_ids: &[], seed: 0 };
        let (token, lp) = sample(&logits, &ctx);
        let lp = lp.unwrap();
        assert_ne!(token, top_raw, "the penalty moved the choice");
        assert_eq!(lp.top.len(), 10);
        assert_eq!(lp.top[0].0, top_raw, "top-n describes the raw logits");
        let mass: f64 = lp.top.iter().map(|t| f64::from(t.1).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
        assert!(lp.top.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
        let i2 = lp.top.iter().position(|t| t.0 == 2).unwrap();
        assert_eq!(lp.top[i2 + 1].0, 7);
        let want = lp.top.iter().find(|t| t.0 == token).unwrap().1;
        assert_eq!(lp.logprob, want);
        let lse = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        assert!((f64::from(lp.logprob) - (f64::from(logits[token as usize]) - lse)).abs() < 1e-5);
        let p3 = params(|p| p.logprobs = Some(3));
        let ctx = SamplingContext { params: &p3, prompt_token_ids: &[], output_token_ids: &[], seed: 0 };
        assert_eq!(sample(&logits, &ctx).1.unwrap().top.len(), 3);
        assert!(sample(&logits, &SamplingContext { params: &params(|_| {}), ..ctx }).1.is_none());
    }

    #[test]
    fn penalized_tokens_count_only_the_output() {
        assert_eq!(penalized_tokens(&[3, 1, 3], &[1, 5, 1]), vec![(1, 2), (3, 0), (5, 1)]);
        assert!(penalized_tokens(&[], &[]).is_empty());
    }

    #[test]
    fn the_draw_uses_the_uniform_of_seed_and_position() {
        // Probabilities 1:1: the token is 0 exactly when the uniform is below one half.
        let logits = [0.0f32, 0.0];
        let p = params(|_| {});
        for pos in 0..64 {
            let want = u32::from(uniform(11, pos) >= 0.5);
            assert_eq!(pick(&logits, &p, &[], &vec![0; pos], 11), want, "position {pos}");
        }
    }
}
