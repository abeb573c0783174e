// Paged attention over the KV cache, one query token row at a time, for decode and prefill alike.
// The general path: head layouts that decode_attention.cu handles (head_dim 64 or 128, group <= 8,
// every Llama shape) use that kernel for their single rows instead, and prefill_attention.cu for
// prompt chunks.
//
// Each row attends to the first `row_kv_len[row]` positions of its sequence (causality is encoded
// in that length by the host), found through the sequence's block table. A block handles one row
// and one KV head, so the K/V it reads serve all `group = num_heads / num_kv_heads` query heads
// that share them (GQA). Long contexts are split along the keys into partitions ("split-K"), one
// block each, so that a small decode batch still fills the GPU; each partition writes its
// unnormalised output with its running max and sum, and `attention_reduce` merges them.
// Within a partition keys are processed in chunks of CHUNK with an online softmax, so shared
// memory does not grow with the context. Scores, softmax and accumulation are f32.
//
// Limits (checked by the host): head_dim <= 256, group * head_dim <= ACC * THREADS. A row of KV
// length 0 (padding) gets zeros.
//
// The partition size is computed here from the batch's longest context, read from device memory,
// and the grid's split count (`partition_size`), rather than passed by value: a CUDA graph fixes
// the grid and the arguments at capture, and this way each replay still partitions for its own
// contexts (a grid sized for the longest possible context only adds blocks that exit at once).
//
// Fast path (head_dim / 8 divides 32, group <= GMAX; every Llama/Qwen shape): K and V are read
// with 16-byte loads, head_dim / 8 lanes per key, so a warp covers 32 / (head_dim / 8) keys at
// once and each thread accumulates its 8 dims for every head of the group in registers. The
// scalar path kept keys serial per thread and re-read V once per head, which left decode latency
// bound (few warps per SM, one 2-byte load in flight per thread). The fast path's per-thread
// partial sums are reduced through shared memory once per block, after the last chunk. Other
// head dims (those not 8, 16, 32, 64, 128 or 256, e.g. 80 or 96) and groups over GMAX take the
// scalar path.

#define THREADS 128
#define CHUNK 128
#define ACC 16
#define GMAX 8

// Grid: (num_kv_heads, rows, max_splits). Shared: q [group][head_dim], scores [group][CHUNK],
// per-head m / l / alpha [group] each, slots [CHUNK], and on the fast path the partial sums
// [THREADS / (head_dim / 8)][group][head_dim].
extern "C" __global__ void __launch_bounds__(THREADS) paged_attention(
    bf16* __restrict__ out, float* __restrict__ part_o, float* __restrict__ part_ml,
    const bf16* __restrict__ qkv, const bf16* __restrict__ k_cache,
    const bf16* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ row_table_start, const u32* __restrict__ row_kv_len, float scale,
    u32 num_heads, u32 num_kv_heads, u32 head_dim, u32 row_width, u32 block_size,
    const u32* __restrict__ batch_max_kv_len, u32 max_splits) {
    pdl_start();
    extern __shared__ float smem[];
    const u32 kvh = blockIdx.x, row = blockIdx.y, split = blockIdx.z;
    const u32 group = num_heads / num_kv_heads;
    const u32 kv_len = row_kv_len[row];
    if (kv_len == 0) {
        // A padding row of a CUDA-graph batch: no keys, so a zero output and nothing to merge.
        bf16* o = out + (size_t)row * num_heads * head_dim + (size_t)kvh * group * head_dim;
        if (split == 0)
            for (u32 i = threadIdx.x; i < group * head_dim; i += THREADS) o[i] = 0;
        return;
    }
    const u32 part_size = partition_size(*batch_max_kv_len, max_splits);
    const u32 start = split * part_size;
    if (start >= kv_len) return;
    const u32 end = umin(start + part_size, kv_len);
    const u32 num_splits = (kv_len + part_size - 1) / part_size;
    const u32 kv_width = num_kv_heads * head_dim;
    const u32* table = block_tables + row_table_start[row];

    float* q_s = smem;                         // [group][head_dim]
    float* s_s = q_s + group * head_dim;       // [group][CHUNK]
    float* m_s = s_s + group * CHUNK;          // [group]
    float* l_s = m_s + group;                  // [group]
    float* a_s = l_s + group;                  // [group]
    u32* slot_s = (u32*)(a_s + group);         // [CHUNK]

    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nwarps = THREADS / 32;
    const bf16* q = qkv + (size_t)row * row_width + (size_t)kvh * group * head_dim;
    for (u32 i = tid; i < group * head_dim; i += THREADS) q_s[i] = bf2f(q[i]) * scale;
    for (u32 g = tid; g < group; g += THREADS) {
        m_s[g] = NEG_INF;
        l_s[g] = 0.0f;
    }
    float acc[ACC];
#pragma unroll
    for (int k = 0; k < ACC; k++) acc[k] = 0.0f;
    // Fast-path lane roles: d8 lanes per key, kpw keys per warp; uniform over the block.
    const u32 d8 = head_dim / 8;
    const bool fast = head_dim % 8 == 0 && d8 > 0 && 32 % d8 == 0 && group <= GMAX;
    const u32 kpw = fast ? 32 / d8 : 1, sub = fast ? lane / d8 : 0, dl = fast ? lane % d8 : 0;
    float qr[GMAX][8], av[GMAX][8];
#pragma unroll
    for (u32 g = 0; g < GMAX; g++) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            av[g][e] = 0.0f;
            qr[g][e] = 0.0f;
        }
    }
    __syncthreads();
    if (fast) {
#pragma unroll
        for (u32 g = 0; g < GMAX; g++) {
            if (g < group) {
#pragma unroll
                for (int e = 0; e < 8; e++) qr[g][e] = q_s[g * head_dim + dl * 8 + e];
            }
        }
    }

    for (u32 c0 = start; c0 < end; c0 += CHUNK) {
        const u32 n = umin((u32)CHUNK, end - c0);
        if (fast) {
            // Scores: d8 lanes per key, 8 dims each (one 16-byte load), summed over the d8 lanes.
            for (u32 j0 = warp * kpw; j0 < n; j0 += nwarps * kpw) {
                const u32 j = j0 + sub;
                const bool ok = j < n;
                u32 slot = 0;
                float kf[8];
                if (ok) {
                    u32 pos = c0 + j;
                    slot = table[pos / block_size] * block_size + pos % block_size;
                    const bf16* k =
                        k_cache + (size_t)slot * kv_width + (size_t)kvh * head_dim + dl * 8;
                    unpack8(*(const uint4*)k, kf);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; e++) kf[e] = 0.0f;
                }
#pragma unroll
                for (u32 g = 0; g < GMAX; g++) {
                    if (g < group) {
                        float dot = 0.0f;
#pragma unroll
                        for (int e = 0; e < 8; e++) dot += kf[e] * qr[g][e];
                        for (u32 o = d8 >> 1; o > 0; o >>= 1)
                            dot += __shfl_xor_sync(0xffffffffu, dot, o);
                        if (ok && dl == 0) s_s[g * CHUNK + j] = dot;
                    }
                }
                if (ok && dl == 0) slot_s[j] = slot;
            }
        } else {
            // Scores: one warp per key, lanes across head_dim.
            for (u32 j = warp; j < n; j += nwarps) {
                u32 pos = c0 + j;
                u32 slot = table[pos / block_size] * block_size + pos % block_size;
                const bf16* k = k_cache + (size_t)slot * kv_width + (size_t)kvh * head_dim;
                float kr[8];
#pragma unroll
                for (int t = 0; t < 8; t++) {
                    u32 d = lane + 32 * t;
                    kr[t] = d < head_dim ? bf2f(k[d]) : 0.0f;
                }
                for (u32 g = 0; g < group; g++) {
                    float dot = 0.0f;
#pragma unroll
                    for (int t = 0; t < 8; t++) {
                        u32 d = lane + 32 * t;
                        if (d < head_dim) dot += kr[t] * q_s[g * head_dim + d];
                    }
                    dot = warp_sum(dot);
                    if (lane == 0) s_s[g * CHUNK + j] = dot;
                }
                if (lane == 0) slot_s[j] = slot;
            }
        }
        // Every warp's scores and slots must be in shared memory before the softmax reads them
        // (both paths write s_s / slot_s from one warp per key or per key group).
        __syncthreads();
        // Online softmax: one warp per query head of the group.
        for (u32 g = warp; g < group; g += nwarps) {
            float cmax = NEG_INF;
            for (u32 j = lane; j < n; j += 32) cmax = fmaxf(cmax, s_s[g * CHUNK + j]);
            cmax = warp_max(cmax);
            float m_new = fmaxf(m_s[g], cmax);
            float sum = 0.0f;
            for (u32 j = lane; j < n; j += 32) {
                float p = __expf(s_s[g * CHUNK + j] - m_new);
                s_s[g * CHUNK + j] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                float alpha = __expf(m_s[g] - m_new);  // 0 on the first chunk (m = -inf)
                a_s[g] = alpha;
                l_s[g] = l_s[g] * alpha + sum;
                m_s[g] = m_new;
            }
        }
        __syncthreads();
        if (fast) {
            // p @ V: this thread's 8 dims of every head, over its share of the chunk's keys.
#pragma unroll
            for (u32 g = 0; g < GMAX; g++) {
                if (g < group) {
                    const float a = a_s[g];
#pragma unroll
                    for (int e = 0; e < 8; e++) av[g][e] *= a;
                }
            }
            for (u32 j = warp * kpw + sub; j < n; j += nwarps * kpw) {
                float vf[8];
                const bf16* v =
                    v_cache + (size_t)slot_s[j] * kv_width + (size_t)kvh * head_dim + dl * 8;
                unpack8(*(const uint4*)v, vf);
#pragma unroll
                for (u32 g = 0; g < GMAX; g++) {
                    if (g < group) {
                        const float p = s_s[g * CHUNK + j];
#pragma unroll
                        for (int e = 0; e < 8; e++) av[g][e] += p * vf[e];
                    }
                }
            }
        } else {
            // Accumulate p @ V: each thread owns (head, dim) pairs; neighbouring threads read
            // neighbouring V elements.
#pragma unroll
            for (int k = 0; k < ACC; k++) {
                u32 idx = tid + k * THREADS;
                if (idx < group * head_dim) {
                    u32 g = idx / head_dim, d = idx % head_dim;
                    float a = acc[k] * a_s[g];
                    const float* p = s_s + g * CHUNK;
                    const bf16* v = v_cache + (size_t)kvh * head_dim + d;
                    for (u32 j = 0; j < n; j++) a += p[j] * bf2f(v[(size_t)slot_s[j] * kv_width]);
                    acc[k] = a;
                }
            }
        }
        __syncthreads();
    }

    if (fast) {
        // Sum the partials of the THREADS / d8 key slots into acc[], in the scalar path's layout.
        float* red = (float*)(slot_s + CHUNK);  // [slots][group][head_dim]
        const u32 key_slot = warp * kpw + sub, slots = nwarps * kpw;
#pragma unroll
        for (u32 g = 0; g < GMAX; g++) {
            if (g < group) {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    red[(key_slot * group + g) * head_dim + dl * 8 + e] = av[g][e];
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < ACC; k++) {
            u32 idx = tid + k * THREADS;
            if (idx < group * head_dim) {
                float a = 0.0f;
                for (u32 t = 0; t < slots; t++) a += red[t * group * head_dim + idx];
                acc[k] = a;
            }
        }
    }

#pragma unroll
    for (int k = 0; k < ACC; k++) {
        u32 idx = tid + k * THREADS;
        if (idx < group * head_dim) {
            u32 g = idx / head_dim, d = idx % head_dim;
            u32 head = kvh * group + g;
            if (num_splits == 1) {
                out[(size_t)row * num_heads * head_dim + (size_t)head * head_dim + d] =
                    f2bf(acc[k] / l_s[g]);
            } else {
                size_t p = ((size_t)row * num_heads + head) * max_splits + split;
                part_o[p * head_dim + d] = acc[k];
                if (d == 0) {
                    part_ml[p * 2] = m_s[g];
                    part_ml[p * 2 + 1] = l_s[g];
                }
            }
        }
    }
}

// Merges the partitions of rows split along the context. Grid: (num_heads, rows); dynamic
// shared memory: 2 * max_splits floats. Rows are `row_map[blockIdx.y]` when a map is given (as
// decode_attention.cu's), else blockIdx.y.
//
// The block first copies every partition's (max, sum) into shared memory, all loads in flight
// at once, and each thread's sum over the partitions of its output dims is unrolled so that its
// loads overlap too: loops that loaded one partition's values per iteration waited for one
// memory round trip per partition (5.4 us for 16 partitions on an H100, more than the attention
// it merged).
extern "C" __global__ void attention_reduce(bf16* __restrict__ out,
                                           const float* __restrict__ part_o,
                                           const float* __restrict__ part_ml,
                                           const u32* __restrict__ row_kv_len,
                                           const u32* __restrict__ row_map, u32 num_heads,
                                           u32 head_dim,
                                           const u32* __restrict__ batch_max_kv_len,
                                           u32 max_splits) {
    extern __shared__ float ml[];  // [num_splits][2]
    pdl_start();
    const u32 head = blockIdx.x, row = row_map ? row_map[blockIdx.y] : blockIdx.y;
    const u32 part_size = partition_size(*batch_max_kv_len, max_splits);
    const u32 num_splits = (row_kv_len[row] + part_size - 1) / part_size;
    if (num_splits <= 1) return;  // written directly by the attention kernel
    const size_t base = ((size_t)row * num_heads + head) * max_splits;
    for (u32 i = threadIdx.x; i < 2 * num_splits; i += blockDim.x) ml[i] = part_ml[base * 2 + i];
    __syncthreads();
    float m = NEG_INF;
    for (u32 s = 0; s < num_splits; s++) m = fmaxf(m, ml[2 * s]);
    float l = 0.0f;
    for (u32 s = 0; s < num_splits; s++) l += ml[2 * s + 1] * __expf(ml[2 * s] - m);
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll 8
        for (u32 s = 0; s < num_splits; s++) o += part_o[(base + s) * head_dim + d] * __expf(ml[2 * s] - m);
        out[(size_t)row * num_heads * head_dim + (size_t)head * head_dim + d] = f2bf(o / l);
    }
}
