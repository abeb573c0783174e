//! The serving result as a table for people and as JSON for machines. JSON keys follow vLLM's
//! `bench serve --save-result` (`request_throughput`, `mean_ttft_ms`, `request_goodput`...), so
//! scripts that read vLLM's results read ours.

use super::metrics::{Metrics, Percentiles, Summary};
use serde::Serialize;
use std::fmt::Write;

/// How the run was set up, recorded next to its figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    pub base_url: String,
    pub model: String,
    pub num_prompts: usize,
    /// Nominal lengths; with `range_ratio` above 0 each request's varies around them.
    pub input_len: usize,
    pub output_len: u32,
    pub range_ratio: f64,
    /// Tokens of the prefix every prompt shares (before the `input_len` tokens).
    pub prefix_len: usize,
    /// `None` for an infinite rate (JSON has no infinity).
    pub request_rate: Option<f64>,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub seed: u64,
    /// The metrics (`ttft`, `tpot`, `itl`, `e2el`) whose asked percentiles are reported
    /// (`--percentile-metrics`); mean, median and p99 are reported for all four.
    pub percentile_metrics: Vec<String>,
}

#[derive(Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    info: &'a RunInfo,
    duration: f64,
    completed: usize,
    failed: usize,
    total_input_tokens: usize,
    total_output_tokens: usize,
    /// Prefix-cache hits among the input tokens, as the server reported them (null: not reported).
    cached_input_tokens: Option<usize>,
    request_throughput: f64,
    request_goodput: Option<f64>,
    output_throughput: f64,
    total_token_throughput: f64,
    #[serde(flatten)]
    ttft: Named,
    #[serde(flatten)]
    tpot: Named,
    #[serde(flatten)]
    itl: Named,
    #[serde(flatten)]
    e2el: Named,
}

/// One summary under `mean_<name>_ms`, `median_<name>_ms`, `p99_<name>_ms`, and each asked
/// percentile P under `p<P>_<name>_ms` (vLLM's keys: `p90_ttft_ms`, `p99.9_ttft_ms`).
struct Named(&'static str, Summary, Vec<(f64, f64)>);

impl Serialize for Named {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Named(name, summary, asked) = self;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry(&format!("mean_{name}_ms"), &summary.mean_ms)?;
        map.serialize_entry(&format!("median_{name}_ms"), &summary.median_ms)?;
        map.serialize_entry(&format!("p99_{name}_ms"), &summary.p99_ms)?;
        for &(p, ms) in asked {
            map.serialize_entry(&format!("p{}_{name}_ms", label(p)), &ms)?;
        }
        map.end()
    }
}

/// A percentile as vLLM writes it in keys and labels: `90`, `99.9`.
fn label(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as u64)
    } else {
        format!("{p}")
    }
}

/// The asked percentiles of metric `name` (`ttft`...) as (p, ms), but p99, which the summary
/// always gives; none where `--percentile-metrics` left the metric out.
fn asked(info: &RunInfo, m: &Metrics, name: &str, of: fn(&Percentiles) -> f64) -> Vec<(f64, f64)> {
    if !info.percentile_metrics.iter().any(|n| n == name) {
        return Vec::new();
    }
    m.percentiles.iter().filter(|p| p.p != 99.0).map(|p| (p.p, of(p))).collect()
}

pub fn json(info: &RunInfo, m: &Metrics) -> serde_json::Value {
    serde_json::to_value(Json {
        info,
        duration: m.duration_s,
        completed: m.completed,
        failed: m.failed,
        total_input_tokens: m.total_input_tokens,
        total_output_tokens: m.total_output_tokens,
        cached_input_tokens: m.cached_input_tokens,
        request_throughput: m.request_throughput,
        request_goodput: m.request_goodput,
        output_throughput: m.output_throughput,
        total_token_throughput: m.total_token_throughput,
        ttft: Named("ttft", m.ttft, asked(info, m, "ttft", |p| p.ttft_ms)),
        tpot: Named("tpot", m.tpot, asked(info, m, "tpot", |p| p.tpot_ms)),
        itl: Named("itl", m.itl, asked(info, m, "itl", |p| p.itl_ms)),
        e2el: Named("e2el", m.e2el, asked(info, m, "e2el", |p| p.e2el_ms)),
    })
    .expect("plain numbers and strings serialize")
}

pub fn table(info: &RunInfo, m: &Metrics) -> String {
    let mut out = String::new();
    let mut row = |label: &str, value: String| {
        let _ = writeln!(out, "{}", format!("{label:<42}{value:>12}").trim_end());
    };
    let title = |t: &str| format!("{:=^54}", format!(" {t} "));
    row(&title("Serving Benchmark Result"), String::new());
    row("Successful requests:", m.completed.to_string());
    row("Failed requests:", m.failed.to_string());
    let rate = info.request_rate.map_or("inf".into(), |r| format!("{r}"));
    row("Request rate (req/s), burstiness:", format!("{rate}, {}", info.burstiness));
    row("Maximum concurrency:", info.max_concurrency.map_or("none".into(), |c| c.to_string()));
    if info.range_ratio > 0.0 {
        row("Length range ratio:", info.range_ratio.to_string());
    }
    if info.prefix_len > 0 {
        row("Shared prefix (tokens):", info.prefix_len.to_string());
    }
    row("Benchmark duration (s):", format!("{:.2}", m.duration_s));
    row("Total input tokens:", m.total_input_tokens.to_string());
    if let Some(cached) = m.cached_input_tokens {
        // Hits make prefill cheaper than the workload says: a run that should have none shows it.
        let share = 100.0 * cached as f64 / m.total_input_tokens.max(1) as f64;
        row("Prefix-cache hit input tokens:", format!("{cached} ({share:.1}%)"));
    }
    row("Total generated tokens:", m.total_output_tokens.to_string());
    row("Request throughput (req/s):", format!("{:.2}", m.request_throughput));
    if let Some(goodput) = m.request_goodput {
        row("Request goodput (req/s):", format!("{goodput:.2}"));
    }
    row("Output token throughput (tok/s):", format!("{:.2}", m.output_throughput));
    row("Total token throughput (tok/s):", format!("{:.2}", m.total_token_throughput));
    for (title_text, key, s, of) in [
        ("Time to First Token", "ttft", m.ttft, (|p| p.ttft_ms) as fn(&Percentiles) -> f64),
        ("Time per Output Token (excl. 1st token)", "tpot", m.tpot, |p| p.tpot_ms),
        ("Inter-token Latency", "itl", m.itl, |p| p.itl_ms),
        ("End-to-end Latency", "e2el", m.e2el, |p| p.e2el_ms),
    ] {
        let name = key.to_uppercase();
        row(&format!("{:-^54}", format!(" {title_text} ")), String::new());
        row(&format!("Mean {name} (ms):"), format!("{:.2}", s.mean_ms));
        row(&format!("Median {name} (ms):"), format!("{:.2}", s.median_ms));
        // P99 (the summary's, as in the JSON) and the asked percentiles, ascending, each once.
        let mut rows = asked(info, m, key, of);
        rows.push((99.0, s.p99_ms));
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows.dedup_by(|a, b| a.0 == b.0);
        for (p, ms) in rows {
            row(&format!("P{} {name} (ms):", label(p)), format!("{ms:.2}"));
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(54));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_info() -> RunInfo {
        RunInfo {
            base_url: "http://x".into(),
            model: "m".into(),
            num_prompts: 2,
            input_len: 3,
            output_len: 4,
            range_ratio: 0.0,
            prefix_len: 0,
            request_rate: None,
            burstiness: 1.0,
            max_concurrency: Some(2),
            seed: 0,
            percentile_metrics: ["ttft", "tpot", "itl", "e2el"].map(String::from).to_vec(),
        }
    }

    #[test]
    fn json_has_vllm_keys() {
        let info = run_info();
        let m = Metrics {
            completed: 2,
            ttft: Summary { mean_ms: 1.0, median_ms: 2.0, p99_ms: 3.0 },
            ..Default::default()
        };
        let v = json(&info, &m);
        assert_eq!(v["completed"], 2);
        assert_eq!(v["median_ttft_ms"], 2.0);
        assert_eq!(v["p99_ttft_ms"], 3.0);
        assert_eq!(v["model"], "m");
        for key in [
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
            "mean_tpot_ms",
            "p99_itl_ms",
            "median_e2el_ms",
            "request_goodput",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        let t = table(&info, &m);
        assert!(t.contains("Successful requests:") && t.contains("P99 E2EL (ms):"), "{t}");
        assert!(!t.contains("range ratio") && !t.contains("prefix"), "fixed lengths, no prefix: {t}");
        assert_eq!((v["range_ratio"].as_f64(), v["prefix_len"].as_u64()), (Some(0.0), Some(0)));

        let varied = RunInfo { range_ratio: 0.25, prefix_len: 512, ..info };
        let t = table(&varied, &m);
        assert!(t.contains("Length range ratio:") && t.contains("0.25"), "{t}");
        assert!(t.contains("Shared prefix (tokens):") && t.contains("512"), "{t}");
        let v = json(&varied, &m);
        assert_eq!((v["range_ratio"].as_f64(), v["prefix_len"].as_u64()), (Some(0.25), Some(512)));
    }

    #[test]
    fn asked_percentiles_in_table_and_json() {
        let info = run_info();
        let at = |p: f64, ms: f64| Percentiles {
            p,
            ttft_ms: ms,
            tpot_ms: ms + 1.0,
            itl_ms: ms + 2.0,
            e2el_ms: ms + 3.0,
        };
        let m = Metrics {
            ttft: Summary { mean_ms: 1.0, median_ms: 2.0, p99_ms: 30.0 },
            percentiles: vec![at(99.9, 40.0), at(90.0, 20.0), at(99.0, 31.0)],
            ..Default::default()
        };
        let v = json(&info, &m);
        assert_eq!(v["p90_ttft_ms"], 20.0);
        assert_eq!(v["p99.9_ttft_ms"], 40.0);
        assert_eq!(v["p99_ttft_ms"], 30.0, "p99 is the summary's, whether asked or not");
        assert_eq!(v["p90_e2el_ms"], 23.0);
        assert_eq!(v["p99.9_itl_ms"], 42.0);
        let t = table(&info, &m);
        let (p90, p99, p999) = (
            t.find("P90 TTFT (ms):").expect(&t),
            t.find("P99 TTFT (ms):").expect(&t),
            t.find("P99.9 TTFT (ms):").expect(&t),
        );
        assert!(p90 < p99 && p99 < p999, "ascending:\n{t}");
        assert_eq!(t.matches("P99 TTFT (ms):").count(), 1, "asked 99 is the p99 row:\n{t}");
        assert!(t.contains("30.00") && !t.contains("31.00"), "the summary's p99, as in the JSON:\n{t}");
        assert!(t.contains("P90 TPOT (ms):") && t.contains("P99.9 E2EL (ms):"), "{t}");

        // `--percentile-metrics ttft`: the asked percentiles of TTFT alone; p99 stays for all.
        let only_ttft = RunInfo { percentile_metrics: vec!["ttft".into()], ..info };
        let v = json(&only_ttft, &m);
        assert_eq!(v["p90_ttft_ms"], 20.0);
        assert!(v.get("p90_e2el_ms").is_none() && v.get("p99.9_itl_ms").is_none(), "{v}");
        assert!(v.get("p99_e2el_ms").is_some(), "{v}");
        let t = table(&only_ttft, &m);
        assert!(t.contains("P90 TTFT (ms):") && !t.contains("P90 TPOT (ms):"), "{t}");
        assert!(t.contains("P99 TPOT (ms):"), "{t}");
    }
}
