//! Decode speed against the memory-bandwidth roofline, on one GPU or a tensor-parallel group.
//!
//! Loads a dummy-weight model of a named shape (default Llama 3 8B) in bf16, fills the KV cache of
//! every sequence by a real prefill of `context - 1` tokens, then times decode steps (one new token
//! per sequence, the full forward including batch upload and logits) at each batch size, and
//! measures the device-to-device copy bandwidth in the same run.
//!
//! With `--tp N` the model is split over N ranks, threads of this process with rank r on GPU r,
//! joined by NCCL exactly as the engine joins them; rank 0 reports. The step's collectives are
//! timed on their own too: the all-reduce of one `[batch, hidden]` activation (two per layer, one
//! more for a vocab-parallel embedding) and the gather of `[batch, vocab / N]` logits.
//!
//! Roofline: a decode step must read every weight it uses once and each sequence's K/V once. The
//! input embedding table is excluded (a step reads only `batch` of its rows); the lm_head is
//! included. Per GPU that is (weights / N + KV / N) over the copy bandwidth (read + written bytes
//! per second), plus the measured collective time of one step.
//!
//! With `--graphs` every batch size is also captured as a CUDA graph (as the engine does for
//! decode) and timed replaying it: the metadata upload plus one graph launch instead of the
//! eager forward's launches. Each row says its `mode` (eager or graph); the graph rows also give
//! how many sequences' greedy tokens differ from the eager step's (cuBLAS may pick other GEMM
//! kernels for a padded batch, so rounding may differ, rarely the token).
//! `--max-model-len N` (default context + 16) is the model's limit, which a graph's attention grid
//! must have room for; a large N shows whether replays of short contexts pay for it.
//!
//! Prints a markdown table and, per measurement, one `BENCH key=value ...` line for scripts.
//! Usage: decode_bench [--shape NAME] [--tp N] [--batches 1,64] [--context 1024] [--iters 30]
//!        [--graphs] [--max-model-len N]
//!
//! With `DECODE_BENCH_PROFILE=1` the last prefill step and one eager decode step per batch size
//! run between `cuProfilerStart` and `cuProfilerStop`, so that
//! `ncu --profile-from-start off --metrics gpu__time_duration.sum` times those steps' kernels alone.

use std::time::{Duration, Instant};
use tessera_cuda::{AbortSignal, CommConfig, CudaBackend, DecodeGraphs, NcclId};
use tessera_model::shapes::dummy_spec;
use tessera_model::weights::DummySource;
use tessera_model::{Backend, DType, Model, ModelInput, ModelSpec, SeqChunk};

const BLOCK_SIZE: usize = 16;
/// Collectives timed back to back, per size.
const COLLECTIVE_ITERS: usize = 50;
/// Generous: one wait may span a whole 70B prefill step.
const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(300);

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    shape: String,
    tp: usize,
    batches: Vec<usize>,
    context: usize,
    iters: usize,
    graphs: bool,
    /// The model's context limit: it bounds a graph's attention grid (default context + 16).
    max_model_len: Option<usize>,
}

fn arg(args: &[String], flag: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.into())
}

fn parse_args() -> Result<Args, Error> {
    let args: Vec<String> = std::env::args().collect();
    let batches: Vec<usize> =
        arg(&args, "--batches", "1,64").split(',').map(|b| b.parse()).collect::<Result<_, _>>()?;
    if batches.is_empty() {
        return Err("no batch sizes".into());
    }
    Ok(Args {
        shape: arg(&args, "--shape", "llama-3-8b"),
        tp: arg(&args, "--tp", "1").parse()?,
        batches,
        context: arg(&args, "--context", "1024").parse()?,
        iters: arg(&args, "--iters", "30").parse()?,
        graphs: args.iter().any(|a| a == "--graphs"),
        max_model_len: args
            .iter()
            .any(|a| a == "--max-model-len")
            .then(|| arg(&args, "--max-model-len", ""))
            .map(|v| v.parse())
            .transpose()?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One batch size's figures in one mode, as rank 0 measured them.
struct Row {
    mode: &'static str,
    batch: usize,
    wall_ms: f64,
    device_ms: f64,
    all_reduce_us: f64,
    gather_us: f64,
    /// Graph rows: sequences whose greedy token differs from the eager step's.
    argmax_mismatches: Option<usize>,
}

/// What the whole run measured (rank 0's view).
struct Report {
    device: String,
    load_s: f64,
    prefill_s: f64,
    bandwidth: f64,
    /// Capture time (ms) and graph pool (bytes) with `--graphs`.
    capture: Option<(f64, usize)>,
    rows: Vec<Row>,
}

/// Median wall and device milliseconds of `iters` runs of `step` after 3 warm-up runs.
fn time_steps(
    b: &CudaBackend,
    iters: usize,
    mut step: impl FnMut() -> tessera_model::Result<()>,
) -> Result<(f64, f64), Error> {
    let (mut wall, mut device) = (Vec::new(), Vec::new());
    for i in 0..iters + 3 {
        b.synchronize()?;
        let t = Instant::now();
        let ms = b.time_ms(&mut step)?;
        if i >= 3 {
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            device.push(ms);
        }
    }
    Ok((median(wall), median(device)))
}

/// Device time of one collective, from `COLLECTIVE_ITERS` back to back.
fn collective_us(b: &CudaBackend, mut op: impl FnMut() -> tessera_model::Result<()>) -> Result<f64, Error> {
    op()?;
    let ms = b.time_ms(|| (0..COLLECTIVE_ITERS).try_for_each(|_| op()))?;
    Ok(ms * 1e3 / COLLECTIVE_ITERS as f64)
}

/// Everything one rank does; every rank runs the same steps, so their collectives pair up.
fn run_rank(b: &CudaBackend, spec: &ModelSpec, args: &Args) -> Result<Report, Error> {
    let (context, max_batch) = (args.context, *args.batches.iter().max().expect("batches"));
    let t = Instant::now();
    let max_model_len = args.max_model_len.unwrap_or(context + 16);
    if max_model_len <= context {
        return Err(format!("--max-model-len {max_model_len} must exceed the context {context}").into());
    }
    let model = Model::load(b, spec, &DummySource::new(0), DType::Bf16, b.tp_rank(), max_model_len)?;
    b.synchronize()?;
    let load_s = t.elapsed().as_secs_f64();

    let blocks_per_seq = context.div_ceil(BLOCK_SIZE);
    let mut cache = b.alloc_kv_cache(model.kv_cache_shape(max_batch * blocks_per_seq, BLOCK_SIZE))?;
    // Sequence s owns blocks s, s + max_batch, ...: interleaved, so paging is not contiguous.
    let tables: Vec<Vec<u32>> =
        (0..max_batch).map(|s| (0..blocks_per_seq).map(|j| (j * max_batch + s) as u32).collect()).collect();
    let tokens: Vec<Vec<u32>> = (0..max_batch)
        .map(|s| {
            (0..context as u32).map(|i| (i * 7919 + s as u32 * 104_729) % spec.vocab_size as u32).collect()
        })
        .collect();

    // Prefill context - 1 tokens of every sequence, 8 sequences a step.
    let t = Instant::now();
    let groups = max_batch.div_ceil(8);
    for (g, group) in (0..max_batch).collect::<Vec<_>>().chunks(8).enumerate() {
        let chunks: Vec<SeqChunk> = group
            .iter()
            .map(|&s| SeqChunk {
                new_tokens: &tokens[s][..context - 1],
                num_computed_tokens: 0,
                block_table: &tables[s],
                wants_logits: true,
            })
            .collect();
        let batch = b.prepare(&ModelInput::build(BLOCK_SIZE, &chunks))?;
        profiled(b, g + 1 == groups, || model.forward(b, &batch, &mut cache).map(drop))?;
    }
    b.synchronize()?;
    let prefill_s = t.elapsed().as_secs_f64();
    let bandwidth = b.copy_bandwidth(1 << 30, 20)?;
    let mut graphs = None;
    if args.graphs {
        let mut sizes = args.batches.clone();
        sizes.sort_unstable();
        sizes.dedup();
        graphs = Some(DecodeGraphs::capture(b, &model, &mut cache, &sizes)?);
    }
    let capture = graphs.as_ref().map(|g| (g.report().capture_ms, g.report().graph_pool_bytes));
    // What GEMM tuning (done during the capture's eager runs) measured and chose.
    for t in b.gemm_tunings() {
        let (best, best_us) = t.best_lt.map_or(("-".into(), f64::NAN), |(i, us)| (i.to_string(), us));
        println!(
            "GEMM_TUNE m={} n={} k={} default_us={:.2} best_lt={best} best_lt_us={best_us:.2} candidates={} chosen={}",
            t.m, t.n, t.k, t.default_us, t.candidates, t.chosen
        );
    }

    let world = b.tp_rank().world;
    let mut rows = Vec::new();
    for &batch_size in &args.batches {
        let chunks: Vec<SeqChunk> = (0..batch_size)
            .map(|s| SeqChunk {
                new_tokens: &tokens[s][context - 1..],
                num_computed_tokens: context - 1,
                block_table: &tables[s],
                wants_logits: true,
            })
            .collect();
        let input = ModelInput::build(BLOCK_SIZE, &chunks);
        let mut eager_step = || model.forward(b, &b.prepare(&input)?, &mut cache);
        let (wall_ms, device_ms) = time_steps(b, args.iters, || eager_step().map(drop))?;
        // Outside the timing: a step's figures are the forward's alone, as before graphs.
        let eager_tokens = b.argmax_rows(&eager_step()?, batch_size)?;
        profiled(b, true, || eager_step().map(drop))?;
        let (mut all_reduce_us, mut gather_us) = (0.0, 0.0);
        if world > 1 {
            let ones = vec![1.0; batch_size * spec.hidden_size];
            let mut x = b.tensor_from_host(batch_size, spec.hidden_size, &ones)?;
            all_reduce_us = collective_us(b, || b.all_reduce(&mut x))?;
            let shard = spec.vocab_size / world;
            let logits = b.tensor_from_host(batch_size, shard, &vec![0.5; batch_size * shard])?;
            gather_us = collective_us(b, || b.all_gather_cols(&logits).map(drop))?;
        }
        rows.push(Row {
            mode: "eager",
            batch: batch_size,
            wall_ms,
            device_ms,
            all_reduce_us,
            gather_us,
            argmax_mismatches: None,
        });
        if let Some(graphs) = graphs.as_mut() {
            let (wall_ms, device_ms) = time_steps(b, args.iters, || {
                graphs.replay(b, &input)?.expect("every benchmarked batch size is captured");
                Ok(())
            })?;
            let tokens = b.argmax_rows(graphs.logits(), batch_size)?;
            let argmax_mismatches = Some(tokens.iter().zip(&eager_tokens).filter(|(g, e)| g != e).count());
            rows.push(Row {
                mode: "graph",
                batch: batch_size,
                wall_ms,
                device_ms,
                all_reduce_us,
                gather_us,
                argmax_mismatches,
            });
        }
    }
    Ok(Report { device: b.device_name(), load_s, prefill_s, bandwidth, capture, rows })
}

/// Runs `f` between `cuProfilerStart` and `cuProfilerStop` when `DECODE_BENCH_PROFILE=1` and
/// `wanted`, synchronizing on both sides so that only `f`'s kernels fall inside.
fn profiled(
    b: &CudaBackend,
    wanted: bool,
    f: impl FnOnce() -> tessera_model::Result<()>,
) -> Result<(), Error> {
    let on = wanted && std::env::var("DECODE_BENCH_PROFILE").is_ok_and(|v| v == "1");
    if on {
        b.synchronize()?;
        // SAFETY: plain driver calls on the context this thread already uses.
        profiler_status("cuProfilerStart", unsafe { cudarc::driver::sys::cuProfilerStart() });
    }
    f()?;
    if on {
        b.synchronize()?;
        profiler_status("cuProfilerStop", unsafe { cudarc::driver::sys::cuProfilerStop() });
    }
    Ok(())
}

/// Profiling is best effort: a failed call is reported, not fatal.
fn profiler_status(call: &str, status: cudarc::driver::sys::CUresult) {
    if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        eprintln!("{call} failed: {status:?}");
    }
}

/// Runs every rank (threads, rank r on GPU r) and returns rank 0's report.
fn run_group(spec: &ModelSpec, args: &Args) -> Result<Report, Error> {
    if args.tp == 1 {
        return run_rank(&CudaBackend::new(0)?, spec, args);
    }
    let (id, signal) = (NcclId::new()?, AbortSignal::new());
    let mut reports: Vec<Result<Report, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.tp)
            .map(|rank| {
                let signal = signal.clone();
                s.spawn(move || {
                    let config = CommConfig::new(id, rank, args.tp, COLLECTIVE_TIMEOUT, signal.clone());
                    let result = CudaBackend::new_in_group(rank, &config)
                        .map_err(Error::from)
                        .and_then(|b| run_rank(&b, spec, args));
                    if let Err(err) = &result {
                        signal.abort(&format!("rank {rank}: {err}"));
                    }
                    result
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    });
    if let Some(reason) = signal.reason() {
        return Err(reason.into());
    }
    reports.swap_remove(0)
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let spec = dummy_spec(&args.shape)?;
    let tp = args.tp;
    if tp == 0 || spec.num_kv_heads % tp != 0 || spec.num_heads % tp != 0 {
        return Err(format!(
            "--tp {tp} must divide the heads ({}) and KV heads ({})",
            spec.num_heads, spec.num_kv_heads
        )
        .into());
    }
    let report = run_group(&spec, &args)?;
    let context = args.context;
    let max_batch = *args.batches.iter().max().expect("batches");
    println!(
        "{} at TP={tp} on {}: {:.2e} parameters loaded in {:.1} s",
        args.shape,
        report.device,
        spec.num_params() as f64,
        report.load_s
    );
    println!(
        "prefill: {max_batch} x {} tokens in {:.2} s ({:.0} tokens/s)",
        context - 1,
        report.prefill_s,
        (max_batch * (context - 1)) as f64 / report.prefill_s
    );
    println!("device-to-device copy: {:.0} GB/s (read + write)", report.bandwidth / 1e9);
    if let Some((capture_ms, pool)) = report.capture {
        println!(
            "CUDA graphs: {} sizes captured in {capture_ms:.0} ms, graph pool {:.1} MiB",
            args.batches.len(),
            pool as f64 / (1 << 20) as f64
        );
    }

    let weight_bytes =
        (spec.num_params() - spec.vocab_size * spec.hidden_size * usize::from(!spec.tie_word_embeddings)) * 2;
    // The model's rule: the embedding and lm_head are split over the ranks when the vocabulary
    // divides evenly; then the embedding costs one more all-reduce and the logits one gather.
    let vocab_parallel = tp > 1 && spec.vocab_size.is_multiple_of(tp);
    let num_all_reduces = if tp > 1 { 2 * spec.num_layers + usize::from(vocab_parallel) } else { 0 };
    println!(
        "| mode | TP | batch | context | step (wall) ms | step (device) ms | weights GB/GPU | KV GB/GPU | all-reduce us | \
         gather us | roofline ms | fraction of roofline | tokens/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut lines = Vec::new();
    for row in &report.rows {
        let b = row.batch;
        let kv_bytes = b * context * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * 2;
        let (weights_gpu, kv_gpu) = (weight_bytes as f64 / tp as f64, kv_bytes as f64 / tp as f64);
        let gather_us = if vocab_parallel { row.gather_us } else { 0.0 };
        let collectives_ms = (num_all_reduces as f64 * row.all_reduce_us + gather_us) / 1e3;
        let roofline_ms = (weights_gpu + kv_gpu) / report.bandwidth * 1e3 + collectives_ms;
        let fraction = roofline_ms / row.wall_ms;
        let tokens_per_s = b as f64 / row.wall_ms * 1e3;
        println!(
            "| {} | {tp} | {b} | {context} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {roofline_ms:.2} | {:.1}% | {:.0} |",
            row.mode,
            row.wall_ms,
            row.device_ms,
            weights_gpu / 1e9,
            kv_gpu / 1e9,
            row.all_reduce_us,
            gather_us,
            100.0 * fraction,
            tokens_per_s
        );
        lines.push(format!(
            "BENCH mode={} shape={} tp={tp} batch={b} context={context} wall_ms={:.3} device_ms={:.3} \
             weights_gb_per_gpu={:.3} kv_gb_per_gpu={:.3} copy_gbps={:.0} allreduce_us={:.2} allreduces={num_all_reduces} \
             gather_us={:.2} roofline_ms={roofline_ms:.3} fraction={fraction:.4} tokens_per_s={tokens_per_s:.1}{}",
            row.mode,
            args.shape,
            row.wall_ms,
            row.device_ms,
            weights_gpu / 1e9,
            kv_gpu / 1e9,
            report.bandwidth / 1e9,
            row.all_reduce_us,
            gather_us,
            row.argmax_mismatches.map(|n| format!(" argmax_mismatches={n}")).unwrap_or_default(),
        ));
    }
    lines.iter().for_each(|line| println!("{line}"));
    // Graph over eager, per batch size: the figure the CUDA-graph work is judged by.
    for graph in report.rows.iter().filter(|r| r.mode == "graph") {
        if let Some(eager) = report.rows.iter().find(|r| r.mode == "eager" && r.batch == graph.batch) {
            println!(
                "BENCH_RATIO batch={} eager_ms={:.3} graph_ms={:.3} speedup={:.3}",
                graph.batch,
                eager.wall_ms,
                graph.wall_ms,
                eager.wall_ms / graph.wall_ms
            );
        }
    }
    Ok(())
}
