// RMSNorm in f32 (statistics and scaling), inputs and outputs in bf16:
//  - rms_norm: out = x * rsqrt(mean(x^2) + eps) * w, one block per row.
//  - add_rms_norm: residual += delta (rounded to bf16, as a bf16 model stores its residual), then
//    out = rms_norm(residual): the fused pre-norm of every transformer block, one pass over memory.
//  - qk_norm: per-head RMSNorm of the q and k heads of fused q|k|v rows, in place (Qwen3); one
//    warp per head.
// The row is staged in shared memory in f32 so that it is read from global memory once.

extern "C" __global__ void rms_norm(bf16* __restrict__ out, const bf16* __restrict__ x,
                                   const bf16* __restrict__ w, float eps, u32 cols) {
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

// Grid: (rows, ceil((num_heads + num_kv_heads) / warps per block)); one warp per head.
extern "C" __global__ void qk_norm(bf16* __restrict__ qkv, const bf16* __restrict__ q_w,
                                  const bf16* __restrict__ k_w, float eps, u32 num_heads,
                                  u32 num_kv_heads, u32 head_dim, u32 row_width) {
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
