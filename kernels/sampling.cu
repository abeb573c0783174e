// Token choice on the GPU, so a step copies back a few bytes per sequence instead of its logits.
//  - argmax_rows: the greedy choice of each row of bf16 logits, exactly the host sampler's
//    `argmax`: the first index of the largest value; NaN never wins; a row with nothing above
//    -inf gives 0.
//
// Grid: one block per row, ARGMAX_THREADS threads. Each thread walks its share of the row in
// ascending index order (16-byte loads when the row allows them), keeping its first maximum; the
// block then keeps the largest value and, among equal values, the lowest index.

#define ARGMAX_THREADS 1024
#define NO_INDEX 0xffffffffu

struct Best {
    float value;
    u32 index;
};

__device__ __forceinline__ void consider(Best& best, float value, u32 index) {
    if (value > best.value) {  // strict: the first of equal values stays; NaN fails
        best.value = value;
        best.index = index;
    }
}

__device__ __forceinline__ Best better(Best a, Best b) {
    if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
    return a;
}

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Best other;
        other.value = __shfl_xor_sync(0xffffffffu, b.value, o);
        other.index = __shfl_xor_sync(0xffffffffu, b.index, o);
        b = better(b, other);
    }
    return b;
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_rows(u32* __restrict__ out, const bf16* __restrict__ logits, u32 cols) {
    __shared__ float values[32];
    __shared__ u32 indices[32];
    const bf16* row = logits + (size_t)blockIdx.x * cols;
    Best best = {NEG_INF, NO_INDEX};
    if (cols % 8 == 0) {
        // Rows start 16-byte aligned: allocations are 256-byte aligned and a row is 16 * k bytes.
        const uint4* vec = (const uint4*)row;
        for (u32 v = threadIdx.x; v < cols / 8; v += blockDim.x) {
            uint4 raw = vec[v];
            const u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                consider(best, __uint_as_float(w[i] << 16), v * 8 + 2 * i);
                consider(best, __uint_as_float(w[i] & 0xffff0000u), v * 8 + 2 * i + 1);
            }
        }
    } else {
        for (u32 i = threadIdx.x; i < cols; i += blockDim.x) consider(best, bf2f(row[i]), i);
    }
    best = warp_best(best);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        values[warp] = best.value;
        indices[warp] = best.index;
    }
    __syncthreads();
    if (warp == 0) {
        const u32 nwarps = blockDim.x >> 5;
        Best b = {NEG_INF, NO_INDEX};
        if (lane < nwarps) b = Best{values[lane], indices[lane]};
        b = warp_best(b);
        if (lane == 0) out[blockIdx.x] = b.index == NO_INDEX ? 0 : b.index;
    }
}
