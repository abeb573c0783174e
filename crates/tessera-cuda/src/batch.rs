//! A step's `ModelInput` as the kernels read it: every index array in one `u32` buffer, so a step
//! uploads its metadata with one copy, plus the host-side bounds the launchers check against.
//!
//! Layout, for `rows` token rows: the batch's longest KV length (one value, which attention
//! partitions by), token ids, positions, slots, logits indices, each row's offset into the block
//! tables, each row's KV length, then the block tables themselves, then the tiles
//! of `prefill_attention` (first row and row count of each): those of sequences computing several
//! tokens first, then the one-row tiles of the others, whose first rows double as the row map of
//! `decode_attention` in a step that mixes prompt chunks and decodes. Everything before the tables is
//! `rows` long, which is what lets a CUDA graph captured for `rows` rows read any later batch
//! padded to that size from the same buffer (`graphs.rs`); the tables vary in length from step to
//! step, and the tiles after them serve prefill steps only, which graphs never run.

use crate::launch::{AttentionMeta, PrefillTiles, PREFILL_TILE_ROWS};
use cudarc::driver::{CudaSlice, CudaView};
use std::ops::Range;
use tessera_model::ModelInput;

/// Slot of a padding row: `write_kv` skips it. Padding rows also have KV length 0, for which
/// attention writes zeros, so they read nothing and write nothing of the cache.
pub const PAD_SLOT: u32 = u32::MAX;

/// Where each array lives in the metadata buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub max_kv_len: Range<usize>,
    pub token_ids: Range<usize>,
    pub positions: Range<usize>,
    pub slot_mapping: Range<usize>,
    pub logits_indices: Range<usize>,
    pub row_table_start: Range<usize>,
    pub row_kv_len: Range<usize>,
    pub block_tables: Range<usize>,
    pub tile_row_start: Range<usize>,
    pub tile_num_rows: Range<usize>,
    /// The part of `tile_row_start` that holds the one-row tiles (sequences computing one token).
    pub decode_rows: Range<usize>,
}

impl Layout {
    /// Whether every row, padding included, is a logits row. `ModelInput::build` lists a batch's
    /// logits rows in increasing order and padding rows point at themselves, so then the logits
    /// rows are the rows in order and gathering them changes nothing.
    pub fn every_row_wants_logits(&self) -> bool {
        self.logits_indices.len() == self.token_ids.len()
    }
}

/// The largest values of the real (non-padding) rows, for host-side checks; 0 when there are none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    pub max_kv_len: usize,
    pub max_position: usize,
    pub max_slot: usize,
    pub max_block: usize,
    /// The most tokens any sequence computes this step (1 for pure decode).
    pub max_query_len: usize,
}

/// A batch's metadata on the host, ready to upload.
#[derive(Debug)]
pub struct Encoded {
    pub meta: Vec<u32>,
    pub layout: Layout,
    pub bounds: Bounds,
}

/// Encodes `input`, padded to `rows` token rows (`rows >= input.num_tokens()`). Padding rows get
/// token 0, position 0, `PAD_SLOT`, KV length 0, and a logits index pointing at themselves, so a
/// batch whose every row wants logits keeps doing so once padded.
pub fn encode(input: &ModelInput, rows: usize) -> Encoded {
    let n = input.num_tokens();
    assert!(rows >= n, "cannot pad {n} rows down to {rows}");
    assert!(input.logits_indices.iter().all(|&i| i < n), "logits index beyond the batch");
    let num_logits = input.logits_indices.len() + (rows - n);
    // Only the blocks that hold the context are read; a sequence may own more (allocated ahead).
    let tables: Vec<&[u32]> = input
        .seqs
        .iter()
        .map(|s| {
            let needed = s.context_len.div_ceil(input.block_size);
            assert!(s.block_table.len() >= needed, "block table too short");
            &s.block_table[..needed]
        })
        .collect();
    let table_len: usize = tables.iter().map(|t| t.len()).sum();
    let mut meta = Vec::with_capacity(1 + 7 * rows + num_logits + table_len);
    let section = |meta: &mut Vec<u32>, values: &mut dyn Iterator<Item = u32>, len: usize| {
        let start = meta.len();
        meta.extend(values);
        assert_eq!(meta.len() - start, len, "metadata section of the wrong length");
        start..meta.len()
    };
    let pad = rows - n;
    // Filled in once the rows' KV lengths are known.
    let max_kv_len = section(&mut meta, &mut std::iter::once(0), 1);
    let token_ids =
        section(&mut meta, &mut input.token_ids.iter().copied().chain(std::iter::repeat_n(0, pad)), rows);
    let positions =
        section(&mut meta, &mut input.positions.iter().copied().chain(std::iter::repeat_n(0, pad)), rows);
    let slot_mapping = section(
        &mut meta,
        &mut input.slot_mapping.iter().copied().chain(std::iter::repeat_n(PAD_SLOT, pad)),
        rows,
    );
    let logits_indices = section(
        &mut meta,
        &mut input.logits_indices.iter().map(|&i| i as u32).chain(n as u32..rows as u32),
        num_logits,
    );
    let (mut table_start, mut kv_len) = (vec![0u32; rows], vec![0u32; rows]);
    let mut offset = 0u32;
    for (seq, table) in input.seqs.iter().zip(&tables) {
        for i in 0..seq.query_len {
            let row = seq.query_start + i;
            table_start[row] = offset;
            // Causality: the token at position p sees positions 0..=p.
            kv_len[row] = (seq.context_len - seq.query_len + i + 1) as u32;
        }
        offset += table.len() as u32;
    }
    let bounds = Bounds {
        max_kv_len: kv_len.iter().copied().max().unwrap_or(0) as usize,
        max_position: input.positions.iter().copied().max().unwrap_or(0) as usize,
        max_slot: input.slot_mapping.iter().copied().max().unwrap_or(0) as usize,
        max_block: tables.iter().flat_map(|t| t.iter().copied()).max().unwrap_or(0) as usize,
        max_query_len: input.seqs.iter().map(|s| s.query_len).max().unwrap_or(0),
    };
    meta[max_kv_len.start] = bounds.max_kv_len as u32;
    let row_table_start = section(&mut meta, &mut table_start.into_iter(), rows);
    let row_kv_len = section(&mut meta, &mut kv_len.into_iter(), rows);
    let block_tables = section(&mut meta, &mut tables.iter().flat_map(|t| t.iter().copied()), table_len);
    let (mut tile_starts, mut tile_rows) = (Vec::new(), Vec::new());
    let (multi, single): (Vec<_>, Vec<_>) = input.seqs.iter().partition(|s| s.query_len > 1);
    for seq in multi.iter().chain(&single) {
        for first in (0..seq.query_len).step_by(PREFILL_TILE_ROWS) {
            tile_starts.push((seq.query_start + first) as u32);
            tile_rows.push((seq.query_len - first).min(PREFILL_TILE_ROWS) as u32);
        }
    }
    let num_tiles = tile_starts.len();
    let tile_row_start = section(&mut meta, &mut tile_starts.into_iter(), num_tiles);
    let tile_num_rows = section(&mut meta, &mut tile_rows.into_iter(), num_tiles);
    let decode_rows = tile_row_start.end - single.len()..tile_row_start.end;
    Encoded {
        meta,
        layout: Layout {
            max_kv_len,
            token_ids,
            positions,
            slot_mapping,
            logits_indices,
            row_table_start,
            row_kv_len,
            block_tables,
            tile_row_start,
            tile_num_rows,
            decode_rows,
        },
        bounds,
    }
}

/// A batch on the device: the metadata buffer, its layout, and the bounds launchers check.
///
/// An eager batch's bounds are those of its rows. A graph's batch (`graphs.rs`) carries capacity
/// bounds instead: `max_kv_len` is the longest context any replay may bring (so attention's grid
/// has room for the partitions of any later step; each replay's own longest context is in the
/// metadata), `max_query_len` 1 (decode), the others 0; the graph code checks each replayed
/// batch against the cache before uploading it.
pub struct CudaBatch {
    pub(crate) meta: CudaSlice<u32>,
    pub(crate) layout: Layout,
    pub(crate) bounds: Bounds,
    pub(crate) block_size: usize,
}

impl CudaBatch {
    pub(crate) fn view(&self, range: &Range<usize>) -> CudaView<'_, u32> {
        self.meta.slice(range.clone())
    }

    pub fn num_tokens(&self) -> usize {
        self.layout.token_ids.len()
    }

    pub(crate) fn attention_meta(&self, max_splits: usize) -> AttentionMeta<'_> {
        AttentionMeta {
            block_tables: self.view(&self.layout.block_tables),
            row_table_start: self.view(&self.layout.row_table_start),
            row_kv_len: self.view(&self.layout.row_kv_len),
            block_size: self.block_size as u32,
            max_kv_len: self.view(&self.layout.max_kv_len),
            max_splits: max_splits as u32,
            row_map: None,
        }
    }

    /// The metadata of the rows of sequences computing one token (decode rows), for a step whose
    /// other rows run `prefill_attention` over `multi_row_tiles`.
    pub(crate) fn decode_rows_meta(&self, max_splits: usize) -> AttentionMeta<'_> {
        AttentionMeta {
            row_map: Some(self.view(&self.layout.decode_rows)),
            ..self.attention_meta(max_splits)
        }
    }

    pub(crate) fn num_decode_rows(&self) -> usize {
        self.layout.decode_rows.len()
    }

    /// The tiles of sequences computing several tokens (all of them but the one-row tiles).
    pub(crate) fn multi_row_tiles(&self) -> PrefillTiles<'_> {
        let n = self.layout.tile_row_start.len() - self.num_decode_rows();
        let (starts, rows) = (&self.layout.tile_row_start, &self.layout.tile_num_rows);
        PrefillTiles {
            row_start: self.view(&(starts.start..starts.start + n)),
            num_rows: self.view(&(rows.start..rows.start + n)),
        }
    }

    /// Every tile of the batch.
    pub(crate) fn all_tiles(&self) -> PrefillTiles<'_> {
        PrefillTiles {
            row_start: self.view(&self.layout.tile_row_start),
            num_rows: self.view(&self.layout.tile_num_rows),
        }
    }

    /// Gives the metadata buffer back (a graph's static buffer outlives each capture's batch).
    pub(crate) fn into_meta(self) -> CudaSlice<u32> {
        self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::SeqChunk;

    fn decode_input() -> ModelInput {
        ModelInput::build(
            4,
            &[
                SeqChunk {
                    new_tokens: &[7],
                    num_computed_tokens: 5,
                    block_table: &[3, 9],
                    wants_logits: true,
                },
                SeqChunk { new_tokens: &[8], num_computed_tokens: 0, block_table: &[4], wants_logits: true },
            ],
        )
    }

    #[test]
    fn unpadded_layout_is_compact_with_tables_last() {
        let e = encode(&decode_input(), 2);
        assert_eq!(e.meta[e.layout.max_kv_len.clone()], [6]);
        assert_eq!(e.meta[e.layout.token_ids.clone()], [7, 8]);
        assert_eq!(e.meta[e.layout.positions.clone()], [5, 0]);
        assert_eq!(e.meta[e.layout.slot_mapping.clone()], [9 * 4 + 1, 4 * 4]);
        assert_eq!(e.meta[e.layout.logits_indices.clone()], [0, 1]);
        assert_eq!(e.meta[e.layout.row_table_start.clone()], [0, 2]);
        assert_eq!(e.meta[e.layout.row_kv_len.clone()], [6, 1]);
        assert_eq!(e.meta[e.layout.block_tables.clone()], [3, 9, 4]);
        assert_eq!(e.meta[e.layout.tile_row_start.clone()], [0, 1]);
        assert_eq!(e.meta[e.layout.tile_num_rows.clone()], [1, 1]);
        assert_eq!(e.meta[e.layout.decode_rows.clone()], [0, 1]);
        assert_eq!(e.layout.tile_num_rows.end, e.meta.len());
        let bounds = Bounds { max_kv_len: 6, max_position: 5, max_slot: 37, max_block: 9, max_query_len: 1 };
        assert_eq!(e.bounds, bounds);
    }

    #[test]
    fn padding_rows_write_nothing_and_read_nothing() {
        let e = encode(&decode_input(), 4);
        let l = &e.layout;
        // Everything but the tables sits at the same place for any batch padded to 4 rows.
        assert_eq!((l.token_ids.start, l.row_kv_len.end, l.block_tables.start), (1, 25, 25));
        assert_eq!(e.meta[l.max_kv_len.clone()], [6], "padding rows do not count");
        assert_eq!(e.meta[l.token_ids.clone()], [7, 8, 0, 0]);
        assert_eq!(e.meta[l.slot_mapping.clone()], [37, 16, PAD_SLOT, PAD_SLOT]);
        assert_eq!(e.meta[l.logits_indices.clone()], [0, 1, 2, 3]);
        assert!(l.every_row_wants_logits(), "a padded decode batch keeps its rows");
        assert_eq!(e.meta[l.row_kv_len.clone()], [6, 1, 0, 0]);
        assert_eq!(e.bounds.max_slot, 37, "padding is not a real slot");
    }

    #[test]
    fn only_the_blocks_holding_the_context_are_sent() {
        let input = ModelInput::build(
            4,
            &[SeqChunk {
                new_tokens: &[1],
                num_computed_tokens: 4,
                block_table: &[6, 2, 8, 5],
                wants_logits: true,
            }],
        );
        let e = encode(&input, 1);
        assert_eq!(e.meta[e.layout.block_tables.clone()], [6, 2]);
        assert_eq!(e.bounds.max_block, 6, "blocks beyond the context are not bounds-checked either");
    }

    #[test]
    fn prefill_rows_see_a_causal_prefix() {
        let input = ModelInput::build(
            4,
            &[SeqChunk {
                new_tokens: &[1, 2, 3],
                num_computed_tokens: 2,
                block_table: &[0, 1],
                wants_logits: false,
            }],
        );
        let e = encode(&input, 3);
        assert_eq!(e.meta[e.layout.row_kv_len.clone()], [3, 4, 5]);
        assert!(e.layout.logits_indices.is_empty());
        assert!(!e.layout.every_row_wants_logits());
        assert_eq!(e.meta[e.layout.tile_row_start.clone()], [0]);
        assert_eq!(e.meta[e.layout.tile_num_rows.clone()], [3]);
        assert!(e.layout.decode_rows.is_empty());
        assert_eq!(e.bounds.max_query_len, 3);
    }

    #[test]
    fn decode_rows_of_a_mixed_step_follow_the_prompt_tiles() {
        let prompt: Vec<u32> = (0..40).collect();
        let prompt_table: Vec<u32> = (1..=10).collect();
        let input = ModelInput::build(
            4,
            &[
                SeqChunk { new_tokens: &[5], num_computed_tokens: 3, block_table: &[0], wants_logits: true },
                SeqChunk {
                    new_tokens: &prompt,
                    num_computed_tokens: 0,
                    block_table: &prompt_table,
                    wants_logits: true,
                },
                SeqChunk {
                    new_tokens: &[6],
                    num_computed_tokens: 7,
                    block_table: &[11, 12],
                    wants_logits: true,
                },
            ],
        );
        let e = encode(&input, input.num_tokens());
        // The prompt's rows 1..41 in tiles of 32 and 8, then the decode rows 0 and 41.
        assert_eq!(PREFILL_TILE_ROWS, 32);
        assert_eq!(e.meta[e.layout.tile_row_start.clone()], [1, 33, 0, 41]);
        assert_eq!(e.meta[e.layout.tile_num_rows.clone()], [32, 8, 1, 1]);
        assert_eq!(e.meta[e.layout.decode_rows.clone()], [0, 41]);
        // Logits of the decode rows and of the prompt's last token only: the last layer narrows.
        assert_eq!(e.meta[e.layout.logits_indices.clone()], [0, 40, 41]);
        assert!(!e.layout.every_row_wants_logits());
    }
}
