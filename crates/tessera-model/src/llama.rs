//! The Llama family (Llama 2/3, Mistral, Qwen2, Qwen3), written once against `Backend`.
//!
//! Tensor parallelism lives in how weights are loaded: q/k/v and gate/up are column-parallel
//! (each rank holds some heads / some of the intermediate features), o_proj and down_proj are
//! row-parallel and followed by one all-reduce each; the embedding and lm_head are vocab-parallel
//! when the vocabulary divides evenly, replicated otherwise.

use crate::backend::{Backend, KvCacheShape, QkvLayout};
use crate::error::{ModelError, Result};
use crate::rope::cos_sin_tables;
use crate::spec::{DType, ModelSpec};
use crate::weights::{HostTensor, Shard, WeightSource};

/// This rank's place in its tensor-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpRank {
    pub rank: usize,
    pub world: usize,
}

impl TpRank {
    pub const SINGLE: TpRank = TpRank { rank: 0, world: 1 };

    fn rows(self) -> Shard {
        if self.world == 1 {
            Shard::Full
        } else {
            Shard::Rows { rank: self.rank, world: self.world }
        }
    }

    fn cols(self) -> Shard {
        if self.world == 1 {
            Shard::Full
        } else {
            Shard::Cols { rank: self.rank, world: self.world }
        }
    }
}

struct Layer<B: Backend> {
    input_norm: B::Weight,
    qkv: B::Weight,
    qkv_bias: Option<B::Weight>,
    q_norm: Option<B::Weight>,
    k_norm: Option<B::Weight>,
    o_proj: B::Weight,
    /// Only rank 0 holds it, so that the all-reduce adds it once.
    o_bias: Option<B::Weight>,
    post_norm: B::Weight,
    gate_up: B::Weight,
    down: B::Weight,
}

pub struct Model<B: Backend> {
    spec: ModelSpec,
    tp: TpRank,
    layout: QkvLayout,
    vocab_parallel: bool,
    embed: B::Weight,
    /// `None` when the embedding is tied to the output projection.
    lm_head: Option<B::Weight>,
    layers: Vec<Layer<B>>,
    norm: B::Weight,
    rope: B::Rope,
    max_model_len: usize,
}

/// Concatenates host tensors along dim 0 (fusing q|k|v or gate|up).
fn concat_rows(parts: Vec<HostTensor>) -> HostTensor {
    let dtype = parts[0].dtype;
    assert!(parts.iter().all(|p| p.dtype == dtype), "fused weights must share a dtype");
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    HostTensor { dtype, shape, data: parts.into_iter().flat_map(|p| p.data).collect() }
}

/// Loads one rank's weights from `source`.
struct Loader<'a, B: Backend> {
    backend: &'a B,
    source: &'a dyn WeightSource,
    dtype: DType,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&self, name: &str, shape: &[usize], shard: Shard) -> Result<HostTensor> {
        self.source.get(name, shape, shard, self.dtype)
    }

    fn load(&self, name: &str, shape: &[usize], shard: Shard) -> Result<B::Weight> {
        self.backend.upload(self.host(name, shape, shard)?)
    }

    /// Fuses several column-parallel tensors, each sliced for this rank first.
    fn fused(&self, names: &[(String, usize)], cols: Option<usize>, shard: Shard) -> Result<B::Weight> {
        let parts = names
            .iter()
            .map(|(name, rows)| {
                let shape: Vec<usize> = std::iter::once(*rows).chain(cols).collect();
                self.host(name, &shape, shard)
            })
            .collect::<Result<Vec<_>>>()?;
        self.backend.upload(concat_rows(parts))
    }
}

impl<B: Backend> Model<B> {
    /// Loads this rank's shard of the model. `max_model_len` bounds the RoPE table.
    pub fn load(
        backend: &B,
        spec: &ModelSpec,
        source: &dyn WeightSource,
        dtype: DType,
        tp: TpRank,
        max_model_len: usize,
    ) -> Result<Self> {
        for (what, count) in
            [("num_attention_heads", spec.num_heads), ("num_key_value_heads", spec.num_kv_heads)]
        {
            if count % tp.world != 0 {
                return Err(ModelError::NotDivisible { what, count, world: tp.world });
            }
        }
        if !spec.intermediate_size.is_multiple_of(tp.world) {
            return Err(ModelError::NotDivisible {
                what: "intermediate_size",
                count: spec.intermediate_size,
                world: tp.world,
            });
        }
        let loader = Loader { backend, source, dtype };
        let layout = QkvLayout {
            num_heads: spec.num_heads / tp.world,
            num_kv_heads: spec.num_kv_heads / tp.world,
            head_dim: spec.head_dim,
        };
        let vocab_parallel = spec.vocab_size.is_multiple_of(tp.world);
        let vocab_shard = if vocab_parallel { tp.rows() } else { Shard::Full };
        let embed_shape = [spec.vocab_size, spec.hidden_size];
        let embed = loader.load("model.embed_tokens.weight", &embed_shape, vocab_shard)?;
        let lm_head = if spec.tie_word_embeddings {
            None
        } else {
            Some(loader.load("lm_head.weight", &embed_shape, vocab_shard)?)
        };
        let layers =
            (0..spec.num_layers).map(|i| Self::load_layer(&loader, spec, tp, i)).collect::<Result<_>>()?;
        let norm = loader.load("model.norm.weight", &[spec.hidden_size], Shard::Full)?;
        let (cos, sin) = cos_sin_tables(&spec.rope, spec.head_dim, max_model_len);
        let rope = backend.upload_rope(cos, sin, spec.head_dim)?;
        Ok(Model {
            spec: spec.clone(),
            tp,
            layout,
            vocab_parallel,
            embed,
            lm_head,
            layers,
            norm,
            rope,
            max_model_len,
        })
    }

    fn load_layer(loader: &Loader<'_, B>, spec: &ModelSpec, tp: TpRank, i: usize) -> Result<Layer<B>> {
        let p = format!("model.layers.{i}");
        let h = spec.hidden_size;
        let qkv_names = |suffix: &str| {
            vec![
                (format!("{p}.self_attn.q_proj.{suffix}"), spec.q_size()),
                (format!("{p}.self_attn.k_proj.{suffix}"), spec.kv_size()),
                (format!("{p}.self_attn.v_proj.{suffix}"), spec.kv_size()),
            ]
        };
        let head_norm =
            |name: &str| loader.load(&format!("{p}.self_attn.{name}.weight"), &[spec.head_dim], Shard::Full);
        let gate_up_names = vec![
            (format!("{p}.mlp.gate_proj.weight"), spec.intermediate_size),
            (format!("{p}.mlp.up_proj.weight"), spec.intermediate_size),
        ];
        Ok(Layer {
            input_norm: loader.load(&format!("{p}.input_layernorm.weight"), &[h], Shard::Full)?,
            qkv: loader.fused(&qkv_names("weight"), Some(h), tp.rows())?,
            qkv_bias: spec.qkv_bias.then(|| loader.fused(&qkv_names("bias"), None, tp.rows())).transpose()?,
            q_norm: spec.qk_norm.then(|| head_norm("q_norm")).transpose()?,
            k_norm: spec.qk_norm.then(|| head_norm("k_norm")).transpose()?,
            o_proj: loader.load(&format!("{p}.self_attn.o_proj.weight"), &[h, spec.q_size()], tp.cols())?,
            o_bias: (spec.o_bias && tp.rank == 0)
                .then(|| loader.load(&format!("{p}.self_attn.o_proj.bias"), &[h], Shard::Full))
                .transpose()?,
            post_norm: loader.load(&format!("{p}.post_attention_layernorm.weight"), &[h], Shard::Full)?,
            gate_up: loader.fused(&gate_up_names, Some(h), tp.rows())?,
            down: loader.load(
                &format!("{p}.mlp.down_proj.weight"),
                &[h, spec.intermediate_size],
                tp.cols(),
            )?,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn tp(&self) -> TpRank {
        self.tp
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// The KV cache shape this rank needs for `num_blocks` blocks.
    pub fn kv_cache_shape(&self, num_blocks: usize, block_size: usize) -> KvCacheShape {
        KvCacheShape {
            num_layers: self.spec.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: self.layout.num_kv_heads,
            head_dim: self.layout.head_dim,
        }
    }

    /// Runs one step: writes the batch's K/V into `cache` and returns the logits
    /// `[logits_indices.len(), vocab_size]` (the full vocabulary on every rank).
    pub fn forward(&self, b: &B, batch: &B::Batch, cache: &mut B::KvCache) -> Result<B::Tensor> {
        let eps = self.spec.rms_norm_eps;
        let vocab_start =
            if self.vocab_parallel { self.tp.rank * self.spec.vocab_size / self.tp.world } else { 0 };
        let mut residual = b.embedding(&self.embed, vocab_start, batch)?;
        if self.vocab_parallel && self.tp.world > 1 {
            b.all_reduce(&mut residual)?;
        }
        let mut pending: Option<B::Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = match pending.take() {
                None => b.rms_norm(&residual, &layer.input_norm, eps)?,
                Some(delta) => b.add_rms_norm(&mut residual, &delta, &layer.input_norm, eps)?,
            };
            let attn = self.attention(b, layer, i, &h, batch, cache)?;
            let h = b.add_rms_norm(&mut residual, &attn, &layer.post_norm, eps)?;
            let gate_up = b.linear(&h, &layer.gate_up, None)?;
            let mut mlp = b.linear(&b.silu_mul(&gate_up)?, &layer.down, None)?;
            b.all_reduce(&mut mlp)?;
            pending = Some(mlp);
        }
        let last = pending.expect("a model has at least one layer");
        let h = b.add_rms_norm(&mut residual, &last, &self.norm, eps)?;
        let h = b.gather_logit_rows(&h, batch)?;
        let logits = b.linear(&h, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        if self.vocab_parallel && self.tp.world > 1 {
            b.all_gather_cols(&logits)
        } else {
            Ok(logits)
        }
    }

    fn attention(
        &self,
        b: &B,
        layer: &Layer<B>,
        index: usize,
        h: &B::Tensor,
        batch: &B::Batch,
        cache: &mut B::KvCache,
    ) -> Result<B::Tensor> {
        let mut qkv = b.linear(h, &layer.qkv, layer.qkv_bias.as_ref())?;
        if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
            b.qk_norm(&mut qkv, q_norm, k_norm, self.spec.rms_norm_eps, self.layout)?;
        }
        b.rope_write_kv(&mut qkv, &self.rope, cache, index, batch, self.layout)?;
        let attn = b.attention(cache, index, &qkv, batch, self.layout)?;
        let mut out = b.linear(&attn, &layer.o_proj, layer.o_bias.as_ref())?;
        b.all_reduce(&mut out)?;
        Ok(out)
    }
}
