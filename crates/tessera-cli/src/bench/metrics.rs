//! The serving metrics, as pure functions of per-request timestamps, with vLLM's `bench serve`
//! definitions so that figures compare one to one:
//!
//! - TTFT: request sent -> first chunk that carries a choice.
//! - ITL: the gap between consecutive choice-carrying chunks of one request, pooled over all
//!   requests (so long outputs weigh more, as in vLLM).
//! - E2EL: request sent -> last choice-carrying chunk (a usage-only chunk and `[DONE]` do not
//!   count: they are not tokens a user waits for).
//! - TPOT: per request, `(E2EL - TTFT) / (output tokens - 1)`, only for requests with more than one
//!   output token; then summarized over requests.
//! - Percentiles interpolate linearly between closest ranks (numpy's default), so a p99 over few
//!   samples is what vLLM would print for the same samples.

use serde::Serialize;

/// What one request did, in seconds relative to the moment it was sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    pub prompt_len: usize,
    /// Arrival of each chunk that carried a choice, in order.
    pub chunk_times_s: Vec<f64>,
    /// `usage.completion_tokens` of the final chunk, when the server sent it.
    pub usage_output_tokens: Option<usize>,
    /// Prompt tokens the server found in its prefix cache (`usage.prompt_tokens_details`), when
    /// it said.
    pub usage_cached_tokens: Option<usize>,
    /// Set when the request failed (refused, broken stream); failed requests count nowhere.
    pub error: Option<String>,
}

impl RequestRecord {
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && !self.chunk_times_s.is_empty()
    }

    /// Usage is authoritative; without it each chunk is taken as one token, which holds for a
    /// server that streams token by token.
    pub fn output_tokens(&self) -> usize {
        self.usage_output_tokens.unwrap_or(self.chunk_times_s.len())
    }

    pub fn ttft_s(&self) -> Option<f64> {
        self.chunk_times_s.first().copied()
    }

    pub fn e2el_s(&self) -> Option<f64> {
        self.chunk_times_s.last().copied()
    }

    pub fn tpot_s(&self) -> Option<f64> {
        let n = self.output_tokens();
        if n < 2 {
            return None;
        }
        Some((self.e2el_s()? - self.ttft_s()?) / (n - 1) as f64)
    }

    pub fn itls_s(&self) -> impl Iterator<Item = f64> + '_ {
        self.chunk_times_s.windows(2).map(|w| w[1] - w[0])
    }
}

/// Linear interpolation between closest ranks (numpy's default `percentile`); `p` in [0, 100].
/// 0 for no samples, as vLLM reports an empty metric.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    assert!((0.0..=100.0).contains(&p), "percentile {p} outside [0, 100]");
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Mean, median and p99 of one metric, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

impl Summary {
    pub fn of_seconds(samples: &[f64]) -> Summary {
        let mean = if samples.is_empty() { 0.0 } else { samples.iter().sum::<f64>() / samples.len() as f64 };
        Summary {
            mean_ms: mean * 1e3,
            median_ms: percentile(samples, 50.0) * 1e3,
            p99_ms: percentile(samples, 99.0) * 1e3,
        }
    }
}

/// Service-level objectives in milliseconds; a request is "good" when it meets every one given.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Slos {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slos {
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// A request with one output token has no TPOT; vLLM counts it as 0 (meets any TPOT SLO).
    fn met_by(&self, r: &RequestRecord) -> bool {
        let within =
            |slo: Option<f64>, value_s: Option<f64>| slo.is_none_or(|ms| value_s.unwrap_or(0.0) * 1e3 <= ms);
        within(self.ttft_ms, r.ttft_s())
            && within(self.tpot_ms, r.tpot_s())
            && within(self.e2el_ms, r.e2el_s())
    }
}

/// The whole run's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    /// Prompt tokens of the successful requests that were prefix-cache hits; `None` when no
    /// request's usage said (a server that does not report them).
    pub cached_input_tokens: Option<usize>,
    pub duration_s: f64,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    /// Good requests per second; `None` when no SLO was given.
    pub request_goodput: Option<f64>,
    pub ttft: Summary,
    pub tpot: Summary,
    pub itl: Summary,
    pub e2el: Summary,
    /// Percentiles asked for with `--metric-percentiles`, in the order asked (the median and p99
    /// are always in the summaries above).
    pub percentiles: Vec<Percentiles>,
}

/// One percentile of each latency metric, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// In [0, 100].
    pub p: f64,
    pub ttft_ms: f64,
    pub tpot_ms: f64,
    pub itl_ms: f64,
    pub e2el_ms: f64,
}

/// Each latency's samples over the successful requests, in seconds.
struct Samples {
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    itl: Vec<f64>,
    e2el: Vec<f64>,
}

impl Samples {
    fn of(ok: &[&RequestRecord]) -> Samples {
        Samples {
            ttft: ok.iter().filter_map(|r| r.ttft_s()).collect(),
            tpot: ok.iter().filter_map(|r| r.tpot_s()).collect(),
            itl: ok.iter().flat_map(|r| r.itls_s()).collect(),
            e2el: ok.iter().filter_map(|r| r.e2el_s()).collect(),
        }
    }
}

/// `duration_s` is the wall time of the whole run, first send to last completion; throughputs
/// divide by it (not by the sum of latencies), so they are what the server sustained. `ps`: the
/// percentiles (each in [0, 100]) of every latency to report beside the median and p99.
pub fn compute(records: &[RequestRecord], duration_s: f64, slos: &Slos, ps: &[f64]) -> Metrics {
    assert!(duration_s > 0.0, "a run lasts a positive time, got {duration_s}");
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.succeeded()).collect();
    let total_input_tokens: usize = ok.iter().map(|r| r.prompt_len).sum();
    let total_output_tokens: usize = ok.iter().map(|r| r.output_tokens()).sum();
    let cached: Vec<usize> = ok.iter().filter_map(|r| r.usage_cached_tokens).collect();
    let cached_input_tokens = (!cached.is_empty()).then(|| cached.iter().sum());
    let samples = Samples::of(&ok);
    let good = ok.iter().filter(|r| slos.met_by(r)).count();
    let ms = |v: &[f64], p: f64| percentile(v, p) * 1e3;
    Metrics {
        completed: ok.len(),
        failed: records.len() - ok.len(),
        total_input_tokens,
        total_output_tokens,
        cached_input_tokens,
        duration_s,
        request_throughput: ok.len() as f64 / duration_s,
        output_throughput: total_output_tokens as f64 / duration_s,
        total_token_throughput: (total_input_tokens + total_output_tokens) as f64 / duration_s,
        request_goodput: (!slos.is_empty()).then(|| good as f64 / duration_s),
        ttft: Summary::of_seconds(&samples.ttft),
        tpot: Summary::of_seconds(&samples.tpot),
        itl: Summary::of_seconds(&samples.itl),
        e2el: Summary::of_seconds(&samples.e2el),
        percentiles: ps
            .iter()
            .map(|&p| Percentiles {
                p,
                ttft_ms: ms(&samples.ttft, p),
                tpot_ms: ms(&samples.tpot, p),
                itl_ms: ms(&samples.itl, p),
                e2el_ms: ms(&samples.e2el, p),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt_len: usize, times: &[f64], usage: Option<usize>) -> RequestRecord {
        RequestRecord {
            prompt_len,
            chunk_times_s: times.to_vec(),
            usage_output_tokens: usage,
            ..Default::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [4.0, 1.0, 3.0, 2.0];
        // numpy.percentile([1, 2, 3, 4], [0, 50, 99, 100]) == [1, 2.5, 3.97, 4]
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!(close(percentile(&v, 99.0), 3.97));
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        // numpy.percentile(range(1, 101), 99) == 99.01
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!(close(percentile(&hundred, 99.0), 99.01));
    }

    #[test]
    fn per_request_definitions() {
        // Sent at 0; chunks at 100 ms, 150 ms, 250 ms, 300 ms.
        let r = record(32, &[0.100, 0.150, 0.250, 0.300], None);
        assert!(close(r.ttft_s().unwrap(), 0.100));
        assert!(close(r.e2el_s().unwrap(), 0.300));
        assert_eq!(r.output_tokens(), 4, "without usage, one token per chunk");
        // (0.300 - 0.100) / (4 - 1)
        assert!(close(r.tpot_s().unwrap(), 0.2 / 3.0));
        let itls: Vec<f64> = r.itls_s().collect();
        assert_eq!(itls.len(), 3);
        for (got, want) in itls.iter().zip([0.050, 0.100, 0.050]) {
            assert!(close(*got, want), "{itls:?}");
        }
        // Usage wins over the chunk count: 9 tokens in 4 chunks gives (0.2) / 8.
        let r = record(32, &[0.100, 0.150, 0.250, 0.300], Some(9));
        assert!(close(r.tpot_s().unwrap(), 0.025));
        // One output token: no TPOT, no ITL.
        let r = record(32, &[0.5], Some(1));
        assert_eq!(r.tpot_s(), None);
        assert_eq!(r.itls_s().count(), 0);
    }

    #[test]
    fn run_metrics_pool_itl_and_skip_failures() {
        let records = vec![
            record(10, &[0.1, 0.2, 0.3], Some(3)),
            record(20, &[0.2, 0.6], Some(2)),
            RequestRecord { prompt_len: 99, error: Some("429".into()), ..Default::default() },
        ];
        let m = compute(&records, 2.0, &Slos::default(), &[]);
        assert_eq!((m.completed, m.failed), (2, 1));
        assert_eq!((m.total_input_tokens, m.total_output_tokens), (30, 5));
        assert!(close(m.request_throughput, 1.0));
        assert!(close(m.output_throughput, 2.5));
        assert!(close(m.total_token_throughput, 17.5));
        assert_eq!(m.request_goodput, None);
        // TTFTs 100, 200 ms.
        assert!(close(m.ttft.mean_ms, 150.0) && close(m.ttft.median_ms, 150.0));
        assert!(close(m.ttft.p99_ms, 199.0));
        // E2ELs 300, 600 ms.
        assert!(close(m.e2el.mean_ms, 450.0) && close(m.e2el.p99_ms, 597.0));
        // TPOTs (0.3-0.1)/2 = 100 ms and (0.6-0.2)/1 = 400 ms.
        assert!(close(m.tpot.mean_ms, 250.0) && close(m.tpot.median_ms, 250.0));
        // ITLs pooled: 100, 100 (first request), 400 (second): mean 200, median 100.
        assert!(close(m.itl.mean_ms, 200.0) && close(m.itl.median_ms, 100.0));
        // p99 of [100, 100, 400]: rank 1.98 -> 100 + 0.98 * 300.
        assert!(close(m.itl.p99_ms, 394.0));
        // No usage said how much was cached: unknown, not zero.
        assert_eq!(m.cached_input_tokens, None);
    }

    #[test]
    fn cached_input_tokens_sum_what_the_server_reported() {
        let hit = |prompt_len, cached| RequestRecord {
            usage_cached_tokens: Some(cached),
            ..record(prompt_len, &[0.1, 0.2], Some(2))
        };
        let failed = RequestRecord {
            usage_cached_tokens: Some(64),
            error: Some("reset".into()),
            ..Default::default()
        };
        let m = compute(
            &[hit(64, 48), hit(64, 0), record(64, &[0.1], Some(1)), failed],
            1.0,
            &Slos::default(),
            &[],
        );
        assert_eq!(m.cached_input_tokens, Some(48));
    }

    #[test]
    fn goodput_counts_requests_meeting_every_slo() {
        let records = vec![
            record(1, &[0.050, 0.150], Some(2)), // TTFT 50, TPOT 100, E2EL 150
            record(1, &[0.300, 0.350], Some(2)), // TTFT 300, TPOT 50, E2EL 350
            record(1, &[0.010], Some(1)),        // TTFT 10, no TPOT, E2EL 10
        ];
        let at = |slos: Slos| compute(&records, 1.0, &slos, &[]).request_goodput.unwrap();
        assert_eq!(at(Slos { ttft_ms: Some(100.0), ..Default::default() }), 2.0);
        assert_eq!(at(Slos { tpot_ms: Some(60.0), ..Default::default() }), 2.0);
        assert_eq!(at(Slos { ttft_ms: Some(100.0), tpot_ms: Some(60.0), e2el_ms: None }), 1.0);
        assert_eq!(at(Slos { e2el_ms: Some(400.0), ..Default::default() }), 3.0);
        // A bound equal to the value is met.
        assert_eq!(at(Slos { e2el_ms: Some(150.0), ..Default::default() }), 2.0);
    }

    #[test]
    fn asked_percentiles_of_every_metric() {
        // TTFTs 100, 200, 300, 400 ms; E2ELs 500 ms later; one token each 500 ms apart.
        let records: Vec<RequestRecord> =
            (1..=4).map(|i| record(1, &[0.1 * i as f64, 0.1 * i as f64 + 0.5], Some(2))).collect();
        let m = compute(&records, 1.0, &Slos::default(), &[90.0, 25.0]);
        assert_eq!(m.percentiles.len(), 2);
        let (p90, p25) = (m.percentiles[0], m.percentiles[1]);
        assert_eq!((p90.p, p25.p), (90.0, 25.0), "in the order asked");
        // numpy.percentile([100, 200, 300, 400], 90) == 370; 25 -> 175.
        assert!(close(p90.ttft_ms, 370.0) && close(p25.ttft_ms, 175.0), "{p90:?} {p25:?}");
        assert!(close(p90.e2el_ms, 870.0) && close(p25.e2el_ms, 675.0));
        assert!(close(p90.tpot_ms, 500.0) && close(p90.itl_ms, 500.0));
        // The rest is `compute`'s.
        assert_eq!(Metrics { percentiles: Vec::new(), ..m }, compute(&records, 1.0, &Slos::default(), &[]));
    }

    #[test]
    fn empty_run_reports_zeros() {
        let m = compute(&[], 1.0, &Slos::default(), &[]);
        assert_eq!((m.completed, m.total_output_tokens), (0, 0));
        assert_eq!(m.ttft, Summary::default());
        assert_eq!(m.request_throughput, 0.0);
    }
}
