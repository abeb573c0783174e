// RMSNorm in f32 (statistics and scaling), inputs and outputs in bf16:
//  - rms_norm: out = x * rsqrt(mean(x^2) + eps) * w, one block per row.
//  - add_rms_norm: residual += delta (rounded to bf16, as a bf16 model stores its residual), then
//    out = rms_norm(residual): the fused pre-norm of every transformer block, one pass over memory.
//  - qk_norm: per-head RMSNorm of the q and k heads of fused q|k|v rows, in place (Qwen3); one
//    warp per head.
// rms_norm and add_rms_norm stage the row in shared memory in f32 so that it is read from global
// memory once; any width. rms_norm_v8 and add_rms_norm_v8 are the same operations for rows of
// whole 16-byte vectors (cols % 8 == 0, 16-byte aligned; the host picks them): each thread keeps
// up to NORM_VECS vectors of its row (and of the weight) in registers, so every load of the row
// is in flight at once, no shared memory holds the row, and the block's sum takes one barrier.
// Decode rows are latency-bound (one 4096-wide row is 8 KB), which is what this saves.

extern "C" __global__ void rms_norm(bf16* __restrict__ out, const bf16* __restrict__ x,
                                   const bf16* __restrict__ w, float eps, u32 cols) {
    pdl_start();
    extern __shared__ float row[];
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = bf2f(x[base + i]);
        row[i] = v;
        ss += v * v;
    }
    float scale = rsqrtf(block_sum(ss, scratch) / (float)cols + eps);
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x)
        out[base + i] = f2bf(row[i] * scale * bf2f(w[i]));
}

extern "C" __global__ void add_rms_norm(bf16* __restrict__ out, bf16* __restrict__ residual,
                                       const bf16* __restrict__ delta, const bf16* __restrict__ w,
                                       float eps, u32 cols) {
    pdl_start();
    extern __shared__ float row[];
    __shared__ float scratch[32];
    size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x) {
        bf16 r = f2bf(bf2f(residual[base + i]) + bf2f(delta[base + i]));
        residual[base + i] = r;
        float v = bf2f(r);
        row[i] = v;
        ss += v * v;
    }
    float scale = rsqrtf(block_sum(ss, scratch) / (float)cols + eps);
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x)
        out[base + i] = f2bf(row[i] * scale * bf2f(w[i]));
}

#define NORM_VECS 4

// Sum over the block with one barrier: each warp's sum goes to `scratch` (32 floats, used once),
// then every thread adds them in the same order, so all threads get the same value.
__device__ __forceinline__ float block_sum_once(float v, float* scratch) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.0f;
    for (u32 i = 0; i < (blockDim.x >> 5); i++) s += scratch[i];
    return s;
}

// Eight f32 rounded to bf16 (nearest even), as one 16-byte vector: unpack8's inverse.
__device__ __forceinline__ uint4 pack8(const float* f) {
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (u32)f2bf(f[2 * i]) | ((u32)f2bf(f[2 * i + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// One row per block of blockDim.x >= cols / (8 * NORM_VECS) threads. With ADD, `residual` +=
// `x` (rounded to bf16) and the sum is normalised; without, `x` is.
template <bool ADD>
__device__ __forceinline__ void norm_row_v8(bf16* __restrict__ out, bf16* __restrict__ residual,
                                            const bf16* __restrict__ x, const bf16* __restrict__ w,
                                            float eps, u32 cols) {
    __shared__ float scratch[32];
    const u32 vecs = cols / 8;
    const size_t base = (size_t)blockIdx.x * vecs;
    uint4 v[NORM_VECS], wv[NORM_VECS], r[NORM_VECS];
    // Every load first, so they are in flight together.
#pragma unroll
    for (int j = 0; j < NORM_VECS; j++) {
        const u32 i = threadIdx.x + j * blockDim.x;
        if (i < vecs) {
            v[j] = ((const uint4*)x)[base + i];
            wv[j] = ((const uint4*)w)[i];
            if (ADD) r[j] = ((const uint4*)residual)[base + i];
        }
    }
    float ss = 0.0f, f[8];
#pragma unroll
    for (int j = 0; j < NORM_VECS; j++) {
        const u32 i = threadIdx.x + j * blockDim.x;
        if (i < vecs) {
            if (ADD) {
                // The residual is stored, and normalised, rounded to bf16.
                float d[8];
                unpack8(r[j], f);
                unpack8(v[j], d);
#pragma unroll
                for (int e = 0; e < 8; e++) f[e] += d[e];
                v[j] = pack8(f);
                ((uint4*)residual)[base + i] = v[j];
            }
            unpack8(v[j], f);
#pragma unroll
            for (int e = 0; e < 8; e++) ss += f[e] * f[e];
        }
    }
    const float scale = rsqrtf(block_sum_once(ss, scratch) / (float)cols + eps);
#pragma unroll
    for (int j = 0; j < NORM_VECS; j++) {
        const u32 i = threadIdx.x + j * blockDim.x;
        if (i < vecs) {
            float wf[8];
            unpack8(v[j], f);
            unpack8(wv[j], wf);
            // The scalar kernels' expression and order: x * scale * w.
#pragma unroll
            for (int e = 0; e < 8; e++) f[e] = f[e] * scale * wf[e];
            ((uint4*)out)[base + i] = pack8(f);
        }
    }
}

extern "C" __global__ void rms_norm_v8(bf16* __restrict__ out, const bf16* __restrict__ x,
                                      const bf16* __restrict__ w, float eps, u32 cols) {
    pdl_start();
    norm_row_v8<false>(out, nullptr, x, w, eps, cols);
}

extern "C" __global__ void add_rms_norm_v8(bf16* __restrict__ out, bf16* __restrict__ residual,
                                          const bf16* __restrict__ delta,
                                          const bf16* __restrict__ w, float eps, u32 cols) {
    pdl_start();
    norm_row_v8<true>(out, residual, delta, w, eps, cols);
}

// Grid: (rows, ceil((num_heads + num_kv_heads) / warps per block)); one warp per head.
extern "C" __global__ void qk_norm(bf16* __restrict__ qkv, const bf16* __restrict__ q_w,
                                  const bf16* __restrict__ k_w, float eps, u32 num_heads,
                                  u32 num_kv_heads, u32 head_dim, u32 row_width) {
    pdl_start();
    u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 head = blockIdx.y * (blockDim.x >> 5) + warp;
    if (head >= num_heads + num_kv_heads) return;
    bf16* h = qkv + (size_t)blockIdx.x * row_width + (size_t)head * head_dim;
    const bf16* w = head < num_heads ? q_w : k_w;
    float ss = 0.0f;
    for (u32 i = lane; i < head_dim; i += 32) {
        float v = bf2f(h[i]);
        ss += v * v;
    }
    float scale = rsqrtf(warp_sum(ss) / (float)head_dim + eps);
    for (u32 i = lane; i < head_dim; i += 32) h[i] = f2bf(bf2f(h[i]) * scale * bf2f(w[i]));
}
