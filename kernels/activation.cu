// Element-wise and row-gather kernels around the GEMMs:
//  - silu_mul: out = silu(gate) * up over a fused [rows, 2n] gate|up tensor, in f32.
//  - add_bias: x[r, c] += bias[c] (q|k|v and o_proj biases; cuBLAS GEMMs here have no epilogue).
//  - gather_rows: out[i] = x[indices[i]] (the rows whose logits are wanted).
//  - concat_cols: out[r, p * cols + c] = parts[p, r, c]: the blocks an all-gather stacks rank
//    after rank, laid side by side as columns (vocab-parallel logits).

extern "C" __global__ void silu_mul(bf16* __restrict__ out, const bf16* __restrict__ gate_up,
                                   u32 rows, u32 n) {
    pdl_start();
    size_t total = (size_t)rows * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t r = idx / n, c = idx % n;
        float g = bf2f(gate_up[r * 2 * n + c]);
        float u = bf2f(gate_up[r * 2 * n + n + c]);
        out[idx] = f2bf(silu_mul_f(g, u));
    }
}

// silu_mul over 16-byte vectors (n % 8 == 0, 16-byte aligned buffers): a prefill step's gate|up
// is hundreds of MB. Grid (vectors of a row / blockDim.x, rows; y strides past 65535 rows), one
// vector a thread: no index division. The scalar kernel's per-element 64-bit division held it to
// about 2.3 TB/s on an H100, and a grid-stride version of this one with a 64-bit division per
// vector to 2.49 TB/s (82% of the copy bandwidth, 8,696 x 14,336). Same numerics.
extern "C" __global__ void silu_mul_v8(bf16* __restrict__ out, const bf16* __restrict__ gate_up,
                                      u32 rows, u32 n) {
    pdl_start();
    const u32 nv = n / 8, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= nv) return;
    for (u32 r = blockIdx.y; r < rows; r += gridDim.y) {
        const bf16* in = gate_up + (size_t)r * 2 * n + c * 8;
        float g[8], u[8];
        unpack8(*(const uint4*)in, g);
        unpack8(*(const uint4*)(in + n), u);
        u32 packed[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float a = silu_mul_f(g[2 * i], u[2 * i]);
            const float b = silu_mul_f(g[2 * i + 1], u[2 * i + 1]);
            packed[i] = (u32)f2bf(a) | ((u32)f2bf(b) << 16);
        }
        *(uint4*)(out + (size_t)r * n + c * 8) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
}

extern "C" __global__ void add_bias(bf16* __restrict__ x, const bf16* __restrict__ bias, u32 rows,
                                   u32 cols) {
    pdl_start();
    size_t total = (size_t)rows * cols;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        x[idx] = f2bf(bf2f(x[idx]) + bf2f(bias[idx % cols]));
    }
}

extern "C" __global__ void gather_rows(bf16* __restrict__ out, const bf16* __restrict__ x,
                                      const u32* __restrict__ indices, u32 cols) {
    pdl_start();
    const bf16* src = x + (size_t)indices[blockIdx.x] * cols;
    bf16* dst = out + (size_t)blockIdx.x * cols;
    for (u32 i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void concat_cols(bf16* __restrict__ out, const bf16* __restrict__ parts,
                                      u32 num_parts, u32 rows, u32 cols) {
    pdl_start();
    size_t block = (size_t)rows * cols, total = block * num_parts;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t p = idx / block, r = idx % block / cols, c = idx % cols;
        out[(r * num_parts + p) * cols + c] = parts[idx];
    }
}
