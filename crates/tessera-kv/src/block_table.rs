//! Slot mapping: where in the paged KV cache each token position of a sequence lives. Workers
//! compute it from their mirror of the block table; the same function serves both sides.

use tessera_core::BlockId;

/// The flat cache slot of token `position`: `block_table[position / block_size] * block_size +
/// position % block_size`.
pub fn slot(block_table: &[BlockId], block_size: usize, position: usize) -> usize {
    let block = block_table[position / block_size];
    block.0 as usize * block_size + position % block_size
}

/// Slots of positions `start .. start + len`, as a worker writes them for one step.
pub fn slot_mapping(block_table: &[BlockId], block_size: usize, start: usize, len: usize) -> Vec<usize> {
    (start..start + len).map(|p| slot(block_table, block_size, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let table = [BlockId(5), BlockId(2)];
        assert_eq!(slot_mapping(&table, 4, 2, 4), vec![22, 23, 8, 9]);
        assert_eq!(slot(&table, 4, 0), 20);
    }
}
