//! One step's batch as the model sees it, in host memory: the tokens of every scheduled sequence
//! flattened into one list (the "varlen" layout), with the paged-KV metadata that every backend
//! uses the same way: `slot_mapping` says where each new token's K/V goes, `block_table` where each
//! sequence's earlier K/V lives.

/// One sequence's part of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqInput {
    /// Index of the sequence's first token in the flattened token list.
    pub query_start: usize,
    /// Tokens computed for this sequence this step (a prefill chunk, or 1 when decoding).
    pub query_len: usize,
    /// Tokens in the KV cache once this step has written its own: computed before + `query_len`.
    pub context_len: usize,
    /// Cache blocks holding positions `[i * block_size, (i + 1) * block_size)`.
    pub block_table: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelInput {
    pub block_size: usize,
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Cache slot (`block * block_size + offset`) of each token.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqInput>,
    /// Rows whose logits are wanted (usually each sampled sequence's last token).
    pub logits_indices: Vec<usize>,
}

/// What one sequence computes this step, as the batch builder needs it.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// The tokens to compute this step.
    pub new_tokens: &'a [u32],
    /// Tokens already in the cache (their K/V is read, not recomputed).
    pub num_computed_tokens: usize,
    pub block_table: &'a [u32],
    /// Whether logits are wanted for the chunk's last token.
    pub wants_logits: bool,
}

impl ModelInput {
    /// Flattens sequences into one batch. Panics when a block table is too short for its tokens:
    /// the KV manager allocates blocks before a step is planned, so that is a bug upstream.
    pub fn build(block_size: usize, chunks: &[SeqChunk<'_>]) -> Self {
        let mut input = ModelInput { block_size, ..Default::default() };
        for chunk in chunks {
            let query_start = input.token_ids.len();
            let context_len = chunk.num_computed_tokens + chunk.new_tokens.len();
            assert!(
                chunk.block_table.len() * block_size >= context_len,
                "block table of {} blocks cannot hold {context_len} tokens",
                chunk.block_table.len()
            );
            for (i, &token) in chunk.new_tokens.iter().enumerate() {
                let pos = chunk.num_computed_tokens + i;
                input.token_ids.push(token);
                input.positions.push(pos as u32);
                input.slot_mapping.push(
                    chunk.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32,
                );
            }
            if chunk.wants_logits && !chunk.new_tokens.is_empty() {
                input.logits_indices.push(input.token_ids.len() - 1);
            }
            input.seqs.push(SeqInput {
                query_start,
                query_len: chunk.new_tokens.len(),
                context_len,
                block_table: chunk.block_table.to_vec(),
            });
        }
        input
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Whether every row is a logits row, in order (a decode batch): gathering the logits rows
    /// then changes nothing.
    pub fn every_row_wants_logits(&self) -> bool {
        self.logits_indices.iter().copied().eq(0..self.num_tokens())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let input = ModelInput::build(
            4,
            &[
                SeqChunk {
                    new_tokens: &[7, 8, 9],
                    num_computed_tokens: 3,
                    block_table: &[5, 2],
                    wants_logits: true,
                },
                SeqChunk { new_tokens: &[1], num_computed_tokens: 0, block_table: &[9], wants_logits: false },
            ],
        );
        assert_eq!(input.positions, vec![3, 4, 5, 0]);
        assert_eq!(input.slot_mapping, vec![23, 8, 9, 36]);
        assert_eq!(input.logits_indices, vec![2]);
        assert_eq!(
            input.seqs[1],
            SeqInput { query_start: 3, query_len: 1, context_len: 1, block_table: vec![9] }
        );
    }
}
