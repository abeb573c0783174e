// Prefill attention on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) over the paged
// KV cache, for steps that compute many tokens of a sequence at once (prompts, prefill chunks).
//
// `paged_attention` handles one query row per block, so a prompt of n tokens reads its K/V n
// times and computes every score on CUDA cores. Here a block takes a tile of up to 32 consecutive
// query rows of ONE sequence (the host's tiles, `PREFILL_TILE_ROWS`) and one KV head; warp w
// computes query head `kvh * group + w` for all of the tile's rows, so every K/V tile staged in
// shared memory serves 32 x group query rows (128 for the Llama 8B layout). Keys are processed BK
// at a time with an online softmax (FlashAttention-2 style): scores S = Q K^T and the output
// O += P V both run on tensor cores, and P never leaves registers (the accumulator layout of S is
// the operand layout of P).
//
// A warp holds its rows as RB blocks of 16 (the mma's m). With RB = 2 (`prefill_attention_d*`)
// every K or V fragment a warp reads from shared memory feeds two mma row blocks, as in
// FlashAttention-2's 32 rows a warp: half the shared-memory reads per mma and half the K/V
// traffic from L2 per query row of the 16-row kernel (RB = 1, `prefill_attention_r16_d*`, the
// default until session 12, kept to compare: `TESSERA_PREFILL_ATTENTION=r16`). The price is
// registers: two row blocks of Q fragments and O accumulators, so the 32-row kernel takes 32
// keys a tile (PF_R32_BK) where the 16-row one takes 64.
//
// Memory pipeline: K and V tiles of BK keys are copied from the paged cache into shared memory
// with cp.async (16 bytes per copy, no register staging) and read back as mma fragments with
// ldmatrix (V with .trans, since P V needs V's keys along k). One buffer each for K and V, loads
// overlapping math the FlashAttention-2 way:
//     wait K(i); sync; issue V(i); S = Q K(i)^T; softmax;
//     wait V(i); sync; issue K(i+1); O += P V(i)
// so V's copy runs under the QK^T mma and the next K's under the PV mma, within 48 KB of static
// shared memory (no opt-in attribute). Blocks run the host's tile list backwards: a sequence's
// last tiles see the most keys, so the heaviest blocks start first and the grid's tail is light.
//
// Fragment layouts: see mma_bf16_16816 in common.cuh; ldmatrix's below.
//
// Causality comes from `row_kv_len` as in paged_attention: row r sees keys [0, row_kv_len[r]).
// The host builds the tiles (`tile_row_start`, `tile_num_rows`), never crossing a sequence.
// Limits (checked by the host): head_dim 64 or 128, 1 <= group <= 8 (one warp per query head).

__device__ __forceinline__ u32 ld_u32(const bf16* p) { return *reinterpret_cast<const u32*>(p); }

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

#define PF_BK 64      // keys per shared K/V tile of the 16-row kernel
#ifndef PF_R32_BK
#define PF_R32_BK 32  // keys per shared K/V tile of the 32-row kernel (registers, see above)
#endif
#define PF_PAD 8      // bf16 of padding per shared row (bank conflicts, see k_s)
#define PF_NO_SLOT 0xffffffffu

// Shared-memory address of a generic pointer to shared memory (for cp.async and ldmatrix).
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// 16 bytes global -> shared, bypassing L1; `src_bytes` 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Four 8x8 bf16 matrices from shared memory; lanes 8m..8m+7 give the row addresses of matrix m.
// Lane 4g + t receives in r[m] row g, columns 2t and 2t+1 of matrix m; with .trans, row 2t and
// 2t+1 of column g (the matrix transposed).
__device__ __forceinline__ void ldmatrix_x4(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Cache slot of each key of the tile starting at `k0` (PF_NO_SLOT past `max_len`): the page
// lookup (a division by the block size) runs once per key here, not once per 16-byte copy.
template <int BK>
__device__ __forceinline__ void tile_slots(u32* slots, const u32* table, u32 k0, u32 max_len, u32 block_size) {
    for (u32 i = threadIdx.x; i < BK; i += blockDim.x) {
        const u32 key = k0 + i;
        slots[i] = key < max_len ? table[key / block_size] * block_size + key % block_size : PF_NO_SLOT;
    }
}

// Issues (and commits as one group) the copies of one head's K or V rows for a tile's keys.
// Consecutive threads copy consecutive 16-byte pieces of a key's row, so each key's D values
// (contiguous in the cache) are read as whole segments. Missing keys become zeros: P is 0 there,
// and 0 * garbage could be NaN.
template <int D, int BK>
__device__ __forceinline__ void load_tile(bf16 (*dst)[D + PF_PAD], const bf16* __restrict__ cache,
                                          const u32* slots, u32 kvh, u32 num_kv_heads) {
    constexpr u32 CHUNKS = D / 8;
    // blockDim.x (32 * group) is a multiple of CHUNKS, so a thread copies the same 8 dims of
    // every key it handles: a copy's addresses cost a multiply-add and an add (about 17
    // instructions a copy for sm_90 against 30 when each copy divided its index into key and
    // dims: the kernel took 390 instead of 464 - 492 us in op_bench, H100).
    const u32 d0 = (threadIdx.x % CHUNKS) * 8, step = blockDim.x / CHUNKS;
    const char* base = reinterpret_cast<const char*>(cache + (size_t)kvh * D + d0);
    const u32 slot_bytes = num_kv_heads * D * 2;
    u32 addr = smem_addr(&dst[threadIdx.x / CHUNKS][d0]);
    for (u32 i = threadIdx.x / CHUNKS; i < BK; i += step, addr += step * (D + PF_PAD) * 2) {
        const u32 slot = slots[i];
        const bool live = slot != PF_NO_SLOT;
        cp_async16(addr, base + (size_t)(live ? slot : 0u) * slot_bytes, live ? 16u : 0u);
    }
    cp_async_commit();
}

// s = Q K^T for the RB row blocks of q_frag and the BK keys of the shared K tile (per-lane
// ldmatrix address k_lane, see below); each K fragment feeds every row block. With PARTIAL,
// 16-key blocks at or past `keys` are skipped (their scores stay 0 and are masked by the caller).
template <int D, int RB, int BK, bool PARTIAL>
__device__ __forceinline__ void qk_tile(float (*s)[BK / 8][4], const u32 (*q_frag)[D / 16][4], u32 k_lane,
                                        u32 keys) {
    constexpr u32 ROW_BYTES = (D + PF_PAD) * 2;
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
#pragma unroll
        for (int j = 0; j < BK / 8; j++) s[rb][j][0] = s[rb][j][1] = s[rb][j][2] = s[rb][j][3] = 0.0f;
    }
    // Dims outer, keys inner: the accumulators of a dim step are independent mma chains.
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int jp = 0; jp < BK / 16; jp++) {
            if (!PARTIAL || jp * 16 < (int)keys) {
                u32 b[4];
                ldmatrix_x4(b, k_lane + jp * 16 * ROW_BYTES + kk * 32);
#pragma unroll
                for (int rb = 0; rb < RB; rb++) {
                    mma_bf16_16816(s[rb][2 * jp], q_frag[rb][kk], b[0], b[1]);
                    mma_bf16_16816(s[rb][2 * jp + 1], q_frag[rb][kk], b[2], b[3]);
                }
            }
        }
    }
}

// Attention of rows [row0, row0 + nrows) (nrows <= 16 * RB, one sequence) for KV head
// blockIdx.x, one warp per query head of its group, keys BK at a time.
template <int D, int RB, int BK>
__device__ __forceinline__ void prefill_attention_rows(
    bf16* __restrict__ out, const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len, u32 row0, u32 nrows,
    float scale, u32 num_heads, u32 num_kv_heads, u32 row_width, u32 block_size) {
    // A key's row is D + 8 bf16 (272 or 144 bytes), so consecutive keys start 4 banks apart and
    // the 8 rows of 16 bytes that one ldmatrix phase reads fall on 32 distinct banks.
    // 2 x 64 x 136 x 2 bytes = 34 KB for head_dim 128 and 64 keys.
    __shared__ __align__(128) bf16 k_s[BK][D + PF_PAD];
    __shared__ __align__(128) bf16 v_s[BK][D + PF_PAD];
    // Slots of the current and the next tile (computed one tile ahead, see the loop).
    __shared__ u32 slot_s[2][BK];

    const u32 kvh = blockIdx.x;
    const u32 group = num_heads / num_kv_heads;
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 head = kvh * group + warp;
    const u32* table = block_tables + row_table_start[row0];

    // This lane's rows: 16 rb + 8 h + g of row block rb, h = 0, 1 (the mma's rows g and g + 8).
    // Padding rows compute on row 0's data and are never written.
    bool valid[RB][2];
    u32 len[RB][2];
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 r = 16 * rb + 8 * h + g;
            valid[rb][h] = r < nrows;
            len[rb][h] = row_kv_len[row0 + (valid[rb][h] ? r : 0)];
        }
    }
    // Keys past min_len need masking; keys past max_len are never loaded.
    u32 max_len = 0, min_len = 0xffffffffu;
    for (u32 r = 0; r < nrows; r++) {
        const u32 l = row_kv_len[row0 + r];
        max_len = umax(max_len, l);
        min_len = umin(min_len, l);
    }

    // Start the first K tile's copy before anything else, so it overlaps the Q loads.
    tile_slots<BK>(slot_s[0], table, 0, max_len, block_size);
    __syncthreads();
    load_tile<D, BK>(k_s, k_cache, slot_s[0], kvh, num_kv_heads);

    u32 q_frag[RB][D / 16][4];
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
        const u32 ra = 16 * rb + g, rb8 = 16 * rb + 8 + g;
        const bf16* qa = qkv + (size_t)(row0 + (valid[rb][0] ? ra : 0)) * row_width + (size_t)head * D;
        const bf16* qb = qkv + (size_t)(row0 + (valid[rb][1] ? rb8 : 0)) * row_width + (size_t)head * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            q_frag[rb][kk][0] = ld_u32(qa + kk * 16 + 2 * t);
            q_frag[rb][kk][1] = ld_u32(qb + kk * 16 + 2 * t);
            q_frag[rb][kk][2] = ld_u32(qa + kk * 16 + 8 + 2 * t);
            q_frag[rb][kk][3] = ld_u32(qb + kk * 16 + 8 + 2 * t);
        }
    }
    float o[RB][D / 8][4];
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[rb][n][0] = o[rb][n][1] = o[rb][n][2] = o[rb][n][3] = 0.0f;
    }
    // Running max (in log2 units, i.e. already times scale * log2 e) and per-lane partial sums.
    float m[RB][2], l[RB][2];
#pragma unroll
    for (int rb = 0; rb < RB; rb++) m[rb][0] = m[rb][1] = NEG_INF, l[rb][0] = l[rb][1] = 0.0f;
    const float scale_log2 = scale * 1.4426950408889634f;

    // Per-lane ldmatrix row addresses (bytes), at key 0 / dim 0 of each tile.
    // K (B operand of S = Q K^T, k = dim, n = key; stored [key][dim], i.e. n-major: no .trans):
    // matrix m = lane / 8 covers keys 8 * (m / 2) + 0..7 and dims 8 * (m % 2) + 0..7 of a
    // 16-key x 16-dim block, giving {b0, b1} of key tile 2jp and {b0, b1} of key tile 2jp + 1.
    const u32 k_lane = smem_addr(&k_s[(lane & 7) + ((lane >> 4) & 1) * 8][((lane >> 3) & 1) * 8]);
    // V (B operand of O = P V, k = key, n = dim; stored [key][dim], i.e. k-major: .trans):
    // matrix m covers keys 8 * (m % 2) + 0..7 and dims 8 * (m / 2) + 0..7 of a 16 x 16 block,
    // giving {b0, b1} of dim tile 2np and {b0, b1} of dim tile 2np + 1.
    const u32 v_lane = smem_addr(&v_s[(lane & 7) + ((lane >> 3) & 1) * 8][((lane >> 4) & 1) * 8]);
    constexpr u32 ROW_BYTES = (D + PF_PAD) * 2;

    u32 it = 0;
    for (u32 k0 = 0; k0 < max_len; k0 += BK, it++) {
        const u32 next = k0 + BK;
        cp_async_wait_all();
        // K(k0) has landed for every thread's copies, and every warp is done with the previous
        // tile's P V, so v_s may be overwritten.
        __syncthreads();
        load_tile<D, BK>(v_s, v_cache, slot_s[it & 1], kvh, num_kv_heads);
        // The next tile's slots; slot_s[(it + 1) & 1] was last read by the previous V copy.
        if (next < max_len) tile_slots<BK>(slot_s[(it + 1) & 1], table, next, max_len, block_size);

        // S = Q K^T for the rows x BK keys. Only a tile reaching past max_len (the last) checks
        // for 16-key blocks to skip, so every other tile runs branch-free.
        float s[RB][BK / 8][4];
        if (next <= max_len) {
            qk_tile<D, RB, BK, false>(s, q_frag, k_lane, 0);
        } else {
            qk_tile<D, RB, BK, true>(s, q_frag, k_lane, max_len - k0);
        }
        // Mask keys beyond each row's length (only tiles reaching past the shortest row).
        // Lane (g, t) holds keys 8j + 2t + {0, 1} of rows g (s[rb][j][0..1]) and g + 8
        // (s[rb][j][2..3]) of each row block.
        if (next > min_len) {
#pragma unroll
            for (int rb = 0; rb < RB; rb++) {
#pragma unroll
                for (int j = 0; j < BK / 8; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const u32 key = k0 + j * 8 + 2 * t + e;
                        if (key >= len[rb][0]) s[rb][j][e] = NEG_INF;
                        if (key >= len[rb][1]) s[rb][j][2 + e] = NEG_INF;
                    }
                }
            }
        }
        // Online softmax. Key 0 is in every row's range, so after the first tile m is finite
        // and a fully masked later tile leaves it unchanged (exp2(-inf) = 0).
#pragma unroll
        for (int rb = 0; rb < RB; rb++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float mx = NEG_INF;
#pragma unroll
                for (int j = 0; j < BK / 8; j++) mx = fmaxf(mx, fmaxf(s[rb][j][2 * h], s[rb][j][2 * h + 1]));
                const float next_m = fmaxf(m[rb][h], quad_max(mx) * scale_log2);
                const float alpha = fast_exp2(m[rb][h] - next_m);
                m[rb][h] = next_m;
                float sum = 0.0f;
#pragma unroll
                for (int j = 0; j < BK / 8; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        s[rb][j][2 * h + e] = fast_exp2(fmaf(s[rb][j][2 * h + e], scale_log2, -next_m));
                        sum += s[rb][j][2 * h + e];
                    }
                }
                // Per-lane partial sums; the quad's are added once at the end.
                l[rb][h] = l[rb][h] * alpha + sum;
#pragma unroll
                for (int n = 0; n < D / 8; n++) {
                    o[rb][n][2 * h] *= alpha;
                    o[rb][n][2 * h + 1] *= alpha;
                }
            }
        }

        cp_async_wait_all();
        // V(k0) has landed, and every warp is done reading k_s: start the next K tile's copy,
        // which runs under the P V mma below.
        __syncthreads();
        if (next < max_len) load_tile<D, BK>(k_s, k_cache, slot_s[(it + 1) & 1], kvh, num_kv_heads);

        // O += P V: P's accumulator layout is the A operand layout, 16 keys per k-step; each V
        // fragment feeds every row block. (Key blocks past max_len hold P = 0 and V = 0;
        // skipping them as in S = Q K^T above would cost registers.)
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            u32 p[RB][4];
#pragma unroll
            for (int rb = 0; rb < RB; rb++) {
                p[rb][0] = pack_bf16x2(s[rb][2 * ks][0], s[rb][2 * ks][1]);
                p[rb][1] = pack_bf16x2(s[rb][2 * ks][2], s[rb][2 * ks][3]);
                p[rb][2] = pack_bf16x2(s[rb][2 * ks + 1][0], s[rb][2 * ks + 1][1]);
                p[rb][3] = pack_bf16x2(s[rb][2 * ks + 1][2], s[rb][2 * ks + 1][3]);
            }
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                u32 b[4];
                ldmatrix_x4_trans(b, v_lane + ks * 16 * ROW_BYTES + np * 32);
#pragma unroll
                for (int rb = 0; rb < RB; rb++) {
                    mma_bf16_16816(o[rb][2 * np], p[rb], b[0], b[1]);
                    mma_bf16_16816(o[rb][2 * np + 1], p[rb], b[2], b[3]);
                }
            }
        }
    }

    const size_t out_width = (size_t)num_heads * D;
#pragma unroll
    for (int rb = 0; rb < RB; rb++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float inv = 1.0f / quad_sum(l[rb][h]);
            if (!valid[rb][h]) continue;
            bf16* dst = out + (size_t)(row0 + 16 * rb + 8 * h + g) * out_width + (size_t)head * D + 2 * t;
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                *reinterpret_cast<u32*>(dst + n * 8) = pack_bf16x2(o[rb][n][2 * h] * inv, o[rb][n][2 * h + 1] * inv);
            }
        }
    }
}

#define PREFILL_ATTENTION_ARGS                                                                    \
    bf16 *__restrict__ out, const bf16 *__restrict__ qkv, const bf16 *__restrict__ k_cache,      \
        const bf16 *__restrict__ v_cache, const u32 *__restrict__ block_tables,                  \
        const u32 *__restrict__ row_table_start, const u32 *__restrict__ row_kv_len,             \
        const u32 *__restrict__ tile_row_start, const u32 *__restrict__ tile_num_rows, float scale, \
        u32 num_heads, u32 num_kv_heads, u32 row_width, u32 block_size

// Grid: (num_kv_heads, num_tiles); block: 32 * group threads (one warp per query head).
// `_d*`: a block per tile of up to 32 rows (RB = 2). Up to 255 registers a thread (256 threads
// for group 8 still fit an SM).
// `_r16_d*`: the 16-row kernel; grid (num_kv_heads, 2 * num_tiles), block y taking half y % 2 of
// the host's tile y / 2 (none if the tile has no rows there). At most 168 registers a thread:
// 3 blocks of 4 warps (the 8B layout) fit an SM's 64K registers (169 would allow only 2).
#define PREFILL_ATTENTION(D)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) prefill_attention_d##D(PREFILL_ATTENTION_ARGS) { \
        pdl_start();                                                                              \
        const u32 tile = gridDim.y - 1 - blockIdx.y; /* heaviest tiles first */                  \
        prefill_attention_rows<D, 2, PF_R32_BK>(out, qkv, k_cache, v_cache, block_tables,         \
                                                row_table_start, row_kv_len, tile_row_start[tile], \
                                                tile_num_rows[tile], scale, num_heads,            \
                                                num_kv_heads, row_width, block_size);             \
    }                                                                                             \
    extern "C" __global__ void __maxnreg__(168) prefill_attention_r16_d##D(PREFILL_ATTENTION_ARGS) { \
        pdl_start();                                                                              \
        const u32 idx = gridDim.y - 1 - blockIdx.y, tile = idx / 2, skip = idx % 2 * 16;          \
        const u32 n = tile_num_rows[tile];                                                        \
        if (n <= skip) return;                                                                    \
        prefill_attention_rows<D, 1, PF_BK>(out, qkv, k_cache, v_cache, block_tables,             \
                                            row_table_start, row_kv_len,                          \
                                            tile_row_start[tile] + skip, umin(n - skip, 16u),     \
                                            scale, num_heads, num_kv_heads, row_width,            \
                                            block_size);                                          \
    }

PREFILL_ATTENTION(64)
PREFILL_ATTENTION(128)
