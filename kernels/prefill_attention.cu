// Prefill attention on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) over the paged
// KV cache, for steps that compute many tokens of a sequence at once (prompts, prefill chunks).
//
// `paged_attention` handles one query row per block, so a prompt of n tokens reads its K/V n
// times and computes every score on CUDA cores. Here a block takes a tile of up to 16 consecutive
// query rows of ONE sequence and one KV head; warp w computes query head `kvh * group + w` for all
// 16 rows, so every K/V tile staged in shared memory serves 16 x group query rows. Keys are
// processed PF_TK at a time with an online softmax (FlashAttention-2 style): scores S = Q K^T and
// the output O += P V both run on tensor cores, and P never leaves registers (the accumulator
// layout of S is the operand layout of P).
//
// Fragment layouts: see mma_bf16_16816 in common.cuh.
//
// Causality comes from `row_kv_len` as in paged_attention: row r sees keys [0, row_kv_len[r]).
// The host builds the tiles (`tile_row_start`, `tile_num_rows`), never crossing a sequence.
// Limits (checked by the host): head_dim 64 or 128, 1 <= group <= 8 (one warp per query head).

#define PF_TQ 16
#define PF_TK 32

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

template <int D>
__device__ __forceinline__ void prefill_attention_tile(
    bf16* __restrict__ out, const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len,
    const u32* __restrict__ tile_row_start, const u32* __restrict__ tile_num_rows, float scale,
    u32 num_heads, u32 num_kv_heads, u32 row_width, u32 block_size) {
    // Padding keeps the fragment loads below free of bank conflicts (row strides of 68 and 20
    // words put the 8 row groups of a warp on distinct banks).
    __shared__ __align__(16) bf16 k_s[PF_TK][D + 8];
    __shared__ __align__(16) bf16 vt_s[D][PF_TK + 8];
    __shared__ u32 slot_s[PF_TK];

    const u32 kvh = blockIdx.x, tile = blockIdx.y;
    const u32 group = num_heads / num_kv_heads;
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthreads = blockDim.x;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 row0 = tile_row_start[tile], nrows = tile_num_rows[tile];
    const u32 head = kvh * group + warp;
    const u32* table = block_tables + row_table_start[row0];

    // This lane's two rows; padding rows compute on row 0's data and are never written.
    const bool valid_a = g < nrows, valid_b = g + 8 < nrows;
    const u32 len_a = row_kv_len[row0 + (valid_a ? g : 0)];
    const u32 len_b = row_kv_len[row0 + (valid_b ? g + 8 : 0)];
    u32 max_len = 0;
    for (u32 r = 0; r < nrows; r++) max_len = umax(max_len, row_kv_len[row0 + r]);

    u32 q_frag[D / 16][4];
    {
        const bf16* qa = qkv + (size_t)(row0 + (valid_a ? g : 0)) * row_width + (size_t)head * D;
        const bf16* qb = qkv + (size_t)(row0 + (valid_b ? g + 8 : 0)) * row_width + (size_t)head * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            q_frag[kk][0] = ld_u32(qa + kk * 16 + 2 * t);
            q_frag[kk][1] = ld_u32(qb + kk * 16 + 2 * t);
            q_frag[kk][2] = ld_u32(qa + kk * 16 + 8 + 2 * t);
            q_frag[kk][3] = ld_u32(qb + kk * 16 + 8 + 2 * t);
        }
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_a = NEG_INF, m_b = NEG_INF, l_a = 0.0f, l_b = 0.0f;

    for (u32 k0 = 0; k0 < max_len; k0 += PF_TK) {
        __syncthreads();  // the previous tile's K/V are no longer read
        for (u32 i = tid; i < PF_TK; i += nthreads) {
            const u32 key = k0 + i;
            slot_s[i] = key < max_len ? table[key / block_size] * block_size + key % block_size : 0xffffffffu;
        }
        __syncthreads();
        for (u32 c = tid; c < PF_TK * (D / 8); c += nthreads) {
            const u32 key = c / (D / 8), d0 = (c % (D / 8)) * 8;
            const u32 slot = slot_s[key];
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (slot != 0xffffffffu) {
                const size_t src = ((size_t)slot * num_kv_heads + kvh) * D + d0;
                kv = *reinterpret_cast<const uint4*>(k_cache + src);
                vv = *reinterpret_cast<const uint4*>(v_cache + src);
            }
            *reinterpret_cast<uint4*>(&k_s[key][d0]) = kv;
            const bf16* v8 = reinterpret_cast<const bf16*>(&vv);
#pragma unroll
            for (int j = 0; j < 8; j++) vt_s[d0 + j][key] = v8[j];
        }
        __syncthreads();

        // S = Q K^T for 16 rows x PF_TK keys.
        float s[PF_TK / 8][4];
#pragma unroll
        for (int j = 0; j < PF_TK / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                const bf16* kr = &k_s[j * 8 + g][kk * 16 + 2 * t];
                mma_bf16_16816(s[j], q_frag[kk], ld_u32(kr), ld_u32(kr + 8));
            }
        }
        // Scale, mask beyond each row's length, and the online softmax update.
        float mx_a = NEG_INF, mx_b = NEG_INF;
#pragma unroll
        for (int j = 0; j < PF_TK / 8; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const u32 key = k0 + j * 8 + 2 * t + e;
                s[j][e] = key < len_a ? s[j][e] * scale : NEG_INF;
                s[j][2 + e] = key < len_b ? s[j][2 + e] * scale : NEG_INF;
                mx_a = fmaxf(mx_a, s[j][e]);
                mx_b = fmaxf(mx_b, s[j][2 + e]);
            }
        }
        // Key 0 is in every row's range, so after the first tile m is finite and a fully
        // masked later tile leaves it unchanged (exp(-inf - m) = 0).
        const float new_a = fmaxf(m_a, quad_max(mx_a)), new_b = fmaxf(m_b, quad_max(mx_b));
        const float alpha_a = __expf(m_a - new_a), alpha_b = __expf(m_b - new_b);
        m_a = new_a;
        m_b = new_b;
        float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
        for (int j = 0; j < PF_TK / 8; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[j][e] = __expf(s[j][e] - m_a);
                s[j][2 + e] = __expf(s[j][2 + e] - m_b);
                sum_a += s[j][e];
                sum_b += s[j][2 + e];
            }
        }
        // Per-lane partial sums; the quad's are added once at the end.
        l_a = l_a * alpha_a + sum_a;
        l_b = l_b * alpha_b + sum_b;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            o[n][0] *= alpha_a;
            o[n][1] *= alpha_a;
            o[n][2] *= alpha_b;
            o[n][3] *= alpha_b;
        }
        // O += P V: P's accumulator layout is the A operand layout, 16 keys per k-step.
#pragma unroll
        for (int ks = 0; ks < PF_TK / 16; ks++) {
            const u32 p[4] = {
                pack_bf16x2(s[2 * ks][0], s[2 * ks][1]),
                pack_bf16x2(s[2 * ks][2], s[2 * ks][3]),
                pack_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                pack_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3]),
            };
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                const bf16* vr = &vt_s[n * 8 + g][ks * 16 + 2 * t];
                mma_bf16_16816(o[n], p, ld_u32(vr), ld_u32(vr + 8));
            }
        }
    }

    const float inv_a = 1.0f / quad_sum(l_a), inv_b = 1.0f / quad_sum(l_b);
    const size_t out_width = (size_t)num_heads * D;
#pragma unroll
    for (int n = 0; n < D / 8; n++) {
        const size_t col = (size_t)head * D + n * 8 + 2 * t;
        if (valid_a) {
            *reinterpret_cast<u32*>(out + (row0 + g) * out_width + col) =
                pack_bf16x2(o[n][0] * inv_a, o[n][1] * inv_a);
        }
        if (valid_b) {
            *reinterpret_cast<u32*>(out + (row0 + g + 8) * out_width + col) =
                pack_bf16x2(o[n][2] * inv_b, o[n][3] * inv_b);
        }
    }
}

// Grid: (num_kv_heads, num_tiles); block: 32 * group threads (one warp per query head).
#define PREFILL_ATTENTION(D)                                                                          \
    extern "C" __global__ void prefill_attention_d##D(                                              \
        bf16* __restrict__ out, const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,     \
        const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,                     \
        const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len,                \
        const u32* __restrict__ tile_row_start, const u32* __restrict__ tile_num_rows, float scale, \
        u32 num_heads, u32 num_kv_heads, u32 row_width, u32 block_size) {                           \
        prefill_attention_tile<D>(out, qkv, k_cache, v_cache, block_tables, row_table_start,        \
                                  row_kv_len, tile_row_start, tile_num_rows, scale, num_heads,      \
                                  num_kv_heads, row_width, block_size);                             \
    }

PREFILL_ATTENTION(64)
PREFILL_ATTENTION(128)
