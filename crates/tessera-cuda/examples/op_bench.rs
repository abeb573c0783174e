//! Device time of a decode step's operations, one at a time, against the memory roofline: every
//! linear layer of Llama 3 8B and of one rank of Llama 3 70B at TP=2 (column-parallel layers
//! split n, row-parallel ones k), by the GEMV kernels and by cuBLAS at batch sizes 1 to 256
//! (past the GEMV's rows also by cuBLAS with the algorithm GEMM tuning chose, gemm_tune.rs);
//! `add_rms_norm` at 1 and 64 rows; `rope_write_kv` at 1 and 8,184 rows (vector and scalar
//! kernels, or only the one `TESSERA_ROPE` names); decode attention of the 8B layout at batch 1 and 64
//! (`Backend::attention` on decode rows: whichever kernel the backend picks for them, with
//! `TESSERA_DECODE_ATTENTION` honoured as in the engine); prefill attention of the 8B layout for
//! 8 prompts of 1023 tokens in TFLOP/s (causal FLOPs); `--prefill-only` runs just that row.
//! `--glu-only`: the 8B gate|up projection with its activation from 256 to 8,696 rows, as cuBLAS
//! (default and tuned) then silu_mul against the Hopper GEMM with the activation in its epilogue
//! (`gemm_glu`), in TFLOP/s of the gate|up product.
//!
//! Figures: the median over `--reps` timings of `CALLS` back-to-back calls, each timing enqueued
//! behind a long cuBLAS GEMM so that the GPU never waits for the host between calls (what a
//! captured decode graph sees). A weight smaller than the L2 cache is rotated over copies, and
//! attention over layers, so that each call reads memory as a real step (where other layers ran
//! in between) does. Bandwidth = bytes of the weight (or KV) / time, compared with the
//! device-to-device copy bandwidth (read + written bytes) measured in the same run. The GEMV
//! and cuBLAS outputs are compared too (relative difference, both round to bf16).
//!
//! Prints a markdown table, one `OPBENCH key=value ...` line per measurement, and
//! `OPBENCH_GEMV_MAX_M`: the largest batch at which the GEMV beat cuBLAS on every shape, the
//! value for `tessera_cuda::GEMV_MAX_M`.
//! Usage: op_bench [--reps 5] [--prefill-only | --glu-only]

use half::bf16;
use std::time::Instant;
use tessera_cuda::{CudaBackend, CudaKvCache, CudaTensor, LinearKernel, GEMV_KERNEL_MAX_M, GEMV_MAX_M};
use tessera_model::shapes::dummy_spec;
use tessera_model::{Backend, KvCacheShape, ModelInput, ModelSpec, QkvLayout, SeqChunk};

type Error = Box<dyn std::error::Error + Send + Sync>;

const BATCHES: [usize; 8] = [1, 2, 4, 8, 16, 64, 128, 256];
/// Calls per timing.
const CALLS: usize = 20;
/// Bytes a rotation of weight copies (or KV layers) spans: several times the 50 MB L2 of an
/// H100 or H200, so a call finds little of its data cached.
const ROTATION_BYTES: usize = 256 << 20;
const BLOCK_SIZE: usize = 16;
const CONTEXT: usize = 1024;

/// One linear layer: out[m, n] = x[m, k] @ w[n, k]^T.
struct Linear {
    model: &'static str,
    name: &'static str,
    n: usize,
    k: usize,
}

/// The linear layers of one rank of `spec` split over `tp` ranks, as the model shards them:
/// q|k|v, gate|up and lm_head split their outputs, o_proj and down_proj their inputs.
fn linears(model: &'static str, spec: &ModelSpec, tp: usize) -> Vec<Linear> {
    let (h, inter) = (spec.hidden_size, spec.intermediate_size);
    let (q, kv) = (spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim);
    let layer = |name, n, k| Linear { model, name, n, k };
    vec![
        layer("qkv", (q + 2 * kv) / tp, h),
        layer("o_proj", h, q / tp),
        layer("gate_up", 2 * inter / tp, h),
        layer("down", h, inter / tp),
        layer("lm_head", spec.vocab_size / tp, h),
    ]
}

/// Values for every tensor of the run: a random pattern (its content does not matter to the
/// timings), repeated to the largest length needed.
fn host_values(len: usize) -> Vec<bf16> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let pattern: Vec<bf16> = (0..(1 << 20) + 7)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1)
        })
        .collect();
    pattern.iter().copied().cycle().take(len).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Device work that keeps the GPU busy while the host enqueues a timing's calls.
struct Busy {
    x: CudaTensor,
    w: CudaTensor,
}

impl Busy {
    fn new(b: &CudaBackend, values: &[bf16]) -> Result<Self, Error> {
        let (m, k) = (8192, 4096);
        Ok(Busy {
            x: b.tensor_from_bf16(m, k, &values[..m * k])?,
            w: b.tensor_from_bf16(k, k, &values[..k * k])?,
        })
    }

    /// About a millisecond of GEMMs on an H100.
    fn enqueue(&self, b: &CudaBackend) -> Result<(), Error> {
        for _ in 0..3 {
            b.linear_with(&self.x, &self.w, LinearKernel::Cublas)?;
        }
        Ok(())
    }
}

/// Median device time of one call of `op(i)` in microseconds.
fn time_us(
    b: &CudaBackend,
    busy: &Busy,
    reps: usize,
    mut op: impl FnMut(usize) -> tessera_model::Result<()>,
) -> Result<f64, Error> {
    op(0)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        busy.enqueue(b)?;
        let ms = b.time_ms(|| (0..CALLS).try_for_each(&mut op))?;
        times.push(ms * 1e3 / CALLS as f64);
    }
    Ok(median(times))
}

/// Largest relative difference between two outputs, relative to the largest magnitude of `want`.
fn relative_diff(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    if got.iter().all(|v| v.is_finite()) {
        (diff / scale) as f64
    } else {
        f64::INFINITY
    }
}

struct LinearRow {
    model: &'static str,
    name: &'static str,
    n: usize,
    k: usize,
    batch: usize,
    gemv_us: Option<f64>,
    cublas_us: f64,
    /// cuBLAS with the algorithm GEMM tuning chose (past the GEMV's rows, where `Auto` uses it).
    tuned_us: Option<f64>,
    rel_diff: Option<f64>,
}

fn bench_linear(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    layer: &Linear,
    reps: usize,
) -> Result<Vec<LinearRow>, Error> {
    let (n, k) = (layer.n, layer.k);
    let bytes = n * k * 2;
    let copies: Vec<CudaTensor> = (0..ROTATION_BYTES.div_ceil(bytes).max(1))
        .map(|_| b.tensor_from_bf16(n, k, &values[..n * k]))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for &m in &BATCHES {
        let x = b.tensor_from_bf16(m, k, &values[values.len() - m * k..])?;
        let (x, copies) = (&x, &copies);
        let run = |kernel| move |i: usize| b.linear_with(x, &copies[i % copies.len()], kernel).map(drop);
        let cublas_us = time_us(b, busy, reps, run(LinearKernel::Cublas))?;
        let tuned_us =
            (m > GEMV_MAX_M).then(|| time_us(b, busy, reps, run(LinearKernel::Tuned))).transpose()?;
        let (mut gemv_us, mut rel_diff) = (None, None);
        if m <= GEMV_KERNEL_MAX_M {
            gemv_us = Some(time_us(b, busy, reps, run(LinearKernel::Gemv))?);
            let gemv = b.to_host(&b.linear_with(x, &copies[0], LinearKernel::Gemv)?)?;
            let cublas = b.to_host(&b.linear_with(x, &copies[0], LinearKernel::Cublas)?)?;
            rel_diff = Some(relative_diff(&gemv, &cublas));
        }
        rows.push(LinearRow {
            model: layer.model,
            name: layer.name,
            n,
            k,
            batch: m,
            gemv_us,
            cublas_us,
            tuned_us,
            rel_diff,
        });
    }
    Ok(rows)
}

/// Microseconds of `add_rms_norm` over `rows` rows of `cols`.
fn bench_norm(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    rows: usize,
    cols: usize,
    reps: usize,
) -> Result<f64, Error> {
    let mut residual = b.tensor_from_bf16(rows, cols, &values[..rows * cols])?;
    let delta = b.tensor_from_bf16(rows, cols, &values[cols..cols + rows * cols])?;
    let weight = b.tensor_from_bf16(1, cols, &values[..cols])?;
    time_us(b, busy, reps, |_| b.add_rms_norm(&mut residual, &delta, &weight, 1e-5).map(drop))
}

/// Microseconds of `Backend::attention` for `batch` decode rows of context `CONTEXT`.
fn bench_attention(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    layout: QkvLayout,
    batch: usize,
    reps: usize,
) -> Result<f64, Error> {
    let (cache, tables, layers) = rotated_cache(b, layout, batch, CONTEXT)?;
    let chunks: Vec<SeqChunk> = tables
        .iter()
        .map(|table| SeqChunk {
            new_tokens: &[1],
            num_computed_tokens: CONTEXT - 1,
            block_table: table,
            wants_logits: true,
        })
        .collect();
    let input = ModelInput::build(BLOCK_SIZE, &chunks);
    let prepared = b.prepare(&input)?;
    let qkv = b.tensor_from_bf16(batch, layout.row_width(), &values[..batch * layout.row_width()])?;
    time_us(b, busy, reps, |i| b.attention(&cache, i % layers, &qkv, &prepared, layout).map(drop))
}

/// A KV cache for `seqs` sequences of `tokens` tokens, with as many layers as make
/// ROTATION_BYTES (so that rotating through them reads from memory, not L2), and each sequence's
/// block table: sequence s owns blocks s, s + seqs, ...: interleaved, as a busy cache would be.
fn rotated_cache(
    b: &CudaBackend,
    layout: QkvLayout,
    seqs: usize,
    tokens: usize,
) -> Result<(CudaKvCache, Vec<Vec<u32>>, usize), Error> {
    let blocks_per_seq = tokens.div_ceil(BLOCK_SIZE);
    let layer_bytes = seqs * tokens * layout.num_kv_heads * layout.head_dim * 2 * 2;
    let shape = KvCacheShape {
        num_layers: ROTATION_BYTES.div_ceil(layer_bytes).clamp(1, 64),
        num_blocks: seqs * blocks_per_seq,
        block_size: BLOCK_SIZE,
        num_kv_heads: layout.num_kv_heads,
        head_dim: layout.head_dim,
    };
    let cache = b.alloc_kv_cache(shape)?;
    let tables = (0..seqs).map(|s| (0..blocks_per_seq).map(|j| (j * seqs + s) as u32).collect()).collect();
    Ok((cache, tables, shape.num_layers))
}

/// Microseconds of `Backend::rope_write_kv` over `rows` rows of positions 0.. (one prompt, or
/// one decode row at position CONTEXT - 1), and the bytes it moves: the q and k heads read and
/// written, the v heads read, k and v written to the cache.
fn bench_rope_write_kv(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    layout: QkvLayout,
    rows: usize,
    reps: usize,
) -> Result<(f64, usize), Error> {
    let (d, positions) = (layout.head_dim, 8192);
    let inv: Vec<f32> = (0..d / 2).map(|i| 500000f32.powf(-2.0 * i as f32 / d as f32)).collect();
    let angles = (0..positions).flat_map(|p| inv.iter().map(move |f| p as f32 * f));
    let (cos, sin) = angles.map(|a| (a.cos(), a.sin())).unzip();
    let rope = b.upload_rope(cos, sin, d)?;
    let (mut cache, tables, layers) = rotated_cache(b, layout, 1, rows.max(CONTEXT))?;
    let tokens = vec![1u32; rows];
    let computed = if rows == 1 { CONTEXT - 1 } else { 0 };
    let chunk = SeqChunk {
        new_tokens: &tokens,
        num_computed_tokens: computed,
        block_table: &tables[0],
        wants_logits: true,
    };
    let prepared = b.prepare(&ModelInput::build(BLOCK_SIZE, &[chunk]))?;
    let mut qkv = b.tensor_from_bf16(rows, layout.row_width(), &values[..rows * layout.row_width()])?;
    let us = time_us(b, busy, reps, |i| {
        b.rope_write_kv(&mut qkv, &rope, &mut cache, i % layers, &prepared, layout)
    })?;
    let (q, kv) = (layout.num_heads * d, layout.num_kv_heads * d);
    Ok((us, rows * 2 * (2 * (q + kv) + kv + 2 * kv)))
}

/// Sequences and prompt length of the prefill attention row: a prefill step of 8 prompts of
/// 1023 tokens (the shape measured for issue 8).
const PREFILL_SEQS: usize = 8;
const PREFILL_LEN: usize = 1023;

/// Microseconds of `Backend::attention` for a prefill step of `PREFILL_SEQS` prompts of
/// `PREFILL_LEN` tokens (causal, K/V in the paged cache), and its FLOPs: 4 * head_dim per query
/// head and per visible key (Q K^T and P V, a multiply-add each).
fn bench_prefill_attention(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    layout: QkvLayout,
    reps: usize,
) -> Result<(f64, f64), Error> {
    let (cache, tables, layers) = rotated_cache(b, layout, PREFILL_SEQS, PREFILL_LEN)?;
    let tokens = vec![1u32; PREFILL_LEN];
    let chunks: Vec<SeqChunk> = tables
        .iter()
        .map(|table| SeqChunk {
            new_tokens: &tokens,
            num_computed_tokens: 0,
            block_table: table,
            wants_logits: true,
        })
        .collect();
    let input = ModelInput::build(BLOCK_SIZE, &chunks);
    let prepared = b.prepare(&input)?;
    let rows = PREFILL_SEQS * PREFILL_LEN;
    let qkv = b.tensor_from_bf16(rows, layout.row_width(), &values[..rows * layout.row_width()])?;
    let us = time_us(b, busy, reps, |i| b.attention(&cache, i % layers, &qkv, &prepared, layout).map(drop))?;
    // Row i of a prompt sees i + 1 keys.
    let visible_keys = PREFILL_SEQS * PREFILL_LEN * (PREFILL_LEN + 1) / 2;
    let flops = 4.0 * (layout.head_dim * layout.num_heads) as f64 * visible_keys as f64;
    Ok((us, flops))
}

/// The prefill attention row (table and OPBENCH line). Compile-time variants of the kernel are
/// compared by running this once per `TESSERA_KERNEL_DEFINES` value (`--prefill-only`).
fn prefill_attention_row(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    layout: QkvLayout,
    reps: usize,
) -> Result<Vec<String>, Error> {
    println!();
    println!("| op | shape | us | TFLOP/s |");
    println!("|---|---|---|---|");
    let (us, flops) = bench_prefill_attention(b, busy, values, layout, reps)?;
    let tflops = flops / (us * 1e-6) / 1e12;
    let (h, kv, d) = (layout.num_heads, layout.num_kv_heads, layout.head_dim);
    println!("| prefill attention {h}/{kv} x {d} | {PREFILL_SEQS} x {PREFILL_LEN} tokens, causal | {us:.1} | {tflops:.0} |");
    Ok(vec![format!(
        "OPBENCH op=prefill_attention heads={h} kv_heads={kv} head_dim={d} block={BLOCK_SIZE} \
         seqs={PREFILL_SEQS} prompt={PREFILL_LEN} us={us:.1} tflops={tflops:.1}"
    )])
}

/// Rows of the `--glu-only` table: decode batches, prefill chunks, and a full 8,192-token prompt
/// step with decode rows beside it.
const GLU_ROWS: [usize; 7] = [256, 512, 1024, 2048, 4096, 8192, 8696];

/// The gate|up rows (table and OPBENCH lines): split (cuBLAS default and tuned, then silu_mul)
/// against `gemm_glu`, and how far apart their outputs are.
fn glu_rows(
    b: &CudaBackend,
    busy: &Busy,
    values: &[bf16],
    spec: &ModelSpec,
    reps: usize,
) -> Result<(), Error> {
    let (k, n) = (spec.hidden_size, spec.intermediate_size);
    let w = b.tensor_from_bf16(2 * n, k, &values[..2 * n * k])?;
    println!();
    println!("| gate\\|up + silu | rows | cuBLAS + silu_mul us | tuned + silu_mul us | gemm_glu us | gemm_glu TFLOP/s | tuned / gemm_glu time | rel diff |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in GLU_ROWS {
        let x = b.tensor_from_bf16(m, k, &values[values.len() - m * k..])?;
        // The outputs compared first, in a fresh pool's order: the split result stays allocated
        // while gemm_glu's output is, so that buffer cannot be the split result's memory (a
        // kernel writing nothing would then compare equal).
        let want = b.silu_mul(&b.linear_with(&x, &w, LinearKernel::Cublas)?)?;
        let diff = relative_diff(&b.to_host(&b.gemm_glu(&x, &w)?)?, &b.to_host(&want)?);
        drop(want);
        let split = |kernel| {
            let (x, w) = (&x, &w);
            move |_: usize| b.silu_mul(&b.linear_with(x, w, kernel)?).map(drop)
        };
        let cublas_us = time_us(b, busy, reps, split(LinearKernel::Cublas))?;
        let tuned_us = time_us(b, busy, reps, split(LinearKernel::Tuned))?;
        let fused_us = time_us(b, busy, reps, |_| b.gemm_glu(&x, &w).map(drop))?;
        let tflops = 2.0 * (m * 2 * n * k) as f64 / (fused_us * 1e-6) / 1e12;
        println!(
            "| {n} x {k} | {m} | {cublas_us:.1} | {tuned_us:.1} | {fused_us:.1} | {tflops:.0} | {:.3} | {diff:.1e} |",
            tuned_us / fused_us
        );
        println!(
            "OPBENCH op=glu n={n} k={k} rows={m} cublas_split_us={cublas_us:.2} tuned_split_us={tuned_us:.2} \
             gemm_glu_us={fused_us:.2} gemm_glu_tflops={tflops:.1} rel_diff={diff:.2e}"
        );
    }
    Ok(())
}

fn arg(args: &[String], flag: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.into())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = arg(&args, "--reps", "5").parse()?;
    if reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let start = Instant::now();
    let (spec8, spec70) = (dummy_spec("llama-3-8b")?, dummy_spec("llama-3-70b")?);
    let mut layers = linears("llama-3-8b", &spec8, 1);
    layers.extend(linears("llama-3-70b/tp2", &spec70, 2));
    let largest = layers.iter().map(|l| l.n * l.k).max().expect("layers");
    let values = host_values(largest + 64 * 28672);

    let b = CudaBackend::new(0)?;
    let copy = b.copy_bandwidth(1 << 30, 20)?;
    let busy = Busy::new(&b, &values)?;
    println!("op_bench on {}: device-to-device copy {:.0} GB/s (read + write)", b.device_name(), copy / 1e9);
    if args.iter().any(|a| a == "--prefill-only") {
        let layout = QkvLayout {
            num_heads: spec8.num_heads,
            num_kv_heads: spec8.num_kv_heads,
            head_dim: spec8.head_dim,
        };
        prefill_attention_row(&b, &busy, &values, layout, reps)?.iter().for_each(|l| println!("{l}"));
        return Ok(());
    }
    if args.iter().any(|a| a == "--glu-only") {
        return glu_rows(&b, &busy, &values, &spec8, reps);
    }
    let gbps = |bytes: usize, us: f64| bytes as f64 / (us * 1e-6) / 1e9;
    let frac = |bytes: usize, us: f64| bytes as f64 / (us * 1e-6) / copy;

    println!();
    println!(
        "| layer | n x k | batch | GEMV us | cuBLAS us | tuned us | GEMV GB/s | cuBLAS GB/s | GEMV / copy \
         | cuBLAS / copy | tuned / copy | cuBLAS / GEMV time | GEMV vs cuBLAS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut lines = Vec::new();
    let mut linear_rows = Vec::new();
    for layer in &layers {
        for row in bench_linear(&b, &busy, &values, layer, reps)? {
            let bytes = row.n * row.k * 2;
            let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            println!(
                "| {} {} | {} x {} | {} | {} | {:.1} | {} | {} | {:.0} | {} | {:.1}% | {} | {} | {} |",
                row.model,
                row.name,
                row.n,
                row.k,
                row.batch,
                cell(row.gemv_us.map(|us| format!("{us:.1}"))),
                row.cublas_us,
                cell(row.tuned_us.map(|us| format!("{us:.1}"))),
                cell(row.gemv_us.map(|us| format!("{:.0}", gbps(bytes, us)))),
                gbps(bytes, row.cublas_us),
                cell(row.gemv_us.map(|us| format!("{:.1}%", 100.0 * frac(bytes, us)))),
                100.0 * frac(bytes, row.cublas_us),
                cell(row.tuned_us.map(|us| format!("{:.1}%", 100.0 * frac(bytes, us)))),
                cell(row.gemv_us.map(|us| format!("{:.2}", row.cublas_us / us))),
                cell(row.rel_diff.map(|d| format!("{d:.1e}"))),
            );
            let gemv = row
                .gemv_us
                .map(|us| {
                    format!(
                        " gemv_us={us:.2} gemv_gbps={:.0} gemv_frac={:.4}",
                        gbps(bytes, us),
                        frac(bytes, us)
                    )
                })
                .unwrap_or_default();
            lines.push(format!(
                "OPBENCH op=linear model={} layer={} n={} k={} batch={}{gemv} cublas_us={:.2} cublas_gbps={:.0} \
                 cublas_frac={:.4} copy_gbps={:.0}{}{}",
                row.model,
                row.name,
                row.n,
                row.k,
                row.batch,
                row.cublas_us,
                gbps(bytes, row.cublas_us),
                frac(bytes, row.cublas_us),
                copy / 1e9,
                row.rel_diff.map(|d| format!(" rel_diff={d:.2e}")).unwrap_or_default(),
                row.tuned_us
                    .map(|us| format!(" tuned_us={us:.2} tuned_frac={:.4}", frac(bytes, us)))
                    .unwrap_or_default(),
            ));
            linear_rows.push(row);
        }
    }

    println!();
    println!("| op | shape | us | GB/s | fraction of copy |");
    println!("|---|---|---|---|---|");
    for cols in [spec8.hidden_size, spec70.hidden_size] {
        for rows in [1, 64] {
            let us = bench_norm(&b, &busy, &values, rows, cols, reps)?;
            // Residual read and written, delta read, output written, weight read.
            let bytes = rows * cols * 2 * 4 + cols * 2;
            println!(
                "| add_rms_norm | {rows} x {cols} | {us:.2} | {:.0} | {:.1}% |",
                gbps(bytes, us),
                100.0 * frac(bytes, us)
            );
            lines.push(format!(
                "OPBENCH op=add_rms_norm rows={rows} cols={cols} us={us:.3} gbps={:.0} frac={:.4}",
                gbps(bytes, us),
                frac(bytes, us)
            ));
        }
    }
    let layout =
        QkvLayout { num_heads: spec8.num_heads, num_kv_heads: spec8.num_kv_heads, head_dim: spec8.head_dim };
    for batch in [1, 64] {
        let us = bench_attention(&b, &busy, &values, layout, batch, reps)?;
        let bytes = batch * CONTEXT * layout.num_kv_heads * layout.head_dim * 2 * 2;
        let (h, kv, d) = (layout.num_heads, layout.num_kv_heads, layout.head_dim);
        println!(
            "| decode attention {h}/{kv} x {d} | batch {batch}, context {CONTEXT} | {us:.1} | {:.0} | {:.1}% |",
            gbps(bytes, us),
            100.0 * frac(bytes, us)
        );
        lines.push(format!(
            "OPBENCH op=decode_attention heads={h} kv_heads={kv} head_dim={d} block={BLOCK_SIZE} \
             batch={batch} context={CONTEXT} us={us:.2} kv_gbps={:.0} frac={:.4}",
            gbps(bytes, us),
            frac(bytes, us)
        ));
    }
    // rope_write_kv at a prefill step's rows and at one decode row, the vector kernel and the
    // scalar one (the launcher reads TESSERA_ROPE at every call), unless the caller chose one.
    let chosen = std::env::var("TESSERA_ROPE").ok();
    let kernels = match &chosen {
        Some(k) => vec![k.clone()],
        None => vec!["vector".to_string(), "scalar".to_string()],
    };
    for kernel in kernels {
        std::env::set_var("TESSERA_ROPE", &kernel);
        for rows in [1, PREFILL_SEQS * PREFILL_LEN] {
            let (us, bytes) = bench_rope_write_kv(&b, &busy, &values, layout, rows, reps)?;
            println!(
                "| rope_write_kv ({kernel}) | {rows} rows | {us:.2} | {:.0} | {:.1}% |",
                gbps(bytes, us),
                100.0 * frac(bytes, us)
            );
            lines.push(format!(
                "OPBENCH op=rope_write_kv kernel={kernel} rows={rows} us={us:.3} gbps={:.0} frac={:.4}",
                gbps(bytes, us),
                frac(bytes, us)
            ));
        }
    }
    match chosen {
        Some(k) => std::env::set_var("TESSERA_ROPE", k),
        None => std::env::remove_var("TESSERA_ROPE"),
    }
    lines.extend(prefill_attention_row(&b, &busy, &values, layout, reps)?);
    println!();
    lines.iter().for_each(|line| println!("{line}"));
    // The dispatch threshold: every batch up to it must have the GEMV faster on every layer.
    let wins = |m: usize| {
        linear_rows.iter().filter(|r| r.batch == m).all(|r| r.gemv_us.is_some_and(|g| g < r.cublas_us))
    };
    let best = BATCHES.iter().copied().take_while(|&m| wins(m)).last().unwrap_or(0);
    println!("OPBENCH_GEMV_MAX_M measured={best} current={GEMV_MAX_M} (of the batches {BATCHES:?})");
    println!("op_bench took {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
