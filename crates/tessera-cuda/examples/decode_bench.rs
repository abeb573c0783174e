//! Decode speed against the memory-bandwidth roofline on one GPU.
//!
//! Loads a dummy-weight model of a named shape (default Llama 3 8B) in bf16, fills the KV cache of
//! every sequence by a real prefill of `context - 1` tokens, then times decode steps (one new token
//! per sequence, the full forward including batch upload and logits) at each batch size, and
//! measures the device-to-device copy bandwidth in the same run.
//!
//! Roofline: a decode step must read every weight it uses once and each sequence's K/V once. The
//! input embedding table is excluded (a step reads only `batch` of its rows); the lm_head is
//! included. Bytes over the copy bandwidth (read + written bytes per second) is the floor.
//!
//! Usage: decode_bench [--shape NAME] [--batches 1,64] [--context 1024] [--iters 30]

use std::time::Instant;
use tessera_cuda::CudaBackend;
use tessera_model::shapes::dummy_spec;
use tessera_model::weights::{DummySource, HostTensor, Shard, WeightSource};
use tessera_model::{DType, Model, ModelInput, SeqChunk, TpRank};

const BLOCK_SIZE: usize = 16;

/// `DummySource`, generated on every core: a full 2-D tensor is produced as row shards of the
/// same source in parallel threads, then concatenated. The values are exactly `DummySource`'s
/// (a shard indexes the full tensor's global positions), only sooner: 8B values on one core take
/// minutes.
struct ParallelDummy(DummySource);

impl WeightSource for ParallelDummy {
    fn get(
        &self,
        name: &str,
        full: &[usize],
        shard: Shard,
        dtype: DType,
    ) -> tessera_model::Result<HostTensor> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
        let parts = (1..=threads).rev().find(|w| full.len() == 2 && full[0].is_multiple_of(*w)).unwrap_or(1);
        if !matches!(shard, Shard::Full) || parts == 1 {
            return self.0.get(name, full, shard, dtype);
        }
        let pieces: Vec<HostTensor> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..parts)
                .map(|rank| {
                    s.spawn(move || self.0.get(name, full, Shard::Rows { rank, world: parts }, dtype))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("generator thread")).collect::<Result<_, _>>()
        })?;
        let mut data = Vec::with_capacity(pieces.iter().map(|p| p.data.len()).sum());
        for p in pieces {
            data.extend_from_slice(&p.data);
        }
        Ok(HostTensor { dtype, shape: full.to_vec(), data })
    }

    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

fn arg(args: &[String], flag: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let shape = arg(&args, "--shape", "llama-3-8b");
    let batches: Vec<usize> =
        arg(&args, "--batches", "1,64").split(',').map(|b| b.parse()).collect::<Result<_, _>>()?;
    let context: usize = arg(&args, "--context", "1024").parse()?;
    let iters: usize = arg(&args, "--iters", "30").parse()?;
    let max_batch = *batches.iter().max().ok_or("no batch sizes")?;

    let spec = dummy_spec(&shape)?;
    let backend = CudaBackend::new(0)?;
    let t = Instant::now();
    let source = ParallelDummy(DummySource::new(0));
    let model = Model::load(&backend, &spec, &source, DType::Bf16, TpRank::SINGLE, context + 16)?;
    backend.synchronize()?;
    println!(
        "{shape} on {}: {:.2e} parameters loaded in {:.1} s",
        backend.device_name(),
        spec.num_params() as f64,
        t.elapsed().as_secs_f64()
    );

    let blocks_per_seq = context.div_ceil(BLOCK_SIZE);
    let num_blocks = max_batch * blocks_per_seq;
    let mut cache =
        tessera_model::Backend::alloc_kv_cache(&backend, model.kv_cache_shape(num_blocks, BLOCK_SIZE))?;
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
    for group in (0..max_batch).collect::<Vec<_>>().chunks(8) {
        let chunks: Vec<SeqChunk> = group
            .iter()
            .map(|&s| SeqChunk {
                new_tokens: &tokens[s][..context - 1],
                num_computed_tokens: 0,
                block_table: &tables[s],
                wants_logits: true,
            })
            .collect();
        let batch = tessera_model::Backend::prepare(&backend, &ModelInput::build(BLOCK_SIZE, &chunks))?;
        model.forward(&backend, &batch, &mut cache)?;
    }
    backend.synchronize()?;
    let prefill_s = t.elapsed().as_secs_f64();
    println!(
        "prefill: {} x {} tokens in {:.2} s ({:.0} tokens/s)",
        max_batch,
        context - 1,
        prefill_s,
        (max_batch * (context - 1)) as f64 / prefill_s
    );

    let bandwidth = backend.copy_bandwidth(1 << 30, 20)?;
    println!("device-to-device copy: {:.0} GB/s (read + write)", bandwidth / 1e9);

    let weight_bytes =
        (spec.num_params() - spec.vocab_size * spec.hidden_size * usize::from(!spec.tie_word_embeddings)) * 2;
    println!("| batch | context | step (wall) ms | step (device) ms | weights GB | KV GB | roofline ms | fraction of roofline | tokens/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &b in &batches {
        let chunks: Vec<SeqChunk> = (0..b)
            .map(|s| SeqChunk {
                new_tokens: &tokens[s][context - 1..],
                num_computed_tokens: context - 1,
                block_table: &tables[s],
                wants_logits: true,
            })
            .collect();
        let input = ModelInput::build(BLOCK_SIZE, &chunks);
        let (mut wall, mut device) = (Vec::new(), Vec::new());
        for i in 0..iters + 3 {
            backend.synchronize()?;
            let t = Instant::now();
            let ms = backend.time_ms(|| {
                let batch = tessera_model::Backend::prepare(&backend, &input)?;
                model.forward(&backend, &batch, &mut cache)
            })?;
            if i >= 3 {
                wall.push(t.elapsed().as_secs_f64() * 1e3);
                device.push(ms);
            }
        }
        let kv_bytes = b * context * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * 2;
        let roofline_ms = (weight_bytes + kv_bytes) as f64 / bandwidth * 1e3;
        let (wall, device) = (median(wall), median(device));
        println!(
            "| {b} | {context} | {wall:.2} | {device:.2} | {:.2} | {:.2} | {roofline_ms:.2} | {:.1}% | {:.0} |",
            weight_bytes as f64 / 1e9,
            kv_bytes as f64 / 1e9,
            100.0 * roofline_ms / wall,
            b as f64 / wall * 1e3
        );
    }
    Ok(())
}
