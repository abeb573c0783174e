//! When each request is sent. Gaps between sends are gamma-distributed with shape `burstiness`
//! and mean `1 / request_rate` (vLLM's model): shape 1 is a Poisson process, a smaller shape
//! bunches requests into bursts, a larger one spaces them evenly. An infinite rate sends
//! everything at once (then only `--max-concurrency` paces the run).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Offsets from the start of the run, in seconds, one per request, non-decreasing.
pub fn schedule(num_requests: usize, request_rate: f64, burstiness: f64, seed: u64) -> Vec<f64> {
    assert!(request_rate > 0.0, "request rate must be positive, got {request_rate}");
    assert!(burstiness > 0.0, "burstiness must be positive, got {burstiness}");
    if request_rate.is_infinite() {
        return vec![0.0; num_requests];
    }
    // Its own stream, so the arrival times do not depend on how many prompt tokens were drawn.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA771_7A15);
    let scale = 1.0 / (request_rate * burstiness);
    let mut t = 0.0;
    (0..num_requests)
        .map(|i| {
            // The first request goes at time zero, so the run's duration starts with work.
            if i > 0 {
                t += gamma(&mut rng, burstiness) * scale;
            }
            t
        })
        .collect()
}

/// One draw from Gamma(shape, 1): Marsaglia and Tsang's squeeze method, with the standard boost
/// `Gamma(a) = Gamma(a + 1) * U^(1/a)` for shapes below 1, where the method does not apply.
pub fn gamma(rng: &mut impl Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Box-Muller; one of the pair is enough here.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(times: &[f64]) -> Vec<f64> {
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_and_cv(v: &[f64]) -> (f64, f64) {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        assert_eq!(schedule(4, f64::INFINITY, 1.0, 0), vec![0.0; 4]);
    }

    #[test]
    fn gaps_have_the_requested_mean_and_shape() {
        // Gamma(k) gaps with mean 1/R have coefficient of variation 1/sqrt(k).
        for (rate, burstiness) in [(10.0, 1.0), (4.0, 0.25), (50.0, 4.0)] {
            let times = schedule(20_001, rate, burstiness, 7);
            assert_eq!(times[0], 0.0);
            assert!(times.windows(2).all(|w| w[0] <= w[1]));
            let (mean, cv) = mean_and_cv(&gaps(&times));
            let want_cv = 1.0 / f64::sqrt(burstiness);
            assert!((mean * rate - 1.0).abs() < 0.05, "rate {rate}, k {burstiness}: mean gap {mean}");
            assert!((cv / want_cv - 1.0).abs() < 0.06, "rate {rate}, k {burstiness}: cv {cv} vs {want_cv}");
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(schedule(50, 3.0, 1.0, 11), schedule(50, 3.0, 1.0, 11));
        assert_ne!(schedule(50, 3.0, 1.0, 11), schedule(50, 3.0, 1.0, 12));
    }
}
