// Prefill attention on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) over the paged
// KV cache, for steps that compute many tokens of a sequence at once (prompts, prefill chunks).
//
// `paged_attention` handles one query row per block, so a prompt of n tokens reads its K/V n
// times and computes every score on CUDA cores. Here a block takes a tile of up to PF_TQ (32)
// consecutive query rows of ONE sequence and one KV head; warp w computes query head
// `kvh * group + w` for all 32 rows, as two 16-row mma blocks, so every K/V tile staged in shared
// memory serves 32 x group query rows (128 for the Llama 8B layout) and every K or V fragment a
// warp reads from shared memory feeds both row blocks (FlashAttention-2's 128 x 64 tiles). Keys
// are processed PF_BK at a time with an online softmax: scores S = Q K^T and the output
// O += P V both run on tensor cores, and P never leaves registers (the accumulator layout of S
// is the operand layout of P).
//
// Memory pipeline: the tile's queries (each warp's 32 rows of its head) are copied into shared
// memory once and read as A fragments with ldmatrix at every key tile (in registers they would
// not fit beside the two row blocks' outputs and scores). K and V tiles of PF_BK keys are copied
// from the paged cache into shared memory with cp.async (16 bytes per copy, no register staging)
// and read back as mma fragments with ldmatrix (V with .trans, since P V needs V's keys along k).
// One buffer each for K and V, loads overlapping math the FlashAttention-2 way:
//     wait K(i); sync; issue V(i); S = Q K(i)^T; softmax;
//     wait V(i); sync; issue K(i+1); O += P V(i)
// so V's copy runs under the QK^T mma and the next K's under the PV mma. Shared memory is
// dynamic (69.6 KB a block for the 8B layout, above the 48 KB a static array may take; the
// host's `prefill_attention_smem` gives the size and the device raises the kernel's limit at
// load). Blocks run the host's tile list backwards: a sequence's last tiles see the most keys,
// so the heaviest blocks start first and the grid's tail is light.
//
// Fragment layouts: see mma_bf16_16816 in common.cuh; ldmatrix's below.
//
// Causality comes from `row_kv_len` as in paged_attention: row r sees keys [0, row_kv_len[r]).
// The host builds the tiles (`tile_row_start`, `tile_num_rows`), never crossing a sequence.
// Limits (checked by the host): head_dim 64 or 128, 1 <= group <= 8 (one warp per query head),
// the block's shared memory within the GPU's per-block limit.
//
// The previous kernel (one 16-row block a warp, Q in registers, 48 KB of static shared memory) is
// the default kernel at 565031b: 356 - 359 us in op_bench on an H100 where this one took 319 -
// 322 us with the software P packing (docs/benchmarks.md, session 16).

#define PF_TQ 32

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

#define PF_BK 64      // keys per shared K/V tile
#define PF_PAD 8      // bf16 of padding per shared row (bank conflicts, see k_s)
#define PF_NO_SLOT 0xffffffffu

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
__device__ __forceinline__ void tile_slots(u32* slots, const u32* table, u32 k0, u32 max_len, u32 block_size) {
    for (u32 i = threadIdx.x; i < PF_BK; i += blockDim.x) {
        const u32 key = k0 + i;
        slots[i] = key < max_len ? table[key / block_size] * block_size + key % block_size : PF_NO_SLOT;
    }
}

// Issues (and commits as one group) the copies of one head's K or V rows for a tile's keys.
// Consecutive threads copy consecutive 16-byte pieces of a key's row, so each key's D values
// (contiguous in the cache) are read as whole segments. Missing keys become zeros: P is 0 there,
// and 0 * garbage could be NaN.
template <int D>
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
    for (u32 i = threadIdx.x / CHUNKS; i < PF_BK; i += step, addr += step * (D + PF_PAD) * 2) {
        const u32 slot = slots[i];
        const bool live = slot != PF_NO_SLOT;
        cp_async16(addr, base + (size_t)(live ? slot : 0u) * slot_bytes, live ? 16u : 0u);
    }
    cp_async_commit();
}

// Copies (and commits as one group) each warp's PF_TQ query rows of its head into q_s, warp w's
// at rows [w * PF_TQ, (w + 1) * PF_TQ). Rows past the tile's end become zeros: they compute on
// zeros and are never written.
template <int D>
__device__ __forceinline__ void load_q(bf16 (*q_s)[D + PF_PAD], const bf16* __restrict__ qkv, u32 row0,
                                       u32 nrows, u32 first_head, u32 group, u32 row_width) {
    constexpr u32 CHUNKS = D / 8;
    for (u32 i = threadIdx.x; i < group * PF_TQ * CHUNKS; i += blockDim.x) {
        const u32 c = i % CHUNKS, r = (i / CHUNKS) % PF_TQ, w = i / (CHUNKS * PF_TQ);
        const bool live = r < nrows;
        const bf16* src = qkv + (size_t)(row0 + (live ? r : 0u)) * row_width + (size_t)(first_head + w) * D + c * 8;
        cp_async16(smem_addr(&q_s[w * PF_TQ + r][c * 8]), src, live ? 16u : 0u);
    }
    cp_async_commit();
}

// s[b] = Q_b K^T for the warp's two 16-row blocks b (A fragments from the shared queries at the
// per-lane ldmatrix address q_lane) and the PF_BK keys of the shared K tile: each K fragment
// feeds both blocks. With PARTIAL, 16-key blocks at or past `keys` are skipped.
template <int D, bool PARTIAL>
__device__ __forceinline__ void qk_tile(float (*s)[PF_BK / 8][4], u32 q_lane, u32 k_lane, u32 keys) {
    constexpr u32 ROW_BYTES = (D + PF_PAD) * 2;
#pragma unroll
    for (int b = 0; b < 2; b++) {
#pragma unroll
        for (int j = 0; j < PF_BK / 8; j++) s[b][j][0] = s[b][j][1] = s[b][j][2] = s[b][j][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        u32 a0[4], a1[4];
        ldmatrix_x4(a0, q_lane + kk * 32);
        ldmatrix_x4(a1, q_lane + 16 * ROW_BYTES + kk * 32);
#pragma unroll
        for (int jp = 0; jp < PF_BK / 16; jp++) {
            if (!PARTIAL || jp * 16 < (int)keys) {
                u32 k[4];
                ldmatrix_x4(k, k_lane + jp * 16 * ROW_BYTES + kk * 32);
                mma_bf16_16816(s[0][2 * jp], a0, k[0], k[1]);
                mma_bf16_16816(s[0][2 * jp + 1], a0, k[2], k[3]);
                mma_bf16_16816(s[1][2 * jp], a1, k[0], k[1]);
                mma_bf16_16816(s[1][2 * jp + 1], a1, k[2], k[3]);
            }
        }
    }
}

// The online softmax of one 16-row block over a key tile: s becomes P (unnormalised), the
// running maxima m (log2 units, i.e. times scale * log2 e) and per-lane partial sums l of the
// lane's rows g and g + 8 move on, and the block's output accumulators o are rescaled.
template <int D>
__device__ __forceinline__ void online_softmax(float (*s)[4], float (*o)[4], float* m, float* l, float scale_log2) {
    float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
    for (int j = 0; j < PF_BK / 8; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
        mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
    // Key 0 is in every row's range, so after the first tile m is finite and a fully masked
    // later tile leaves it unchanged (exp2(-inf) = 0).
    const float new0 = fmaxf(m[0], quad_max(mx0) * scale_log2);
    const float new1 = fmaxf(m[1], quad_max(mx1) * scale_log2);
    const float alpha0 = fast_exp2(m[0] - new0), alpha1 = fast_exp2(m[1] - new1);
    m[0] = new0;
    m[1] = new1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int j = 0; j < PF_BK / 8; j++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            s[j][e] = fast_exp2(fmaf(s[j][e], scale_log2, -new0));
            s[j][2 + e] = fast_exp2(fmaf(s[j][2 + e], scale_log2, -new1));
            sum0 += s[j][e];
            sum1 += s[j][2 + e];
        }
    }
    l[0] = l[0] * alpha0 + sum0;
    l[1] = l[1] * alpha1 + sum1;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        o[n][0] *= alpha0;
        o[n][1] *= alpha0;
        o[n][2] *= alpha1;
        o[n][3] *= alpha1;
    }
}

template <int D>
__device__ __forceinline__ void prefill_attention_tile(
    bf16* __restrict__ out, const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len,
    const u32* __restrict__ tile_row_start, const u32* __restrict__ tile_num_rows, float scale,
    u32 num_heads, u32 num_kv_heads, u32 row_width, u32 block_size) {
    // K tile, V tile, then the queries: rows of D + 8 bf16 (272 or 144 bytes), so consecutive
    // rows start 4 banks apart and the 8 rows of 16 bytes that one ldmatrix phase reads fall on
    // 32 distinct banks.
    extern __shared__ __align__(128) unsigned char pf_smem[];
    typedef bf16 Row[D + PF_PAD];
    Row* k_s = reinterpret_cast<Row*>(pf_smem);
    Row* v_s = k_s + PF_BK;
    Row* q_s = v_s + PF_BK;
    // Slots of the current and the next tile (computed one tile ahead, see the loop).
    __shared__ u32 slot_s[2][PF_BK];

    const u32 kvh = blockIdx.x, tile = gridDim.y - 1 - blockIdx.y;  // heaviest tiles first
    const u32 group = num_heads / num_kv_heads;
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 row0 = tile_row_start[tile], nrows = tile_num_rows[tile];
    const u32* table = block_tables + row_table_start[row0];

    // Keys past min_len need masking; keys past max_len are never loaded.
    u32 max_len = 0, min_len = 0xffffffffu;
    for (u32 r = 0; r < nrows; r++) {
        const u32 n = row_kv_len[row0 + r];
        max_len = umax(max_len, n);
        min_len = umin(min_len, n);
    }

    // The queries' and the first K tile's copies go out before anything else.
    tile_slots(slot_s[0], table, 0, max_len, block_size);
    __syncthreads();
    load_q<D>(q_s, qkv, row0, nrows, kvh * group, group, row_width);
    load_tile<D>(k_s, k_cache, slot_s[0], kvh, num_kv_heads);

    float o[2][D / 8][4];
#pragma unroll
    for (int b = 0; b < 2; b++) {
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[b][n][0] = o[b][n][1] = o[b][n][2] = o[b][n][3] = 0.0f;
    }
    float m[2][2] = {{NEG_INF, NEG_INF}, {NEG_INF, NEG_INF}}, l[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    const float scale_log2 = scale * 1.4426950408889634f;

    // Per-lane ldmatrix row addresses (bytes), at row 0 / key 0 / dim 0.
    // Q (A operand, stored [row][dim]): matrix m = lane / 8 covers rows 8 * (m % 2) + 0..7 and
    // dims 8 * (m / 2) + 0..7 of a 16 x 16 block, giving {a0a1, a2a3, a4a5, a6a7}.
    const u32 q_lane = smem_addr(&q_s[warp * PF_TQ + (lane & 7) + ((lane >> 3) & 1) * 8][((lane >> 4) & 1) * 8]);
    // K (B operand of S = Q K^T, k = dim, n = key; stored [key][dim], i.e. n-major: no .trans):
    // matrix m = lane / 8 covers keys 8 * (m / 2) + 0..7 and dims 8 * (m % 2) + 0..7 of a
    // 16-key x 16-dim block, giving {b0, b1} of key tile 2jp and {b0, b1} of key tile 2jp + 1.
    // V (B operand of O = P V, k = key, n = dim; stored [key][dim], i.e. k-major: .trans):
    // matrix m covers keys 8 * (m % 2) + 0..7 and dims 8 * (m / 2) + 0..7 of a 16 x 16 block,
    // giving {b0, b1} of dim tile 2np and {b0, b1} of dim tile 2np + 1.
    const u32 k_lane = smem_addr(&k_s[(lane & 7) + ((lane >> 4) & 1) * 8][((lane >> 3) & 1) * 8]);
    const u32 v_lane = smem_addr(&v_s[(lane & 7) + ((lane >> 3) & 1) * 8][((lane >> 4) & 1) * 8]);
    constexpr u32 ROW_BYTES = (D + PF_PAD) * 2;

    u32 it = 0;
    for (u32 k0 = 0; k0 < max_len; k0 += PF_BK, it++) {
        const u32 next = k0 + PF_BK;
        cp_async_wait_all();
        // The queries and K(k0) have landed for every thread's copies, and every warp is done
        // with the previous tile's P V, so v_s may be overwritten.
        __syncthreads();
        load_tile<D>(v_s, v_cache, slot_s[it & 1], kvh, num_kv_heads);
        // The next tile's slots; slot_s[(it + 1) & 1] was last read by the previous V copy.
        if (next < max_len) tile_slots(slot_s[(it + 1) & 1], table, next, max_len, block_size);

        float s[2][PF_BK / 8][4];
        if (next <= max_len) {
            qk_tile<D, false>(s, q_lane, k_lane, 0);
        } else {
            qk_tile<D, true>(s, q_lane, k_lane, max_len - k0);
        }
        // Mask keys beyond each row's length (only tiles reaching past the shortest row).
        // Lane (g, t) holds keys 8j + 2t + {0, 1} of rows g (s[b][j][0..1]) and g + 8 (s[b][j][2..3]).
        // The lane's rows are g and g + 8 of each block b; their lengths are read here, in the
        // last tiles only, rather than held in registers through the loop. Padding rows take
        // row 0's length (they compute on zero queries and are never written).
        if (next > min_len) {
#pragma unroll
            for (int b = 0; b < 2; b++) {
                const u32 r0 = 16 * b + g, r1 = r0 + 8;
                const u32 len0 = row_kv_len[row0 + (r0 < nrows ? r0 : 0u)];
                const u32 len1 = row_kv_len[row0 + (r1 < nrows ? r1 : 0u)];
#pragma unroll
                for (int j = 0; j < PF_BK / 8; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const u32 key = k0 + j * 8 + 2 * t + e;
                        if (key >= len0) s[b][j][e] = NEG_INF;
                        if (key >= len1) s[b][j][2 + e] = NEG_INF;
                    }
                }
            }
        }
        online_softmax<D>(s[0], o[0], m[0], l[0], scale_log2);
        online_softmax<D>(s[1], o[1], m[1], l[1], scale_log2);

        cp_async_wait_all();
        // V(k0) has landed, and every warp is done reading k_s: start the next K tile's copy,
        // which runs under the P V mma below.
        __syncthreads();
        if (next < max_len) load_tile<D>(k_s, k_cache, slot_s[(it + 1) & 1], kvh, num_kv_heads);

        // O_b += P_b V: each V fragment feeds both blocks. (Key blocks past max_len hold P = 0
        // and V = 0; skipping them in the last tile measured no faster, 2026-12-07.)
#pragma unroll
        for (int ks = 0; ks < PF_BK / 16; ks++) {
            u32 p[2][4];
#pragma unroll
            for (int b = 0; b < 2; b++) {
                p[b][0] = pack_bf16x2(s[b][2 * ks][0], s[b][2 * ks][1]);
                p[b][1] = pack_bf16x2(s[b][2 * ks][2], s[b][2 * ks][3]);
                p[b][2] = pack_bf16x2(s[b][2 * ks + 1][0], s[b][2 * ks + 1][1]);
                p[b][3] = pack_bf16x2(s[b][2 * ks + 1][2], s[b][2 * ks + 1][3]);
            }
#pragma unroll
            for (int np = 0; np < D / 16; np++) {
                u32 v[4];
                ldmatrix_x4_trans(v, v_lane + ks * 16 * ROW_BYTES + np * 32);
                mma_bf16_16816(o[0][2 * np], p[0], v[0], v[1]);
                mma_bf16_16816(o[0][2 * np + 1], p[0], v[2], v[3]);
                mma_bf16_16816(o[1][2 * np], p[1], v[0], v[1]);
                mma_bf16_16816(o[1][2 * np + 1], p[1], v[2], v[3]);
            }
        }
    }

    const size_t out_width = (size_t)num_heads * D;
    const u32 head = kvh * group + warp;
#pragma unroll
    for (int b = 0; b < 2; b++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            // Every lane takes part in the quad's shuffles before any leaves.
            const float inv = 1.0f / quad_sum(l[b][h]);
            const u32 r = 16 * b + 8 * h + g;
            if (r >= nrows) continue;
            bf16* dst = out + (row0 + r) * out_width + (size_t)head * D + 2 * t;
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                *reinterpret_cast<u32*>(dst + n * 8) = pack_bf16x2(o[b][n][2 * h] * inv, o[b][n][2 * h + 1] * inv);
            }
        }
    }
}

// Grid: (num_kv_heads, num_tiles); block: 32 * group threads (one warp per query head); dynamic
// shared memory (2 * PF_BK + group * PF_TQ) * (D + PF_PAD) * 2 bytes.
#define PREFILL_ATTENTION(D)                                                                          \
    extern "C" __global__ void prefill_attention_d##D(                                                 \
        bf16* __restrict__ out, const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,     \
        const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,                     \
        const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len,                \
        const u32* __restrict__ tile_row_start, const u32* __restrict__ tile_num_rows, float scale, \
        u32 num_heads, u32 num_kv_heads, u32 row_width, u32 block_size) {                           \
        pdl_start();                                                                                \
        prefill_attention_tile<D>(out, qkv, k_cache, v_cache, block_tables, row_table_start,       \
                                   row_kv_len, tile_row_start, tile_num_rows, scale, num_heads,     \
                                   num_kv_heads, row_width, block_size);                            \
    }

PREFILL_ATTENTION(64)
PREFILL_ATTENTION(128)
