//! One sequence through the model, without a scheduler: the simplest correct use of the paged KV
//! cache. `tessera generate` uses it until the engine exists; tests use it against references.

use crate::backend::Backend;
use crate::error::Result;
use crate::input::{ModelInput, SeqChunk};
use crate::llama::Model;

pub struct SingleSequence<'m, B: Backend> {
    model: &'m Model<B>,
    cache: B::KvCache,
    block_size: usize,
    block_table: Vec<u32>,
    num_computed_tokens: usize,
}

impl<'m, B: Backend> SingleSequence<'m, B> {
    /// A sequence whose tokens may fill `block_table` (any distinct block ids of a cache of
    /// `num_blocks`); tests pass scrambled tables to prove that paging is honoured.
    pub fn new(
        backend: &B,
        model: &'m Model<B>,
        block_size: usize,
        num_blocks: usize,
        block_table: Vec<u32>,
    ) -> Result<Self> {
        let cache = backend.alloc_kv_cache(model.kv_cache_shape(num_blocks, block_size))?;
        Ok(SingleSequence { model, cache, block_size, block_table, num_computed_tokens: 0 })
    }

    /// Capacity in tokens.
    pub fn max_tokens(&self) -> usize {
        (self.block_table.len() * self.block_size).min(self.model.max_model_len())
    }

    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    /// Computes `tokens` after those already computed and returns the last token's logits.
    pub fn step(&mut self, backend: &B, tokens: &[u32]) -> Result<Vec<f32>> {
        assert!(!tokens.is_empty(), "a step computes at least one token");
        assert!(self.num_computed_tokens + tokens.len() <= self.max_tokens(), "sequence exceeds its blocks");
        let chunk = SeqChunk {
            new_tokens: tokens,
            num_computed_tokens: self.num_computed_tokens,
            block_table: &self.block_table,
            wants_logits: true,
        };
        let input = ModelInput::build(self.block_size, &[chunk]);
        let batch = backend.prepare(&input)?;
        let logits = self.model.forward(backend, &batch, &mut self.cache)?;
        self.num_computed_tokens += tokens.len();
        backend.to_host(&logits)
    }
}

/// Index of the largest value (the first one on ties), the greedy choice.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}
