//! CUDA graphs for decode against eager steps, and the GPU's greedy choice against the host's.
//!
//! - Replaying the graphs gives the eager step's logits, step after step, at several batch sizes
//!   (padded ones included) and contexts (split along the context or not), with the graph and the
//!   eager path each writing its own copy of the KV cache: so the graph's KV writes land where the
//!   eager ones do, and its padding rows write nothing (block 0, where a stray write would go,
//!   belongs to a live sequence).
//! - Batches a graph must not run (prefill, too many rows) fall back to eager.
//! - `argmax_rows` equals the host sampler's argmax, ties, NaN and infinities included.
//! - Profiling sets memory aside for the graphs, and what the driver reserves for them fits it
//!   (graphs launched on one stream share their activations' memory).
//!
//! Run with TESSERA_GPU_TESTS=1 on a GPU machine.

#![cfg(feature = "cuda")]

mod common;

use common::*;
use tessera_cuda::{CudaBackend, CudaKvCache, DecodeGraphs};
use tessera_model::shapes::dummy_spec;
use tessera_model::weights::DummySource;
use tessera_model::{Backend, DType, Model, ModelInput, ModelSpec, SeqChunk, TpRank};

const BLOCK_SIZE: usize = 16;
const GRAPH_SIZES: [usize; 5] = [1, 2, 4, 8, 16];
/// Decode batches tried, and what each is padded to: 1, 4, 8, 16.
const BATCHES: [usize; 4] = [1, 3, 8, 13];
const STEPS_PER_BATCH: usize = 3;

/// A Llama 3 8B layer shape (head_dim 128, GQA group 4: attention's fast path) with 2 layers and
/// a smaller vocabulary, so it loads in seconds.
fn two_layer_8b() -> ModelSpec {
    ModelSpec { num_layers: 2, vocab_size: 32_000, ..dummy_spec("llama-3-8b").unwrap() }
}

/// The `tiny` shape: head_dim 8, 32 keys per warp in attention.
fn tiny() -> ModelSpec {
    dummy_spec("tiny").unwrap()
}

fn load(backend: &CudaBackend, spec: &ModelSpec, max_model_len: usize) -> Model<CudaBackend> {
    Model::load(backend, spec, &DummySource::new(3), DType::Bf16, TpRank::SINGLE, max_model_len).unwrap()
}

/// One sequence: its tokens so far (the last one not yet computed) and its block table.
struct Seq {
    tokens: Vec<u32>,
    table: Vec<u32>,
}

/// Sequences with prompts of varied lengths up to about `max_len - 32`, one of them long, over
/// scrambled blocks of a cache of `num_blocks`; sequence 0 owns block 0.
fn sequences(count: usize, max_len: usize, vocab: usize, num_blocks: usize) -> Vec<Seq> {
    let blocks_per_seq = max_len.div_ceil(BLOCK_SIZE);
    assert!(count * blocks_per_seq <= num_blocks);
    (0..count)
        .map(|s| {
            let len = if s == 1 { max_len - 32 } else { 1 + (37 * s + 5) % (max_len / 2) };
            let tokens = (0..len).map(|i| ((i * 7919 + s * 104_729) % vocab) as u32).collect();
            let table =
                (0..blocks_per_seq).map(|j| ((j * count + s) * 7 % num_blocks) as u32).collect::<Vec<_>>();
            Seq { tokens, table }
        })
        .collect()
}

/// Computes every token of `seqs` but the last into `cache`, eagerly (prefill).
fn prefill(backend: &CudaBackend, model: &Model<CudaBackend>, cache: &mut CudaKvCache, seqs: &[Seq]) {
    for seq in seqs.iter().filter(|s| s.tokens.len() > 1) {
        let chunk = SeqChunk {
            new_tokens: &seq.tokens[..seq.tokens.len() - 1],
            num_computed_tokens: 0,
            block_table: &seq.table,
            wants_logits: false,
        };
        let batch = backend.prepare(&ModelInput::build(BLOCK_SIZE, &[chunk])).unwrap();
        model.forward(backend, &batch, cache).unwrap();
    }
}

/// The decode step of sequences `0..n`: each computes its last token.
fn decode_input(seqs: &[Seq], n: usize) -> ModelInput {
    let chunks: Vec<SeqChunk<'_>> = seqs[..n]
        .iter()
        .map(|s| SeqChunk {
            new_tokens: &s.tokens[s.tokens.len() - 1..],
            num_computed_tokens: s.tokens.len() - 1,
            block_table: &s.table,
            wants_logits: true,
        })
        .collect();
    ModelInput::build(BLOCK_SIZE, &chunks)
}

fn host_argmax(row: &[f32]) -> u32 {
    let (mut best, mut best_value) = (0, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > best_value {
            (best, best_value) = (i, x);
        }
    }
    best as u32
}

/// Whether the two largest values of `row` are within `gap` (a near-tie rounding may flip).
fn near_tie(row: &[f32], gap: f32) -> bool {
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted[1] <= gap
}

fn graphs_match_eager(name: &str, spec: &ModelSpec, max_model_len: usize) {
    let backend = CudaBackend::new(0).unwrap();
    let model = load(&backend, spec, max_model_len);
    let count = *BATCHES.iter().max().unwrap();
    let num_blocks = count * max_model_len.div_ceil(BLOCK_SIZE) + 5;
    let shape = model.kv_cache_shape(num_blocks, BLOCK_SIZE);
    let (mut eager_cache, mut graph_cache) =
        (backend.alloc_kv_cache(shape).unwrap(), backend.alloc_kv_cache(shape).unwrap());
    let mut seqs =
        sequences(count, max_model_len - STEPS_PER_BATCH * BATCHES.len(), spec.vocab_size, num_blocks);
    assert_eq!(seqs[0].table[0], 0, "block 0 belongs to a live sequence");
    prefill(&backend, &model, &mut eager_cache, &seqs);
    prefill(&backend, &model, &mut graph_cache, &seqs);
    let mut graphs = DecodeGraphs::capture(&backend, &model, &mut graph_cache, &GRAPH_SIZES).unwrap();
    eprintln!("{name}: {:?}", graphs.report());

    let vocab = spec.vocab_size;
    let (mut worst, mut ties) = (0.0f32, 0);
    for n in BATCHES {
        for step in 0..STEPS_PER_BATCH {
            let input = decode_input(&seqs, n);
            let batch = backend.prepare(&input).unwrap();
            let eager = backend.to_host(&model.forward(&backend, &batch, &mut eager_cache).unwrap()).unwrap();
            let replayed = graphs.replay(&backend, &input).unwrap().expect("a decode batch within the sizes");
            let graph = backend.rows_to_host(replayed, n).unwrap();
            let err = relative_error(&graph, &eager);
            worst = worst.max(err);
            assert!(err <= BF16_TOL, "{name} batch {n} step {step}: logits relative error {err:.2e}");
            let scale = eager.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (s, (g, e)) in graph.chunks(vocab).zip(eager.chunks(vocab)).enumerate() {
                let (gt, et) = (host_argmax(g), host_argmax(e));
                if gt != et {
                    assert!(
                        near_tie(e, 2.0 * BF16_TOL * scale),
                        "{name} batch {n} seq {s}: token {gt} != {et}"
                    );
                    ties += 1;
                }
                // Both caches get the eager choice, so they keep holding the same tokens.
                seqs[s].tokens.push(et);
            }
        }
    }
    eprintln!("{name}: graph vs eager logits, worst relative error {worst:.2e}; {ties} near-tie token flips");

    // Steps a graph must not run fall back to eager.
    let prefill_step = ModelInput::build(
        BLOCK_SIZE,
        &[SeqChunk {
            new_tokens: &[1, 2],
            num_computed_tokens: 0,
            block_table: &[num_blocks as u32 - 1],
            wants_logits: true,
        }],
    );
    assert!(graphs.replay(&backend, &prefill_step).unwrap().is_none(), "prefill runs eagerly");
    let many: Vec<Seq> =
        (0..17).map(|i| Seq { tokens: vec![i], table: vec![num_blocks as u32 - 1 - i] }).collect();
    assert!(graphs.replay(&backend, &decode_input(&many, 17)).unwrap().is_none(), "17 rows exceed the sizes");
}

#[test]
fn graph_replays_match_eager_steps_head_dim_128() {
    if !gpu_tests_enabled("graph_replays_match_eager_steps_head_dim_128") {
        return;
    }
    // Long enough that small batches split their context into partitions.
    graphs_match_eager("2-layer 8B shape", &two_layer_8b(), 1024);
}

#[test]
fn graph_replays_match_eager_steps_tiny() {
    if !gpu_tests_enabled("graph_replays_match_eager_steps_tiny") {
        return;
    }
    graphs_match_eager("tiny", &tiny(), 256);
}

#[test]
fn argmax_rows_matches_the_host_argmax() {
    if !gpu_tests_enabled("argmax_rows_matches_the_host_argmax") {
        return;
    }
    let backend = CudaBackend::new(0).unwrap();
    for (rows, cols) in [(1, 128_256), (7, 1001), (64, 32_000), (3, 8)] {
        let mut values = random_bf16(cols as u64, rows * cols, 8.0);
        let row = |r: usize| r * cols..(r + 1) * cols;
        // Row 0: a tie for the maximum (the lower index wins), also across 16-byte vectors.
        let top = values[row(0)].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) + 1.0;
        values[cols - 1] = top;
        values[cols / 3] = top;
        if rows > 2 {
            // Row 1: NaNs everywhere but one value; row 2: all -inf (token 0).
            values[row(1)].iter_mut().for_each(|v| *v = f32::NAN);
            values[cols + cols / 2] = -3.0;
            values[row(2)].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
        }
        if rows > 3 {
            // Row 3: +inf wins over everything, the first one.
            values[3 * cols + 5] = f32::INFINITY;
            values[3 * cols + cols - 2] = f32::INFINITY;
        }
        let logits = backend.tensor_from_host(rows, cols, &values).unwrap();
        // The device sees bf16, as the host does after `to_host`.
        let host = backend.to_host(&logits).unwrap();
        let want: Vec<u32> = host.chunks(cols).map(host_argmax).collect();
        let got = backend.argmax_rows(&logits, rows).unwrap();
        assert_eq!(got, want, "argmax of {rows} x {cols}");
        assert_eq!(backend.argmax_rows(&logits, 1).unwrap(), want[..1], "a prefix of the rows");
    }
    eprintln!("argmax_rows: identical to the host argmax on every row");
}

#[test]
fn profiling_reserves_what_the_graphs_use() {
    if !gpu_tests_enabled("profiling_reserves_what_the_graphs_use") {
        return;
    }
    let backend = CudaBackend::new(0).unwrap();
    // The full vocabulary, so the logits weigh in the graphs' activations as in a real model.
    let spec = ModelSpec { num_layers: 2, ..dummy_spec("llama-3-8b").unwrap() };
    let max_model_len = 2048;
    let model = load(&backend, &spec, max_model_len);
    let sizes = tessera_core::config::EngineSection::default().graph_batch_sizes(256);
    let limits = |max_graph_batch| tessera_cuda::ProfileLimits {
        max_num_batched_tokens: 4096,
        max_num_seqs: 256,
        max_model_len,
        block_size: BLOCK_SIZE,
        gpu_memory_utilization: 0.5,
        max_graph_batch,
    };
    let without = tessera_cuda::profile_num_blocks(&backend, &model, &limits(0)).unwrap();
    let with = tessera_cuda::profile_num_blocks(&backend, &model, &limits(256)).unwrap();
    eprintln!("profile: without graphs {without:?}");
    eprintln!("profile: with graphs {with:?}");
    assert_eq!(without.graph_reserve, 0);
    assert!(with.graph_reserve > 0 && with.num_blocks < without.num_blocks, "{with:?}");

    let mut cache =
        backend.alloc_kv_cache(model.kv_cache_shape(with.num_blocks.min(4096), BLOCK_SIZE)).unwrap();
    let graphs = DecodeGraphs::capture(&backend, &model, &mut cache, &sizes).unwrap();
    let report = graphs.report();
    let activations = with.graph_reserve - report.static_bytes;
    eprintln!(
        "graphs: {} sizes captured in {:.0} ms; graph pool {:.1} MiB, profiled activations {:.1} MiB, static {:.1} MiB",
        report.batch_sizes.len(),
        report.capture_ms,
        report.graph_pool_bytes as f64 / (1 << 20) as f64,
        activations as f64 / (1 << 20) as f64,
        report.static_bytes as f64 / (1 << 20) as f64
    );
    // Without sharing, 35 graphs would hold about 17 times the largest one's activations.
    assert!(
        report.graph_pool_bytes <= 2 * activations + (64 << 20),
        "the graph pool ({} bytes) outgrew the profiled reserve ({activations} bytes of activations)",
        report.graph_pool_bytes
    );
}
