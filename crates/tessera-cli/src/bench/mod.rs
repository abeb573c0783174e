//! `tessera bench`: `serve` loads any OpenAI-compatible server with vLLM's `bench serve`
//! workload and definitions; `latency` times prefill and decode steps of an in-process engine
//! against the hardware's roofline.

mod arrivals;
mod dataset;
#[cfg(feature = "cuda")]
mod gpu_probe;
mod latency;
mod metrics;
mod probe;
mod report;
mod roofline;
mod serve;

use crate::args::ModelArgs;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tessera_client::Client;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Load an OpenAI-compatible server: streaming completions of random prompts; TTFT, TPOT,
    /// ITL, E2EL, throughput and goodput.
    Serve(Box<ServeBenchArgs>),
    /// Time prefill and decode steps of the in-process engine against the roofline.
    Latency(Box<LatencyArgs>),
}

#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// The server's base URL (with or without `/v1`).
    #[arg(long, visible_alias = "base-url", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The prompts' source; `random` (the default) is the one built in, since no data set can be
    /// assumed present. Accepted so that vLLM's command lines run unchanged.
    #[arg(long, default_value = "random")]
    dataset_name: String,
    /// Accepted for vLLM's command lines: every request here ignores EOS anyway, so that each
    /// output has the asked length.
    #[arg(long)]
    ignore_eos: bool,
    /// Model name to request; default: the first model the server lists.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Prompt length in tokens after the prefix (sent as token ids, so exact).
    #[arg(long, visible_alias = "random-input-len", default_value_t = 1024)]
    input_len: usize,
    /// Output length in tokens (`max_tokens` with `ignore_eos`).
    #[arg(long, visible_alias = "random-output-len", default_value_t = 128)]
    output_len: u32,
    /// Lengths vary: each prompt's and output's length is drawn uniformly from
    /// [floor(L (1 - R)), ceil(L (1 + R))] around --input-len and --output-len (0: fixed; below 1).
    #[arg(long, visible_alias = "random-range-ratio", default_value_t = 0.0)]
    range_ratio: f64,
    /// Every prompt starts with the same random prefix of this many tokens (for prefix caching);
    /// the test request sent before the run caches it.
    #[arg(long, visible_alias = "random-prefix-len", default_value_t = 0)]
    prefix_len: usize,
    /// Mean requests per second; `inf` sends all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    /// Gamma shape of the gaps between requests: 1 is Poisson, below 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Requests in flight at most.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Seed of the prompts and arrival times. The same seed sends the same prompts: a second run
    /// against the same server then finds them in its prefix cache, so give each run on one
    /// server its own seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompt ids are drawn below this; 256 is inside every model's vocabulary. With --prefix-len
    /// and more prompts than this, raise it (below the model's vocabulary): prompts whose indices
    /// agree modulo it may share the cache block where the prefix ends.
    #[arg(long, default_value_t = 256)]
    vocab_size: u32,
    /// A service-level objective for goodput, `ttft:MS`, `tpot:MS` or `e2el:MS`; may repeat.
    #[arg(long = "goodput", value_name = "METRIC:MS")]
    goodput: Vec<String>,
    /// Percentiles to report beside the mean, median and p99 of every latency, comma-separated
    /// (e.g. `50,90,99.9`; JSON keys `p90_ttft_ms`, as vLLM's).
    #[arg(long, value_name = "P,P,...")]
    metric_percentiles: Option<String>,
    /// The metrics whose --metric-percentiles are reported, comma-separated among ttft, tpot,
    /// itl and e2el (default: all four); mean, median and p99 are reported for every metric.
    #[arg(long, value_name = "METRIC,...", default_value = "ttft,tpot,itl,e2el")]
    percentile_metrics: String,
    /// Also write the result as JSON (vLLM's keys) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    #[arg(long, default_value_t = 32)]
    input_len: usize,
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    #[arg(long, default_value_t = 3)]
    num_iters: usize,
    #[arg(long, default_value_t = 1)]
    num_iters_warmup: usize,
    /// Memory bandwidth per device in GB/s; measured (CPU, or GPU 0 with `cuda`) when omitted.
    #[arg(long)]
    bandwidth_gbps: Option<f64>,
    /// Dense matrix rate per device in TFLOP/s at the compute dtype; measured when omitted.
    #[arg(long)]
    tflops: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(command: BenchCommand, config_file: Option<&Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match command {
        BenchCommand::Serve(args) => runtime.block_on(bench_serve(*args)),
        BenchCommand::Latency(args) => {
            let config = crate::settings::load(config_file, &args.model.overrides())?;
            let opts = latency::Options {
                batch_size: args.batch_size,
                input_len: args.input_len,
                output_len: args.output_len,
                num_iters: args.num_iters.max(1),
                num_iters_warmup: args.num_iters_warmup,
                bandwidth_gbps: args.bandwidth_gbps,
                matrix_tflops: args.tflops,
                seed: args.seed,
            };
            let report = runtime.block_on(latency::run(config, opts))?;
            latency::print(&report);
            write_json(args.json.as_deref(), &serde_json::to_value(&report)?)
        }
    }
}

fn write_json(path: Option<&Path>, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn parse_slos(specs: &[String]) -> anyhow::Result<metrics::Slos> {
    let mut slos = metrics::Slos::default();
    for spec in specs {
        let (name, ms) =
            spec.split_once(':').ok_or_else(|| anyhow!("--goodput {spec}: expected METRIC:MS"))?;
        let ms: f64 = ms.parse().map_err(|_| anyhow!("--goodput {spec}: `{ms}` is not a number of ms"))?;
        let slot = match name {
            "ttft" => &mut slos.ttft_ms,
            "tpot" => &mut slos.tpot_ms,
            "e2el" => &mut slos.e2el_ms,
            _ => bail!("--goodput {spec}: the metric is one of ttft, tpot, e2el"),
        };
        *slot = Some(ms);
    }
    Ok(slos)
}

/// `--percentile-metrics`: names among ttft, tpot, itl and e2el, comma-separated.
fn parse_percentile_metrics(spec: &str) -> anyhow::Result<Vec<String>> {
    spec.split(',')
        .map(|name| match name.trim() {
            n @ ("ttft" | "tpot" | "itl" | "e2el") => Ok(n.to_string()),
            other => bail!("--percentile-metrics {spec}: `{other}` is not one of ttft, tpot, itl, e2el"),
        })
        .collect()
}

/// `--metric-percentiles`: numbers in [0, 100], comma-separated.
fn parse_percentiles(spec: Option<&str>) -> anyhow::Result<Vec<f64>> {
    let Some(spec) = spec else { return Ok(Vec::new()) };
    spec.split(',')
        .map(|p| match p.trim().parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
            _ => bail!("--metric-percentiles {spec}: `{p}` is not a number between 0 and 100"),
        })
        .collect()
}

async fn bench_serve(args: ServeBenchArgs) -> anyhow::Result<()> {
    let slos = parse_slos(&args.goodput)?;
    let percentiles = parse_percentiles(args.metric_percentiles.as_deref())?;
    let percentile_metrics = parse_percentile_metrics(&args.percentile_metrics)?;
    if args.dataset_name != "random" {
        bail!("--dataset-name {}: only `random` is built in (vLLM's random dataset)", args.dataset_name);
    }
    if args.num_prompts == 0 || args.output_len == 0 || args.vocab_size == 0 {
        bail!("--num-prompts, --output-len and --vocab-size must be positive");
    }
    if args.request_rate <= 0.0 || args.burstiness <= 0.0 || args.max_concurrency == Some(0) {
        bail!("--request-rate, --burstiness and --max-concurrency must be positive");
    }
    let spec = dataset::RandomSpec {
        num_prompts: args.num_prompts,
        input_len: args.input_len,
        output_len: args.output_len,
        range_ratio: args.range_ratio,
        prefix_len: args.prefix_len,
        vocab_size: args.vocab_size,
        seed: args.seed,
    };
    spec.validate().map_err(|e| anyhow!(e))?;
    let mut builder = Client::builder(&args.url);
    if let Some(key) = &args.api_key {
        builder = builder.api_key(key);
    }
    let client = builder.build()?;
    let model = match args.model.clone() {
        Some(model) => model,
        None => {
            let list = client.models().await.with_context(|| format!("listing models at {}", args.url))?;
            list.data.first().map(|m| m.id.clone()).ok_or_else(|| anyhow!("{} serves no model", args.url))?
        }
    };
    let (requests, probe_request) = spec.generate();
    // One request before the clock starts: it fails fast on a wrong URL, model or length, and
    // warms the server's connection pool, as vLLM's initial test run does. Its prompt shares only
    // the prefix with the workload's, so it leaves no prefix-cache hit behind beyond that.
    let probe_len = probe_request.prompt.len();
    let probe = serve::send_one(
        &client,
        serve::request(&model, probe_request.prompt, probe_request.output_len),
        probe_len,
    )
    .await;
    if let Some(err) = probe.error {
        bail!("the initial test request failed: {err}");
    }
    eprintln!("initial test request done; starting {} requests", args.num_prompts);
    let send_at_s = arrivals::schedule(args.num_prompts, args.request_rate, args.burstiness, args.seed);
    let workload =
        serve::Workload { model: model.clone(), requests, send_at_s, max_concurrency: args.max_concurrency };
    let (records, duration_s) = serve::run(&client, workload).await;
    if let Some(err) = records.iter().find_map(|r| r.error.as_deref()) {
        eprintln!("some requests failed; the first error: {err}");
    }
    let metrics = metrics::compute(&records, duration_s, &slos, &percentiles);
    let info = report::RunInfo {
        base_url: args.url.clone(),
        model,
        num_prompts: args.num_prompts,
        input_len: args.input_len,
        output_len: args.output_len,
        range_ratio: args.range_ratio,
        prefix_len: args.prefix_len,
        request_rate: args.request_rate.is_finite().then_some(args.request_rate),
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency,
        seed: args.seed,
        percentile_metrics,
    };
    print!("{}", report::table(&info, &metrics));
    write_json(args.json.as_deref(), &report::json(&info, &metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodput_flags_parse_and_reject_unknown_metrics() {
        let slos = parse_slos(&["ttft:100".into(), "e2el:2500.5".into()]).unwrap();
        assert_eq!(slos, metrics::Slos { ttft_ms: Some(100.0), tpot_ms: None, e2el_ms: Some(2500.5) });
        assert!(parse_slos(&["itl:5".into()]).is_err());
        assert!(parse_slos(&["ttft=5".into()]).is_err());
        assert!(parse_slos(&["tpot:fast".into()]).is_err());
    }

    /// vLLM's `bench serve` flags for the same workload parse into the same settings.
    #[test]
    fn vllm_command_lines_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServeBenchArgs,
        }
        let vllm = Cli::try_parse_from([
            "bench",
            "--base-url",
            "http://h:1",
            "--dataset-name",
            "random",
            "--random-input-len",
            "512",
            "--random-output-len",
            "64",
            "--random-range-ratio",
            "0.1",
            "--random-prefix-len",
            "128",
            "--ignore-eos",
            "--metric-percentiles",
            "90,99",
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
        ])
        .unwrap()
        .args;
        let ours = Cli::try_parse_from([
            "bench",
            "--url",
            "http://h:1",
            "--input-len",
            "512",
            "--output-len",
            "64",
            "--range-ratio",
            "0.1",
            "--prefix-len",
            "128",
            "--metric-percentiles",
            "90,99",
        ])
        .unwrap()
        .args;
        assert_eq!(format!("{:?}", ServeBenchArgs { ignore_eos: false, ..vllm }), format!("{ours:?}"));
    }

    #[test]
    fn percentile_metric_names_parse_and_reject_unknown_ones() {
        assert_eq!(parse_percentile_metrics("ttft, e2el").unwrap(), ["ttft", "e2el"]);
        for bad in ["ttft,latency", "", "TTFT"] {
            let err = parse_percentile_metrics(bad).unwrap_err().to_string();
            assert!(err.contains("--percentile-metrics"), "{bad}: {err}");
        }
    }

    #[test]
    fn percentile_flags_parse_and_reject_out_of_range() {
        assert_eq!(parse_percentiles(None).unwrap(), Vec::<f64>::new());
        assert_eq!(parse_percentiles(Some("50, 90,99.9")).unwrap(), vec![50.0, 90.0, 99.9]);
        for bad in ["101", "-1", "p90", "90,", "nan"] {
            let err = parse_percentiles(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("--metric-percentiles"), "{bad}: {err}");
        }
    }
}
