//! Every CUDA kernel against the CPU backend on random inputs of several shapes, through the
//! `Backend` trait on both sides (each op is one generic function run on both). The linear
//! layers (GEMV, cuBLAS, tuned cuBLASLt, accumulating) are in gemm.rs. Run with
//! TESSERA_GPU_TESTS=1 on a GPU machine.

#![cfg(feature = "cuda")]

mod common;

use common::*;
use tessera_cpu::CpuBackend;
use tessera_cuda::CudaBackend;
use tessera_model::rope::cos_sin_tables;
use tessera_model::spec::{Llama3RopeScaling, RopeSpec};
use tessera_model::weights::{DummySource, Shard, WeightSource};
use tessera_model::{Backend, DType, KvCacheShape, ModelInput, QkvLayout, SeqChunk};

fn backends(test: &str) -> Option<(CpuBackend, CudaBackend)> {
    gpu_tests_enabled(test).then(|| (CpuBackend::new(), CudaBackend::new(0).expect("CUDA backend")))
}

fn norms<B: Backend>(b: &B, rows: usize, cols: usize, x: &[f32], d: &[f32], w: &[f32]) -> Vec<Vec<f32>> {
    let xt = activation(b, rows, cols, x);
    let mut residual = activation(b, rows, cols, x);
    let delta = activation(b, rows, cols, d);
    let weight = b.upload(host_bf16(vec![cols], w)).unwrap();
    let normed = b.rms_norm(&xt, &weight, 1e-5).unwrap();
    let fused = b.add_rms_norm(&mut residual, &delta, &weight, 1e-6).unwrap();
    vec![b.to_host(&normed).unwrap(), b.to_host(&residual).unwrap(), b.to_host(&fused).unwrap()]
}

#[test]
fn rms_norm_and_fused_add_rms_norm() {
    let Some((cpu, gpu)) = backends("rms_norm_and_fused_add_rms_norm") else { return };
    // Widths that are multiples of 8 take the vectorized kernels (4096 and 8192: Llama's decode
    // rows; 8: one vector; 32768: the most they take), the others the scalar ones.
    let shapes = [
        (1, 64),
        (1, 8),
        (1, 4096),
        (7, 4096),
        (33, 5120),
        (1, 8192),
        (130, 8192),
        (2, 32768),
        (3, 77),
        (1, 4099),
    ];
    for (i, (rows, cols)) in shapes.into_iter().enumerate() {
        let seed = 10 * i as u64;
        let x = random_bf16(seed, rows * cols, 2.0);
        let d = random_bf16(seed + 1, rows * cols, 2.0);
        let w = random_bf16(seed + 2, cols, 1.5);
        let (want, got) = (norms(&cpu, rows, cols, &x, &d, &w), norms(&gpu, rows, cols, &x, &d, &w));
        for (name, (g, c)) in
            ["rms_norm", "add_rms_norm residual", "add_rms_norm out"].iter().zip(got.iter().zip(&want))
        {
            assert_close(&format!("{name} {rows}x{cols}"), g, c, BF16_TOL);
        }
    }
}

fn silu_mul<B: Backend>(b: &B, rows: usize, n: usize, values: &[f32]) -> Vec<f32> {
    b.to_host(&b.silu_mul(&activation(b, rows, 2 * n, values)).unwrap()).unwrap()
}

#[test]
fn silu_and_mul() {
    let Some((cpu, gpu)) = backends("silu_and_mul") else { return };
    // n = 13: the scalar kernel (rows not whole 16-byte vectors); the others the vector one,
    // whose grid has a block row per row up to 65,535 rows and loops over the rest; n = 2,400
    // (300 vectors) ends a row in a partial block.
    for (rows, n) in [(1, 8), (3, 128), (64, 14336), (5, 13), (70_000, 8), (5, 2400)] {
        let v = random_bf16(rows as u64, rows * 2 * n, 6.0);
        assert_close(
            &format!("silu_mul {rows}x{n}"),
            &silu_mul(&gpu, rows, n, &v),
            &silu_mul(&cpu, rows, n, &v),
            BF16_TOL,
        );
    }
}

fn embed_and_gather<B: Backend>(
    b: &B,
    vocab: usize,
    cols: usize,
    start: usize,
    tokens: &[u32],
    table: &[f32],
) -> Vec<f32> {
    let t = b.upload(host_bf16(vec![vocab, cols], table)).unwrap();
    let n = tokens.len();
    let input = ModelInput {
        block_size: 16,
        token_ids: tokens.to_vec(),
        positions: vec![0; n],
        slot_mapping: vec![0; n],
        seqs: Vec::new(),
        logits_indices: vec![n - 1, 0, n / 2],
    };
    let batch = b.prepare(&input).unwrap();
    let x = b.embedding(&t, start, &batch).unwrap();
    let rows = b.gather_logit_rows(&x, &batch).unwrap();
    b.to_host(&x).unwrap().into_iter().chain(b.to_host(&rows).unwrap()).collect()
}

#[test]
fn embedding_of_a_vocab_shard_and_row_gather() {
    let Some((cpu, gpu)) = backends("embedding_of_a_vocab_shard_and_row_gather") else { return };
    for (vocab, cols, start) in [(100, 64, 0), (100, 4096, 50), (1000, 136, 7)] {
        let table = random_bf16(vocab as u64, vocab * cols, 1.0);
        let tokens: Vec<u32> = (0..41).map(|i| (i * 37 % (vocab + start + 20)) as u32).collect();
        let want = embed_and_gather(&cpu, vocab, cols, start, &tokens, &table);
        let got = embed_and_gather(&gpu, vocab, cols, start, &tokens, &table);
        // A lookup copies bf16 values: exact.
        assert_eq!(got, want, "embedding {vocab}x{cols} from {start}");
    }
}

fn rope_tables(head_dim: usize, max_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let spec = RopeSpec {
        theta: 500000.0,
        llama3_scaling: Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
    };
    cos_sin_tables(&spec, head_dim, max_positions)
}

/// qk_norm then RoPE of a fused q|k|v tensor (v heads must come through untouched).
fn norm_and_rope<B: Backend>(b: &B, layout: QkvLayout, positions: &[u32], seed: u64) -> Vec<f32> {
    let rows = positions.len();
    let d = layout.head_dim;
    let mut qkv = activation(b, rows, layout.row_width(), &random_bf16(seed, rows * layout.row_width(), 3.0));
    let qw = b.upload(host_bf16(vec![d], &random_bf16(seed + 1, d, 1.5))).unwrap();
    let kw = b.upload(host_bf16(vec![d], &random_bf16(seed + 2, d, 1.5))).unwrap();
    b.qk_norm(&mut qkv, &qw, &kw, 1e-6, layout).unwrap();
    let (cos, sin) = rope_tables(d, 20000);
    let rope = b.upload_rope(cos, sin, d).unwrap();
    let input = ModelInput {
        block_size: 16,
        token_ids: vec![0; rows],
        positions: positions.to_vec(),
        slot_mapping: vec![0; rows],
        seqs: Vec::new(),
        logits_indices: Vec::new(),
    };
    b.rope(&mut qkv, &rope, &b.prepare(&input).unwrap(), layout).unwrap();
    b.to_host(&qkv).unwrap()
}

#[test]
fn qk_norm_and_llama3_rope() {
    let Some((cpu, gpu)) = backends("qk_norm_and_llama3_rope") else { return };
    for (i, (h, kv, d)) in [(8, 4, 8), (32, 8, 128), (28, 4, 128), (16, 16, 64)].into_iter().enumerate() {
        let layout = QkvLayout { num_heads: h, num_kv_heads: kv, head_dim: d };
        let positions: Vec<u32> = (0..19).map(|j| (j * 1031 % 19999) as u32).collect();
        let seed = 300 + i as u64;
        assert_close(
            &format!("qk_norm+rope {h}/{kv}x{d}"),
            &norm_and_rope(&gpu, layout, &positions, seed),
            &norm_and_rope(&cpu, layout, &positions, seed),
            BF16_TOL,
        );
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One sequence of an attention scenario: tokens already cached, tokens computed now.
struct Seq {
    computed: usize,
    query: usize,
}

/// Two steps through the paged cache: the first writes every sequence's earlier tokens (a
/// prefill, as a prefix-cache hit would have left them), the second writes this step's tokens
/// and attends. Block tables are scrambled so that paging is honoured. Returns both steps'
/// attention outputs.
fn attention<B: Backend>(b: &B, layout: QkvLayout, seqs: &[Seq], block_size: usize, seed: u64) -> Vec<f32> {
    attention_with(b, layout, seqs, block_size, seed, false)
}

/// `attention`, optionally writing the cache through `rope_write_kv` (RoPE of q and k first)
/// instead of `write_kv`; then the q|k|v rows after RoPE follow each step's output.
fn attention_with<B: Backend>(
    b: &B,
    layout: QkvLayout,
    seqs: &[Seq],
    block_size: usize,
    seed: u64,
    fused_rope: bool,
) -> Vec<f32> {
    let (cos, sin) = rope_tables(layout.head_dim, 8192);
    let rope = b.upload_rope(cos, sin, layout.head_dim).unwrap();
    let num_blocks: usize =
        seqs.iter().map(|s| (s.computed + s.query).div_ceil(block_size)).sum::<usize>() + 3;
    let shape = KvCacheShape {
        num_layers: 2,
        num_blocks,
        block_size,
        num_kv_heads: layout.num_kv_heads,
        head_dim: layout.head_dim,
    };
    let mut cache = b.alloc_kv_cache(shape).unwrap();
    // A stride coprime with the block count makes a permutation (no block shared by two sequences).
    let stride = (7..).find(|k| gcd(*k, num_blocks) == 1).unwrap();
    let mut ids: Vec<u32> = (0..num_blocks).map(|i| ((i * stride + 3) % num_blocks) as u32).collect();
    let tables: Vec<Vec<u32>> =
        seqs.iter().map(|s| ids.drain(..(s.computed + s.query).div_ceil(block_size)).collect()).collect();
    let tokens: Vec<Vec<u32>> = seqs.iter().map(|s| vec![1; s.computed + s.query]).collect();
    let mut out = Vec::new();
    for (step, layer) in [(0, 1), (1, 1)] {
        let chunks: Vec<SeqChunk<'_>> = seqs
            .iter()
            .zip(&tables)
            .zip(&tokens)
            .filter(|((s, _), _)| step == 1 || s.computed > 0)
            .map(|((s, table), t)| {
                let (from, to) = if step == 0 { (0, s.computed) } else { (s.computed, s.computed + s.query) };
                SeqChunk {
                    new_tokens: &t[from..to],
                    num_computed_tokens: from,
                    block_table: table,
                    wants_logits: true,
                }
            })
            .collect();
        let input = ModelInput::build(block_size, &chunks);
        let rows = input.num_tokens();
        let mut qkv = activation(
            b,
            rows,
            layout.row_width(),
            &random_bf16(seed + step, rows * layout.row_width(), 2.0),
        );
        let batch = b.prepare(&input).unwrap();
        if fused_rope {
            b.rope_write_kv(&mut qkv, &rope, &mut cache, layer, &batch, layout).unwrap();
        } else {
            b.write_kv(&mut cache, layer, &qkv, &batch, layout).unwrap();
        }
        out.extend(b.to_host(&b.attention(&cache, layer, &qkv, &batch, layout).unwrap()).unwrap());
        if fused_rope {
            out.extend(b.to_host(&qkv).unwrap());
        }
    }
    out
}

/// RoPE fused with the cache write (the model's path on CUDA) against the CPU's rope then
/// write_kv: the rotated rows, and attention over what reached the cache.
#[test]
fn rope_write_kv_then_attention() {
    let Some((cpu, gpu)) = backends("rope_write_kv_then_attention") else { return };
    let cases = [
        (QkvLayout { num_heads: 32, num_kv_heads: 8, head_dim: 128 }, 16),
        (QkvLayout { num_heads: 8, num_kv_heads: 4, head_dim: 8 }, 4),
        // head_dim % 8 != 0: the scalar kernel.
        (QkvLayout { num_heads: 4, num_kv_heads: 2, head_dim: 12 }, 4),
    ];
    // 18 rows (one pair a thread) and 88 (four pairs a thread where head_dim % 8 == 0).
    let few = [Seq { computed: 40, query: 1 }, Seq { computed: 3, query: 12 }, Seq { computed: 0, query: 5 }];
    let many =
        [Seq { computed: 40, query: 1 }, Seq { computed: 3, query: 17 }, Seq { computed: 0, query: 70 }];
    for (i, (layout, block_size)) in cases.into_iter().enumerate() {
        for (j, seqs) in [&few, &many].into_iter().enumerate() {
            let seed = 900 + 2 * (2 * i + j) as u64;
            let want = attention_with(&cpu, layout, seqs, block_size, seed, true);
            let got = attention_with(&gpu, layout, seqs, block_size, seed, true);
            let rows: usize = seqs.iter().map(|s| s.query).sum();
            assert_close(&format!("rope_write_kv {layout:?}, {rows} rows"), &got, &want, BF16_TOL);
        }
    }
}

#[test]
fn paged_attention_prefill_chunks_and_decode() {
    let Some((cpu, gpu)) = backends("paged_attention_prefill_chunks_and_decode") else { return };
    let scenarios: Vec<(&str, QkvLayout, Vec<Seq>, usize)> = vec![
        (
            "fixture shape",
            QkvLayout { num_heads: 8, num_kv_heads: 4, head_dim: 8 },
            vec![Seq { computed: 5, query: 9 }, Seq { computed: 0, query: 3 }],
            16,
        ),
        (
            "llama-8b decode batch",
            QkvLayout { num_heads: 32, num_kv_heads: 8, head_dim: 128 },
            (0..6).map(|i| Seq { computed: 17 + 131 * i, query: 1 }).collect(),
            16,
        ),
        (
            "long decode (split context)",
            QkvLayout { num_heads: 32, num_kv_heads: 8, head_dim: 128 },
            vec![Seq { computed: 3000, query: 1 }],
            16,
        ),
        (
            "mixed chunked prefill + decode",
            QkvLayout { num_heads: 28, num_kv_heads: 4, head_dim: 128 },
            vec![
                Seq { computed: 300, query: 37 },
                Seq { computed: 1000, query: 1 },
                Seq { computed: 0, query: 150 },
            ],
            32,
        ),
        (
            // Tensor-core prefill with the largest group (8 warps), tiles cut by sequence ends.
            "group 8 prefill chunks over prefix hits",
            QkvLayout { num_heads: 64, num_kv_heads: 8, head_dim: 128 },
            vec![
                Seq { computed: 100, query: 40 },
                Seq { computed: 7, query: 17 },
                Seq { computed: 0, query: 1 },
            ],
            16,
        ),
        // The pipelined prefill kernel over long prompts: many 64-key tiles, tiles whose keys
        // end mid-tile and mid-page, prefixes already cached (step 0 runs them as prefills too),
        // a prompt that ends right after a tile and one shorter than a tile.
        (
            "long prompts, llama-8b layout (group 4)",
            QkvLayout { num_heads: 32, num_kv_heads: 8, head_dim: 128 },
            vec![
                Seq { computed: 0, query: 1023 },
                Seq { computed: 0, query: 300 },
                Seq { computed: 200, query: 900 },
                Seq { computed: 64, query: 700 },
                Seq { computed: 0, query: 1100 },
                Seq { computed: 511, query: 333 },
                Seq { computed: 15, query: 517 },
                Seq { computed: 0, query: 13 },
            ],
            16,
        ),
        (
            "long prompts, group 8 head_dim 64, block 32",
            QkvLayout { num_heads: 16, num_kv_heads: 2, head_dim: 64 },
            vec![
                Seq { computed: 0, query: 777 },
                Seq { computed: 300, query: 450 },
                Seq { computed: 1, query: 1000 },
                Seq { computed: 0, query: 64 },
            ],
            32,
        ),
        (
            // One warp per block: every thread copies many pieces of each K/V tile.
            "MHA prefill head_dim 128 (group 1)",
            QkvLayout { num_heads: 4, num_kv_heads: 4, head_dim: 128 },
            vec![Seq { computed: 33, query: 200 }, Seq { computed: 0, query: 129 }],
            16,
        ),
        (
            "group 2 prefill head_dim 64, block 8",
            QkvLayout { num_heads: 8, num_kv_heads: 4, head_dim: 64 },
            vec![Seq { computed: 130, query: 250 }, Seq { computed: 0, query: 31 }],
            8,
        ),
        (
            "MHA head_dim 64, block 8",
            QkvLayout { num_heads: 4, num_kv_heads: 4, head_dim: 64 },
            vec![Seq { computed: 70, query: 2 }],
            8,
        ),
        (
            "head_dim 256",
            QkvLayout { num_heads: 8, num_kv_heads: 1, head_dim: 256 },
            vec![Seq { computed: 600, query: 1 }, Seq { computed: 9, query: 4 }],
            16,
        ),
        // decode_attention's instances: every group size, both head dims, contexts that end
        // mid-tile and mid-block, one-key contexts, and splits.
        (
            "70B rank decode (group 8), block 32",
            QkvLayout { num_heads: 16, num_kv_heads: 2, head_dim: 128 },
            (0..5).map(|i| Seq { computed: 1 + 397 * i, query: 1 }).collect(),
            32,
        ),
        (
            "MHA decode head_dim 128",
            QkvLayout { num_heads: 4, num_kv_heads: 4, head_dim: 128 },
            vec![Seq { computed: 0, query: 1 }, Seq { computed: 130, query: 1 }],
            16,
        ),
        (
            "group 2 decode head_dim 64, split",
            QkvLayout { num_heads: 8, num_kv_heads: 4, head_dim: 64 },
            vec![Seq { computed: 2500, query: 1 }],
            16,
        ),
        (
            "group 4 decode head_dim 64",
            QkvLayout { num_heads: 16, num_kv_heads: 4, head_dim: 64 },
            (0..3).map(|i| Seq { computed: 33 + 100 * i, query: 1 }).collect(),
            8,
        ),
        (
            "group 3 (runs in the group 4 instance)",
            QkvLayout { num_heads: 12, num_kv_heads: 4, head_dim: 128 },
            vec![Seq { computed: 77, query: 1 }, Seq { computed: 1200, query: 1 }],
            16,
        ),
        (
            "decode rows between prompt chunks (row map)",
            QkvLayout { num_heads: 32, num_kv_heads: 8, head_dim: 128 },
            vec![
                Seq { computed: 900, query: 1 },
                Seq { computed: 64, query: 20 },
                Seq { computed: 5, query: 1 },
                Seq { computed: 0, query: 9 },
                Seq { computed: 4000, query: 1 },
            ],
            16,
        ),
    ];
    for (i, (name, layout, seqs, block_size)) in scenarios.into_iter().enumerate() {
        let seed = 500 + 2 * i as u64;
        let want = attention(&cpu, layout, &seqs, block_size, seed);
        let got = attention(&gpu, layout, &seqs, block_size, seed);
        assert_close(&format!("attention: {name}"), &got, &want, BF16_TOL);
    }
}

/// The candidate instance of decode_attention.cu for the Llama 8B layout, chosen through its
/// environment variable, against the CPU like the default one.
#[test]
fn decode_attention_variant_for_the_8b_layout() {
    let Some((cpu, gpu)) = backends("decode_attention_variant_for_the_8b_layout") else { return };
    let layout = QkvLayout { num_heads: 32, num_kv_heads: 8, head_dim: 128 };
    let seqs: Vec<Seq> = (0..7).map(|i| Seq { computed: 3 + 211 * i, query: 1 }).collect();
    let want = attention(&cpu, layout, &seqs, 16, 77);
    // Other tests of this binary may run meanwhile and pick the variant up too: it is correct
    // for them as well, which is what this test checks.
    std::env::set_var("TESSERA_DECODE_ATTENTION", tessera_cuda::DECODE_ATTENTION_VARIANT);
    let got = attention(&gpu, layout, &seqs, 16, 77);
    std::env::remove_var("TESSERA_DECODE_ATTENTION");
    assert_close("attention: decode variant", &got, &want, BF16_TOL);
}

/// Dummy weights generated on the GPU (what `Model::load` uses for a dummy source) equal the
/// host generator's values uploaded, bit for bit: every value range, shards of both kinds, 1-D
/// tensors and a fused q|k|v of three parts.
#[test]
fn dummy_weights_generated_on_the_gpu_equal_the_host_values() {
    let Some((_, gpu)) = backends("dummy_weights_generated_on_the_gpu_equal_the_host_values") else { return };
    let source = DummySource::new(11);
    let cases: [(&str, Vec<usize>, Shard); 6] = [
        ("model.layers.3.mlp.down_proj.weight", vec![96, 200], Shard::Cols { rank: 1, world: 4 }),
        ("model.layers.0.self_attn.q_proj.weight", vec![64, 48], Shard::Rows { rank: 2, world: 4 }),
        ("model.embed_tokens.weight", vec![1000, 24], Shard::Rows { rank: 1, world: 2 }),
        ("model.layers.1.input_layernorm.weight", vec![4096], Shard::Full),
        ("model.layers.1.self_attn.q_proj.bias", vec![128], Shard::Rows { rank: 1, world: 2 }),
        ("lm_head.weight", vec![333, 40], Shard::Full),
    ];
    for (name, shape, shard) in &cases {
        for dtype in [DType::Bf16, DType::F32] {
            let fill = source.fill(name, shape, *shard);
            let on_gpu =
                gpu.upload_dummy(&[fill], dtype).unwrap().expect("bf16 and f32 are generated on the GPU");
            let host = gpu.upload(source.get(name, shape, *shard, dtype).unwrap()).unwrap();
            assert_eq!((on_gpu.rows, on_gpu.cols), (host.rows, host.cols), "{name} {shard:?}");
            assert_eq!(
                gpu.to_host(&on_gpu).unwrap(),
                gpu.to_host(&host).unwrap(),
                "{name} {shard:?} {dtype:?}"
            );
        }
    }
    assert!(gpu.upload_dummy(&[source.fill("w", &[4, 4], Shard::Full)], DType::F16).unwrap().is_none());
    let names = ["q_proj", "k_proj", "v_proj"].map(|p| format!("model.layers.2.self_attn.{p}.weight"));
    let shard = Shard::Rows { rank: 1, world: 2 };
    let shapes = [vec![64, 32], vec![16, 32], vec![16, 32]];
    let fills: Vec<_> = names.iter().zip(&shapes).map(|(n, s)| source.fill(n, s, shard)).collect();
    let fused = gpu.upload_dummy(&fills, DType::Bf16).unwrap().unwrap();
    let mut want = Vec::new();
    for (name, shape) in names.iter().zip(&shapes) {
        want.extend(source.get(name, shape, shard, DType::Bf16).unwrap().to_f32());
    }
    assert_eq!((fused.rows, fused.cols), (48, 32));
    assert_eq!(gpu.to_host(&fused).unwrap(), want, "fused q|k|v");
    println!(
        "dummy weights: GPU generation equals the host values on {} cases and a fused q|k|v",
        cases.len() * 2
    );
}
