//! Launchers of the attention kernels (attention.cu, decode_attention.cu, prefill_attention.cu)
//! and the per-row metadata they read.

use super::builder::KernelLaunch;
use super::{cfg, row_threads, Heads, SHARED_LIMIT};
use crate::device::Device;
use cudarc::driver::{CudaSlice, CudaView};
use half::bf16;
use tessera_model::Result;

/// Compile-time constants of attention.cu.
pub const ATTN_THREADS: usize = 128;
pub const ATTN_CHUNK: usize = 128;
pub const ATTN_ACC: usize = 16;
pub const ATTN_GMAX: usize = 8;
/// Keys of the shortest partition of a context split (common.cuh's ATTN_MIN_PART; partitions are
/// also whole multiples of its ATTN_PART, 32 keys).
pub const ATTN_MIN_PART: usize = 64;
/// Threads of a `decode_attention` block (decode_attention.cu's DA_WARPS warps).
const DECODE_ATTN_THREADS: u32 = 128;

/// The per-row metadata the attention kernels read, and how the context is split.
pub struct AttentionMeta<'a> {
    pub block_tables: CudaView<'a, u32>,
    pub row_table_start: CudaView<'a, u32>,
    pub row_kv_len: CudaView<'a, u32>,
    pub block_size: u32,
    /// The batch's longest context (one value on the device): the kernels split it `max_splits`
    /// ways, in whole chunks, so a captured graph partitions each replay for its own contexts.
    pub max_kv_len: CudaView<'a, u32>,
    /// The grid's partitions per row: the most any row may use.
    pub max_splits: u32,
    /// The rows to attend for, when not all of them (the decode rows of a step with prompt
    /// chunks, whose other rows go to `prefill_attention`).
    pub row_map: Option<CudaView<'a, u32>>,
}

impl AttentionMeta<'_> {
    /// Rows the launch covers: the mapped ones, or every row of the batch.
    fn grid_rows(&self) -> usize {
        self.row_map.as_ref().map_or(self.row_kv_len.len(), |m| m.len())
    }

    fn check_partials(&self, part_o: &CudaSlice<f32>, part_ml: &CudaSlice<f32>, heads: Heads) {
        let (rows, splits) = (self.row_kv_len.len(), self.max_splits as usize);
        assert!(self.max_kv_len.len() == 1 && splits >= 1, "attention: the batch's context bound");
        assert!(self.grid_rows() <= 65535, "attention over {} rows exceeds the grid", self.grid_rows());
        if splits > 1 {
            let entries = rows * heads.num_heads as usize * splits;
            assert!(part_o.len() >= entries * heads.head_dim as usize, "partials too small");
            assert!(part_ml.len() >= entries * 2, "partials too small");
        }
    }
}

/// Passes the row map, or a null pointer for "every row" (the kernels' `row_map ? ... : ...`).
fn push_row_map(b: &mut KernelLaunch<'_>, map: &Option<CudaView<'_, u32>>) {
    const EVERY_ROW: u64 = 0;
    match map {
        Some(map) => b.arg(map),
        None => b.arg(&EVERY_ROW),
    };
}

#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    part_o: &mut CudaSlice<f32>,
    part_ml: &mut CudaSlice<f32>,
    qkv: &CudaSlice<bf16>,
    k_cache: &CudaSlice<bf16>,
    v_cache: &CudaSlice<bf16>,
    meta: &AttentionMeta<'_>,
    heads: Heads,
) -> Result<()> {
    let rows = meta.row_kv_len.len();
    heads.check(qkv.len(), rows);
    let (group, d) = ((heads.num_heads / heads.num_kv_heads) as usize, heads.head_dim as usize);
    assert!(d <= 256 && group * d <= ATTN_ACC * ATTN_THREADS, "attention: head_dim {d}, group {group}");
    assert!(meta.row_map.is_none(), "paged_attention covers every row");
    assert_eq!(out.len(), rows * heads.num_heads as usize * d);
    meta.check_partials(part_o, part_ml, heads);
    if rows == 0 {
        return Ok(());
    }
    // The kernel's fast path (16-byte K/V loads) adds a reduction area of one partial sum per
    // key slot; its condition must match attention.cu's `fast`.
    let d8 = d / 8;
    let fast = d.is_multiple_of(8) && d8 > 0 && 32 % d8 == 0 && group <= ATTN_GMAX;
    let reduce = if fast { (ATTN_THREADS / d8) * group * d } else { 0 };
    let smem = (group * d + group * ATTN_CHUNK + 3 * group + ATTN_CHUNK + reduce) * 4;
    assert!(smem <= SHARED_LIMIT);
    let scale = 1.0 / (d as f32).sqrt();
    let mut b = KernelLaunch::new(device, "paged_attention");
    b.arg(out).arg(part_o).arg(part_ml).arg(qkv).arg(k_cache).arg(v_cache);
    b.arg(&meta.block_tables).arg(&meta.row_table_start).arg(&meta.row_kv_len).arg(&scale);
    b.arg(&heads.num_heads).arg(&heads.num_kv_heads).arg(&heads.head_dim).arg(&heads.row_width);
    b.arg(&meta.block_size).arg(&meta.max_kv_len).arg(&meta.max_splits);
    let grid = (heads.num_kv_heads, rows as u32, meta.max_splits);
    // SAFETY: block tables, lengths and slots were validated on the host (`prepare`); partials
    // hold max_splits entries per (row, head) when rows are split.
    unsafe { b.launch(cfg(grid, ATTN_THREADS as u32, smem as u32)) }?;
    attention_reduce(device, out, part_o, part_ml, meta, heads)
}

/// Whether `decode_attention` handles this head layout: head_dim 64 or 128, group at most 8.
pub fn decode_attention_supports(heads: Heads) -> bool {
    let group = heads.num_heads / heads.num_kv_heads;
    matches!(heads.head_dim, 64 | 128) && (1..=8).contains(&group)
}

/// The instance of decode_attention.cu for `heads`. Instances exist for groups 1, 2, 4 and 8; a
/// group in between runs in the next one up. `TESSERA_DECODE_ATTENTION=<instance>` picks another
/// instance of the same layout, to measure candidates against each other (op_bench); it is
/// ignored unless it names an instance for this head_dim and group.
fn decode_attention_kernel(heads: Heads) -> &'static str {
    let group = (heads.num_heads / heads.num_kv_heads).next_power_of_two();
    let name = match (heads.head_dim, group) {
        (64, 1) => "decode_attention_d64_g1",
        (64, 2) => "decode_attention_d64_g2",
        (64, 4) => "decode_attention_d64_g4",
        (64, _) => "decode_attention_d64_g8",
        (_, 1) => "decode_attention_d128_g1",
        (_, 2) => "decode_attention_d128_g2",
        (_, 4) => "decode_attention_d128_g4",
        _ => "decode_attention_d128_g8",
    };
    // Read at each launch (tests switch it within one process); only the variant's own layout
    // takes it.
    let variant_chosen =
        std::env::var_os("TESSERA_DECODE_ATTENTION").is_some_and(|v| v == DECODE_ATTENTION_VARIANT);
    if variant_chosen && name == "decode_attention_d128_g4" {
        DECODE_ATTENTION_VARIANT
    } else {
        name
    }
}

/// The one extra instance of decode_attention.cu (a candidate for the Llama 8B layout).
pub const DECODE_ATTENTION_VARIANT: &str = "decode_attention_d128_g4_nl8";

/// Attention of single rows at memory speed (decode_attention.cu), for the mapped rows or every
/// row of the batch.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    part_o: &mut CudaSlice<f32>,
    part_ml: &mut CudaSlice<f32>,
    qkv: &CudaSlice<bf16>,
    k_cache: &CudaSlice<bf16>,
    v_cache: &CudaSlice<bf16>,
    meta: &AttentionMeta<'_>,
    heads: Heads,
) -> Result<()> {
    let rows = meta.row_kv_len.len();
    heads.check(qkv.len(), rows);
    assert!(decode_attention_supports(heads), "decode_attention: head_dim {}", heads.head_dim);
    assert_eq!(out.len(), rows * (heads.num_heads * heads.head_dim) as usize);
    meta.check_partials(part_o, part_ml, heads);
    let grid_rows = meta.grid_rows();
    if grid_rows == 0 {
        return Ok(());
    }
    let name = decode_attention_kernel(heads);
    let scale = 1.0 / (heads.head_dim as f32).sqrt();
    let mut b = KernelLaunch::new(device, name);
    b.arg(out).arg(part_o).arg(part_ml).arg(qkv).arg(k_cache).arg(v_cache);
    b.arg(&meta.block_tables).arg(&meta.row_table_start).arg(&meta.row_kv_len);
    push_row_map(&mut b, &meta.row_map);
    b.arg(&scale).arg(&heads.num_heads).arg(&heads.num_kv_heads).arg(&heads.row_width);
    b.arg(&meta.block_size).arg(&meta.max_kv_len).arg(&meta.max_splits);
    let grid = (heads.num_kv_heads, grid_rows as u32, meta.max_splits);
    // SAFETY: as paged_attention; mapped rows are rows of the batch (built by `encode`).
    unsafe { b.launch(cfg(grid, DECODE_ATTN_THREADS, 0)) }?;
    attention_reduce(device, out, part_o, part_ml, meta, heads)
}

/// Merges the partitions of split rows (a no-op launch-free return when nothing is split).
fn attention_reduce(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    part_o: &CudaSlice<f32>,
    part_ml: &CudaSlice<f32>,
    meta: &AttentionMeta<'_>,
    heads: Heads,
) -> Result<()> {
    if meta.max_splits <= 1 {
        return Ok(());
    }
    let mut b = KernelLaunch::new(device, "attention_reduce");
    b.arg(out).arg(part_o).arg(part_ml).arg(&meta.row_kv_len);
    push_row_map(&mut b, &meta.row_map);
    b.arg(&heads.num_heads).arg(&heads.head_dim).arg(&meta.max_kv_len).arg(&meta.max_splits);
    let grid = (heads.num_heads, meta.grid_rows() as u32, 1);
    // Each partition's (max, sum), staged in shared memory.
    let shared = 2 * meta.max_splits as usize * std::mem::size_of::<f32>();
    assert!(shared <= SHARED_LIMIT, "{} partitions per row", meta.max_splits);
    // SAFETY: reads the partials the attention launch wrote for rows with more than one
    // partition, at most `max_splits` per row, whose (max, sum) pairs fit the shared memory.
    unsafe { b.launch(cfg(grid, row_threads(heads.head_dim as usize).min(128), shared as u32)) }
}

/// Query rows per tile of `prefill_attention` (two mma row blocks a warp).
pub const PREFILL_TILE_ROWS: usize = 32;

/// Whether `prefill_attention` handles this head layout on a GPU whose blocks may take
/// `shared_optin` bytes of shared memory: head_dim 64 or 128, one warp per query head of a KV
/// group (at most 8), and the block's shared memory within the GPU's limit.
pub fn prefill_attention_supports(heads: Heads, shared_optin: usize) -> bool {
    let group = heads.num_heads / heads.num_kv_heads;
    matches!(heads.head_dim, 64 | 128)
        && (1..=8).contains(&group)
        && prefill_attention_smem(heads.head_dim as usize, group as usize) <= shared_optin
}

/// Dynamic shared memory of a `prefill_attention_d*` block: the K and V tiles of 64 keys and every
/// warp's `PREFILL_TILE_ROWS` query rows, rows of head_dim + 8 bf16 (prefill_attention.cu). 69.6
/// KB for the 8B layout, above the 48 KB a launch gets without asking.
pub fn prefill_attention_smem(head_dim: usize, group: usize) -> usize {
    (2 * 64 + group * PREFILL_TILE_ROWS) * (head_dim + 8) * 2
}

/// The kernel of prefill_attention.cu for `heads`.
fn prefill_attention_kernel(heads: Heads) -> &'static str {
    match heads.head_dim {
        64 => "prefill_attention_d64",
        _ => "prefill_attention_d128",
    }
}

/// Tiles of up to `PREFILL_TILE_ROWS` consecutive rows of one sequence: their first rows and row
/// counts.
pub struct PrefillTiles<'a> {
    pub row_start: CudaView<'a, u32>,
    pub num_rows: CudaView<'a, u32>,
}

/// Tensor-core attention for every row of the batch, tile by tile (see prefill_attention.cu).
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention(
    device: &Device,
    out: &mut CudaSlice<bf16>,
    qkv: &CudaSlice<bf16>,
    k_cache: &CudaSlice<bf16>,
    v_cache: &CudaSlice<bf16>,
    meta: &AttentionMeta<'_>,
    tiles: &PrefillTiles<'_>,
    heads: Heads,
) -> Result<()> {
    let rows = meta.row_kv_len.len();
    heads.check(qkv.len(), rows);
    assert!(prefill_attention_supports(heads, device.shared_optin), "prefill_attention: {heads:?}");
    assert_eq!(out.len(), rows * (heads.num_heads * heads.head_dim) as usize);
    let num_tiles = tiles.row_start.len();
    assert!(num_tiles <= 65535, "prefill attention over {num_tiles} tiles exceeds the grid");
    if num_tiles == 0 {
        return Ok(());
    }
    let group = heads.num_heads / heads.num_kv_heads;
    let scale = 1.0 / (heads.head_dim as f32).sqrt();
    let mut b = KernelLaunch::new(device, prefill_attention_kernel(heads));
    b.arg(out).arg(qkv).arg(k_cache).arg(v_cache);
    b.arg(&meta.block_tables).arg(&meta.row_table_start).arg(&meta.row_kv_len);
    b.arg(&tiles.row_start).arg(&tiles.num_rows).arg(&scale);
    b.arg(&heads.num_heads).arg(&heads.num_kv_heads).arg(&heads.row_width).arg(&meta.block_size);
    let smem = prefill_attention_smem(heads.head_dim as usize, group as usize) as u32;
    // SAFETY: tiles cover at most PREFILL_TILE_ROWS rows of the batch within one sequence each
    // (built by `prepare`); block tables, lengths and slots were validated on the host; the
    // shared memory is what the kernel lays out, within the limit the device set at load.
    unsafe { b.launch(cfg((heads.num_kv_heads, num_tiles as u32, 1), 32 * group, smem)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared memory of an H100 or H200 SM: 228 KB, of which one block may take 227 KB; each
    /// resident block also costs 1 KB, and `prefill_attention` adds 512 bytes of static slots.
    const SM_SHARED: usize = 228 * 1024;
    const BLOCK_SHARED: usize = 227 * 1024;
    const PER_BLOCK: usize = 1024 + 512;

    #[test]
    fn prefill_attention_blocks_fit_an_sm() {
        // The 8B layout (group 4, head_dim 128): two blocks an SM, as many as 254 registers allow.
        assert_eq!(prefill_attention_smem(128, 4), 69_632);
        assert!(2 * (prefill_attention_smem(128, 4) + PER_BLOCK) <= SM_SHARED);
        // The largest launch (group 8) still fits a block; the device raises every kernel's
        // limit to it at load.
        assert!(prefill_attention_smem(128, 8) + 512 <= BLOCK_SHARED);
        assert!(prefill_attention_smem(64, 8) < prefill_attention_smem(128, 8));
    }

    #[test]
    fn prefill_attention_needs_its_shared_memory() {
        let heads =
            |num_heads, num_kv_heads, head_dim| Heads { num_heads, num_kv_heads, head_dim, row_width: 0 };
        // An H100 (227 KB a block): every supported layout.
        assert!(prefill_attention_supports(heads(32, 8, 128), BLOCK_SHARED));
        assert!(prefill_attention_supports(heads(64, 8, 128), BLOCK_SHARED));
        // A GPU with 99 KB a block (an L40S): the 8B layout (69.6 KB) still runs, group 8 at
        // head_dim 128 (104 KB) falls back to paged_attention, head_dim 64 (55 KB) does not.
        assert!(prefill_attention_supports(heads(32, 8, 128), 99 * 1024));
        assert!(!prefill_attention_supports(heads(64, 8, 128), 99 * 1024));
        assert!(prefill_attention_supports(heads(64, 8, 64), 99 * 1024));
        // Layouts the kernel does not handle, whatever the memory.
        assert!(!prefill_attention_supports(heads(32, 8, 256), BLOCK_SHARED));
        assert!(!prefill_attention_supports(heads(48, 4, 128), BLOCK_SHARED));
    }
}
