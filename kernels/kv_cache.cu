// Writes each token's k and v heads (taken from its fused q|k|v row) into its slot of one layer's
// paged cache. Cache layout: [num_blocks, block_size, num_kv_heads, head_dim] for K and for V, so a
// slot (`block * block_size + offset`) is one contiguous run of kv_width elements.
// A slot of 0xffffffff marks a padding row (CUDA-graph batches) and is skipped.
// Grid: one block per token row; threads stride over kv_width.

extern "C" __global__ void write_kv(bf16* __restrict__ k_cache, bf16* __restrict__ v_cache,
                                   const bf16* __restrict__ qkv,
                                   const u32* __restrict__ slot_mapping, u32 q_width,
                                   u32 kv_width, u32 row_width) {
    pdl_start();
    u32 slot = slot_mapping[blockIdx.x];
    if (slot == 0xffffffffu) return;
    const bf16* row = qkv + (size_t)blockIdx.x * row_width;
    bf16* k = k_cache + (size_t)slot * kv_width;
    bf16* v = v_cache + (size_t)slot * kv_width;
    for (u32 i = threadIdx.x; i < kv_width; i += blockDim.x) {
        k[i] = row[q_width + i];
        v[i] = row[q_width + kv_width + i];
    }
}
