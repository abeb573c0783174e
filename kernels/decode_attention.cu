// Paged attention for rows that each attend on their own (decode rows: one new token of a
// sequence), built to stream K/V at memory speed. attention.cu's `paged_attention` does the same
// job for any head layout, but its warps wait for every load before issuing the next and
// synchronise the block per chunk of keys: on an H100 it reached about 17% of the memory
// bandwidth at batch 64 and spent 48 us per layer on a single 1024-token row.
//
// Here each warp works through its own tiles of TILE keys with its own online softmax, and the
// block meets only once, at the end, to merge its warps. A key is read by LPK = D / 8 lanes,
// 16 bytes (8 dims) each, so one warp-wide load covers KPL = 32 / LPK keys, and a lane issues the
// NL = TILE / KPL loads of K and of V of a whole tile before it uses any of them: up to 2 * NL
// 16-byte loads in flight per lane. The lane keeps its 8 dims of the `group` query heads that
// share the KV head (GQA) in registers, so K and V are read once for the whole group.
//
// Grid: (num_kv_heads, rows, max_splits); rows are `row_map[blockIdx.y]` when a map is given (the
// decode rows of a mixed step; prefill rows go to prefill_attention.cu), else blockIdx.y. Long
// contexts are split along the keys as in attention.cu (same `partition_size`, same partial
// layout, merged by `attention_reduce`). A row of KV length 0 (graph padding) gets zeros.
//
// Template parameters: D = head_dim (64 or 128), G = the largest group the instance handles (the
// real group is a runtime value <= G), NL = loads per lane per tile. Instances give MIN_BLOCKS
// blocks per multiprocessor to `__launch_bounds__` (registers <= 128 for 4): with the per-lane
// state of G heads, NL is chosen so that this compiles without register spills (checked with
// `ptxas -v`); G = 8 holds twice the state and runs 2 blocks per multiprocessor instead.

#define DA_WARPS 4

// Issues the K and V loads of the warp's tile at t0 into k, v: this lane's keys below `end`,
// zeros for the others (not stale cache contents: a NaN there times p = 0 would still be NaN).
// `blk` is the tile's block-table entry when the tile lies in one KV block.
template <int D, int NL>
__device__ __forceinline__ void da_load_tile(uint4* k, uint4* v, u32 t0, u32 end, bool one_block,
                                             u32 blk, const u32* table, u32 block_size,
                                             const bf16* __restrict__ k_cache,
                                             const bf16* __restrict__ v_cache, size_t col,
                                             u32 kv_width, u32 sub) {
    constexpr int KPL = 32 / (D / 8);
#pragma unroll
    for (int i = 0; i < NL; i++) {
        const u32 pos = t0 + i * KPL + sub;
        if (pos < end) {
            const u32 b = one_block ? blk : table[pos / block_size];
            const size_t off = (size_t)(b * block_size + pos % block_size) * kv_width + col;
            k[i] = *(const uint4*)(k_cache + off);
            v[i] = *(const uint4*)(v_cache + off);
        } else {
            k[i] = make_uint4(0, 0, 0, 0);
            v[i] = make_uint4(0, 0, 0, 0);
        }
    }
}

// Scores, online softmax and p @ V of one tile of the warp's keys (k, v from da_load_tile).
template <int D, int G, int NL>
__device__ __forceinline__ void da_tile(const float (&q)[G][8], float (&m)[G], float (&l)[G],
                                        float (&acc)[G][8], const uint4* kraw, const uint4* vraw,
                                        u32 t0, u32 end, u32 sub) {
    constexpr int LPK = D / 8, KPL = 32 / LPK;
    // Scores of this lane's keys, summed over the LPK lanes that hold each key.
    float s[NL][G];
#pragma unroll
    for (int i = 0; i < NL; i++) {
        float kf[8];
        unpack8(kraw[i], kf);
        const bool valid = t0 + i * KPL + sub < end;
#pragma unroll
        for (int g = 0; g < G; g++) {
            float dot = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; e++) dot += q[g][e] * kf[e];
#pragma unroll
            for (int o = LPK / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            s[i][g] = valid ? dot : NEG_INF;
        }
    }
    // Online softmax over the tile, per head: the tile's max over the warp (lanes holding
    // other keys differ from LPK upwards), then rescale the running state.
#pragma unroll
    for (int g = 0; g < G; g++) {
        float tmax = s[0][g];
#pragma unroll
        for (int i = 1; i < NL; i++) tmax = fmaxf(tmax, s[i][g]);
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        // Key t0 is always valid, so m_new is finite; alpha is 0 on the first tile.
        const float m_new = fmaxf(m[g], tmax);
        const float alpha = __expf(m[g] - m_new);
        m[g] = m_new;
        l[g] *= alpha;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] *= alpha;
#pragma unroll
        for (int i = 0; i < NL; i++) {
            s[i][g] = __expf(s[i][g] - m_new);
            l[g] += s[i][g];
        }
    }
    // p @ V over this lane's keys and dims.
#pragma unroll
    for (int i = 0; i < NL; i++) {
        float vf[8];
        unpack8(vraw[i], vf);
#pragma unroll
        for (int g = 0; g < G; g++) {
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] += s[i][g] * vf[e];
        }
    }
}

template <int D, int G, int NL>
__device__ __forceinline__ void decode_attention(
    bf16* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
    const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len,
    const u32* __restrict__ row_map, float scale, u32 num_heads, u32 num_kv_heads, u32 row_width,
    u32 block_size, const u32* __restrict__ batch_max_kv_len, u32 max_splits) {
    constexpr int LPK = D / 8;        // lanes per key
    constexpr int KPL = 32 / LPK;     // keys per warp-wide load
    constexpr int TILE = NL * KPL;    // keys per warp per iteration
    __shared__ float merge_o[DA_WARPS][G][D];
    __shared__ float merge_ml[DA_WARPS][G][2];

    const u32 kvh = blockIdx.x, split = blockIdx.z;
    const u32 row = row_map ? row_map[blockIdx.y] : blockIdx.y;
    const u32 group = num_heads / num_kv_heads;
    const u32 kv_len = row_kv_len[row];
    bf16* o_row = out + (size_t)row * num_heads * D + (size_t)kvh * group * D;
    if (kv_len == 0) {
        if (split == 0)
            for (u32 i = threadIdx.x; i < group * D; i += blockDim.x) o_row[i] = 0;
        return;
    }
    const u32 part_size = partition_size(*batch_max_kv_len, max_splits);
    const u32 start = split * part_size;
    if (start >= kv_len) return;
    const u32 end = umin(start + part_size, kv_len);
    const u32 num_splits = (kv_len + part_size - 1) / part_size;
    const u32 kv_width = num_kv_heads * D;
    const u32* table = block_tables + row_table_start[row];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 sub = lane / LPK, dl = lane % LPK;
    const size_t col = (size_t)kvh * D + dl * 8;

    // The warp's first tile is loaded before anything else: its K/V loads (after the tile's
    // block-table entry) are then in flight while the q heads load and the state is set up, and
    // the second tile's table entry follows them. With the first tile inside the loop below, the
    // kernel took 128 us per layer at batch 64, context 1024 (70% of the copy bandwidth, H100);
    // peeled, 100 us (89%).
    // A tile lies in one KV block when block_size is a multiple of TILE (the default 16 and every
    // Llama layout's TILE of 8, 16 or 32 keys, since tiles start at multiples of TILE); other
    // tiles look each key up.
    const bool one_block = block_size % TILE == 0;
    const u32 first = start + warp * TILE, second = first + DA_WARPS * TILE;
    uint4 k0[NL], v0[NL];
    u32 blk = one_block && first < end ? table[first / block_size] : 0;
    da_load_tile<D, NL>(k0, v0, first, end, one_block, blk, table, block_size, k_cache, v_cache, col,
                        kv_width, sub);
    blk = one_block && second < end ? table[second / block_size] : 0;

    // This lane's 8 dims of each query head of the group, pre-scaled.
    float q[G][8];
    const bf16* q_row = qkv + (size_t)row * row_width + (size_t)kvh * group * D + dl * 8;
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (g < group) {
            unpack8(*(const uint4*)(q_row + g * D), q[g]);
#pragma unroll
            for (int e = 0; e < 8; e++) q[g][e] *= scale;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) q[g][e] = 0.0f;
        }
    }
    // Per head: running max m (the same in every lane), this lane's share of the softmax sum l
    // and of the output acc (its keys, its 8 dims); shares are summed over the lanes at the end.
    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.0f;
    }

    if (first < end) da_tile<D, G, NL>(q, m, l, acc, k0, v0, first, end, sub);
    // The later tiles: each tile's block-table entry is fetched one tile ahead, so that its K/V
    // loads wait for one memory round trip, not two (table, then K/V).
    for (u32 t0 = second; t0 < end; t0 += DA_WARPS * TILE) {
        uint4 kraw[NL], vraw[NL];
        da_load_tile<D, NL>(kraw, vraw, t0, end, one_block, blk, table, block_size, k_cache, v_cache,
                            col, kv_width, sub);
        const u32 next = t0 + DA_WARPS * TILE;
        if (one_block && next < end) blk = table[next / block_size];
        da_tile<D, G, NL>(q, m, l, acc, kraw, vraw, t0, end, sub);
    }

    // Sum the shares of the lanes holding other keys (the same dims: lane ^ LPK, ^ 2 LPK, ...).
    // Within a key's LPK lanes l is already equal, since each of them summed the same scores.
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
        for (int o = LPK; o < 32; o <<= 1) {
            l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        }
    }
    if (sub == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) {
#pragma unroll
            for (int e = 0; e < 8; e++) merge_o[warp][g][dl * 8 + e] = acc[g][e];
            if (dl == 0) {
                merge_ml[warp][g][0] = m[g];  // -inf for a warp that had no keys
                merge_ml[warp][g][1] = l[g];
            }
        }
    }
    __syncthreads();
    // Merge the warps: thread per (head, dim).
    for (u32 idx = threadIdx.x; idx < group * D; idx += blockDim.x) {
        const u32 g = idx / D, d = idx % D;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < DA_WARPS; w++) mx = fmaxf(mx, merge_ml[w][g][0]);
        float sum = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < DA_WARPS; w++) {
            const float f = __expf(merge_ml[w][g][0] - mx);
            sum += merge_ml[w][g][1] * f;
            o += merge_o[w][g][d] * f;
        }
        if (num_splits == 1) {
            o_row[idx] = f2bf(o / sum);
        } else {
            const size_t p = ((size_t)row * num_heads + kvh * group + g) * max_splits + split;
            part_o[p * D + d] = o;
            if (d == 0) {
                part_ml[p * 2] = mx;
                part_ml[p * 2 + 1] = sum;
            }
        }
    }
}

#define DECODE_ATTENTION(NAME, D, G, NL, MIN_BLOCKS)                                            \
    extern "C" __global__ void __launch_bounds__(DA_WARPS * 32, MIN_BLOCKS) NAME(               \
        bf16* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,        \
        const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,                         \
        const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,                 \
        const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len,            \
        const u32* __restrict__ row_map, float scale, u32 num_heads, u32 num_kv_heads,          \
        u32 row_width, u32 block_size, const u32* __restrict__ batch_max_kv_len,                \
        u32 max_splits) {                                                                       \
        pdl_start();                                                                            \
        decode_attention<D, G, NL>(out, part_o, part_ml, qkv, k_cache, v_cache, block_tables,   \
                                   row_table_start, row_kv_len, row_map, scale, num_heads,      \
                                   num_kv_heads, row_width, block_size, batch_max_kv_len,       \
                                   max_splits);                                                 \
    }

DECODE_ATTENTION(decode_attention_d64_g1, 64, 1, 8, 4)
DECODE_ATTENTION(decode_attention_d64_g2, 64, 2, 8, 4)
DECODE_ATTENTION(decode_attention_d64_g4, 64, 4, 4, 3)
DECODE_ATTENTION(decode_attention_d64_g8, 64, 8, 4, 2)
DECODE_ATTENTION(decode_attention_d128_g1, 128, 1, 8, 4)
DECODE_ATTENTION(decode_attention_d128_g2, 128, 2, 8, 4)
DECODE_ATTENTION(decode_attention_d128_g4, 128, 4, 4, 4)
DECODE_ATTENTION(decode_attention_d128_g8, 128, 8, 4, 2)
// The other candidate for the Llama 8B / 70B-per-rank layouts, for measuring against the above
// (op_bench, TESSERA_DECODE_ATTENTION=decode_attention_d128_g4_nl8): twice the loads in flight
// per lane, 3 blocks per multiprocessor.
DECODE_ATTENTION(decode_attention_d128_g4_nl8, 128, 4, 8, 3)
