//! `tessera bench latency`: one batch through an in-process `Engine`, timed from the outside as a
//! caller sees it. Prefill time is submit -> the last sequence's first token (every prompt has
//! been computed); a decode step is the mean gap from then to the last sequence's last token.
//! Both are set against the roofline of the model on the device.

use super::roofline::{self, Bounds, Hardware, StepCost};
use anyhow::{bail, Context};
use serde::Serialize;
use std::time::Instant;
use tessera_core::config::{Device, WeightDtype};
use tessera_core::{EngineConfig, SamplingParams};
use tessera_engine::{Engine, GenerateRequest, Prompt, TokenEvent};

pub struct Options {
    pub batch_size: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub num_iters: usize,
    pub num_iters_warmup: usize,
    pub bandwidth_gbps: Option<f64>,
    pub matrix_tflops: Option<f64>,
    pub seed: u64,
}

/// Times of one batch, in seconds.
#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    prefill_s: f64,
    decode_step_s: f64,
    total_s: f64,
}

#[derive(Serialize)]
pub struct Report {
    model: String,
    device: String,
    tensor_parallel_size: usize,
    batch_size: usize,
    input_len: usize,
    output_len: usize,
    num_iters: usize,
    median_prefill_ms: f64,
    median_decode_step_ms: f64,
    median_total_ms: f64,
    decode_tokens_per_s: f64,
    hardware: Option<Hardware>,
    cost: StepCost,
    roofline_prefill_ms: Option<f64>,
    roofline_decode_step_ms: Option<f64>,
    /// Roofline time over measured time: 1.0 would be the hardware's limit.
    prefill_fraction: Option<f64>,
    decode_fraction: Option<f64>,
    samples: Vec<SampleMs>,
}

#[derive(Serialize)]
struct SampleMs {
    prefill_ms: f64,
    decode_step_ms: f64,
    total_ms: f64,
}

pub async fn run(mut config: EngineConfig, opts: Options) -> anyhow::Result<Report> {
    if opts.batch_size == 0 || opts.input_len == 0 || opts.output_len < 2 {
        bail!(
            "need --batch-size >= 1, --input-len >= 1 and --output-len >= 2 (a decode step needs two tokens)"
        );
    }
    if config.scheduler.max_num_seqs < opts.batch_size {
        eprintln!(
            "warning: scheduler.max_num_seqs = {} < batch size {}: the batch will not run as one",
            config.scheduler.max_num_seqs, opts.batch_size
        );
    }
    // Every iteration sends the same prompts: with prefix caching on, all but the first would
    // find their prompt cached and time a one-token prefill (seen on an H100: 11.5 ms for 1024
    // tokens, below the compute roofline).
    config.cache.enable_prefix_caching = false;
    let hardware = hardware(&config, &opts)?;
    let engine = Engine::start(config.clone()).await.context("starting the engine")?;
    let spec = engine.spec().clone();
    let vocab = spec.vocab_size as u32;
    let prompts = super::dataset::random_prompts(opts.batch_size, opts.input_len, vocab, opts.seed);
    let mut samples = Vec::new();
    for i in 0..opts.num_iters_warmup + opts.num_iters {
        let sample = one_batch(&engine, &prompts, opts.output_len).await?;
        if i >= opts.num_iters_warmup {
            samples.push(sample);
        }
    }
    crate::serve::shutdown_engine(&engine).await?;

    let (weight_bytes, kv_bytes) = elem_bytes(&config, &spec);
    let cost =
        roofline::step_cost(&spec, opts.batch_size, opts.input_len, opts.output_len, weight_bytes, kv_bytes);
    let bounds: Option<Bounds> = hardware.map(|hw| roofline::bounds(&cost, &hw));
    let median =
        |f: fn(&Sample) -> f64| super::metrics::percentile(&samples.iter().map(f).collect::<Vec<_>>(), 50.0);
    let (prefill_s, step_s, total_s) =
        (median(|s| s.prefill_s), median(|s| s.decode_step_s), median(|s| s.total_s));
    Ok(Report {
        model: engine.model_name().to_string(),
        device: format!("{:?}", config.device).to_lowercase(),
        tensor_parallel_size: config.parallel.tensor_parallel_size,
        batch_size: opts.batch_size,
        input_len: opts.input_len,
        output_len: opts.output_len,
        num_iters: opts.num_iters,
        median_prefill_ms: prefill_s * 1e3,
        median_decode_step_ms: step_s * 1e3,
        median_total_ms: total_s * 1e3,
        decode_tokens_per_s: opts.batch_size as f64 / step_s,
        hardware,
        cost,
        roofline_prefill_ms: bounds.map(|b| b.prefill_s * 1e3),
        roofline_decode_step_ms: bounds.map(|b| b.decode_step_s * 1e3),
        prefill_fraction: bounds.map(|b| b.prefill_s / prefill_s),
        decode_fraction: bounds.map(|b| b.decode_step_s / step_s),
        samples: samples
            .iter()
            .map(|s| SampleMs {
                prefill_ms: s.prefill_s * 1e3,
                decode_step_ms: s.decode_step_s * 1e3,
                total_ms: s.total_s * 1e3,
            })
            .collect(),
    })
}

/// Bytes per weight and per KV element as the device holds them: the CPU backend converts
/// everything to f32; on a GPU weights keep their dtype (bf16 for dummy weights) and the KV
/// cache is bf16.
fn elem_bytes(config: &EngineConfig, spec: &tessera_model::ModelSpec) -> (usize, usize) {
    match config.device {
        Device::Cpu => (4, 4),
        Device::Cuda => {
            let weights = match config.model.dtype {
                WeightDtype::F32 => 4,
                WeightDtype::Bf16 | WeightDtype::F16 => 2,
                WeightDtype::Auto => spec.dtype.map_or(2, |d| d.size_bytes()),
            };
            (weights, 2)
        }
    }
}

/// The device's limits: given by flags, else measured here (on the CPU, or on GPU 0 in a build
/// with the `cuda` feature).
fn hardware(config: &EngineConfig, opts: &Options) -> anyhow::Result<Option<Hardware>> {
    let tp = config.parallel.tensor_parallel_size;
    let (bw, tflops) = match (config.device, opts.bandwidth_gbps, opts.matrix_tflops) {
        (_, Some(bw), Some(tf)) => (bw, tf),
        (Device::Cpu, bw, tf) => {
            let bw = bw.unwrap_or_else(super::probe::memory_bandwidth_gbps);
            let tf = tf.unwrap_or_else(super::probe::matrix_tflops);
            eprintln!("CPU: {bw:.1} GB/s copy bandwidth, {:.1} GFLOP/s f32 GEMM", tf * 1e3);
            (bw, tf)
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda, bw, tf) => {
            let (measured_bw, measured_tf) = super::gpu_probe::measure()?;
            eprintln!(
                "GPU 0: {measured_bw:.0} GB/s copy bandwidth, {measured_tf:.0} TFLOP/s bf16 GEMM (measured)"
            );
            (bw.unwrap_or(measured_bw), tf.unwrap_or(measured_tf))
        }
        #[cfg(not(feature = "cuda"))]
        (Device::Cuda, _, _) => {
            eprintln!(
                "no roofline: pass --bandwidth-gbps and --tflops for the GPU (e.g. H100 SXM: 3350, 989)"
            );
            return Ok(None);
        }
    };
    // On the CPU all ranks share one memory system and one set of cores.
    let tp = if config.device == Device::Cpu { 1 } else { tp };
    Ok(Some(Hardware { bandwidth_gbps: bw, matrix_tflops: tflops, tp }))
}

async fn one_batch(engine: &Engine, prompts: &[Vec<u32>], output_len: usize) -> anyhow::Result<Sample> {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: output_len as u32,
        ignore_eos: true,
        ..Default::default()
    };
    let start = Instant::now();
    // Submitted together so the scheduler sees the whole batch before its first step.
    let submits = prompts
        .iter()
        .map(|p| engine.generate(GenerateRequest::new(Prompt::Tokens(p.clone()), params.clone())));
    let streams = futures_util::future::try_join_all(submits).await?;
    let readers = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut times = Vec::with_capacity(output_len);
            while let Some(event) = stream.next().await {
                match event {
                    TokenEvent::Token(_) => times.push(start.elapsed().as_secs_f64()),
                    TokenEvent::Finished(_) => break,
                    TokenEvent::Error(err) => return Err(anyhow::anyhow!("generation failed: {err}")),
                }
            }
            Ok(times)
        })
    });
    let mut first_all: f64 = 0.0;
    let mut last_all: f64 = 0.0;
    for reader in futures_util::future::join_all(readers).await {
        let times = reader??;
        if times.len() != output_len {
            bail!("a sequence produced {} tokens, expected {output_len}", times.len());
        }
        first_all = first_all.max(times[0]);
        last_all = last_all.max(times[output_len - 1]);
    }
    Ok(Sample {
        prefill_s: first_all,
        decode_step_s: (last_all - first_all) / (output_len - 1) as f64,
        total_s: last_all,
    })
}

pub fn print(report: &Report) {
    let pct = |f: Option<f64>| f.map_or("n/a".into(), |f| format!("{:.1}%", f * 100.0));
    let ms = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3} ms"));
    println!("{:=^60}", " Latency Benchmark Result ");
    println!(
        "model {} on {} (TP {}), batch {}, {} in / {} out, {} iterations",
        report.model,
        report.device,
        report.tensor_parallel_size,
        report.batch_size,
        report.input_len,
        report.output_len,
        report.num_iters
    );
    println!("{:<28}{:>16}{:>16}", "", "prefill", "decode step");
    println!(
        "{:<28}{:>16}{:>16}",
        "measured (median)",
        format!("{:.3} ms", report.median_prefill_ms),
        format!("{:.3} ms", report.median_decode_step_ms)
    );
    println!(
        "{:<28}{:>16}{:>16}",
        "roofline",
        ms(report.roofline_prefill_ms),
        ms(report.roofline_decode_step_ms)
    );
    println!(
        "{:<28}{:>16}{:>16}",
        "achieved fraction",
        pct(report.prefill_fraction),
        pct(report.decode_fraction)
    );
    println!(
        "decode throughput: {:.1} tokens/s; weights read per step {:.2} MB, KV read per step {:.2} MB, \
         prefill {:.3} GFLOP",
        report.decode_tokens_per_s,
        report.cost.decode_weight_bytes / 1e6,
        report.cost.kv_bytes_per_decode_step / 1e6,
        report.cost.prefill_flops / 1e9
    );
}
