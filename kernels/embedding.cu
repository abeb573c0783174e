// Token embedding lookup for a (possibly vocab-parallel) table: row `token - vocab_start` of the
// table, zeros for tokens another rank holds (the all-reduce fills them in).
// Grid: one block per token; threads stride over the hidden dimension.

extern "C" __global__ void embedding(bf16* __restrict__ out, const bf16* __restrict__ table,
                                     const u32* __restrict__ tokens, u32 vocab_start,
                                     u32 vocab_rows, u32 hidden) {
    pdl_start();
    u32 row = blockIdx.x;
    u32 local = tokens[row] - vocab_start;  // wraps for tokens below vocab_start
    bf16* o = out + (size_t)row * hidden;
    if (local < vocab_rows) {
        const bf16* t = table + (size_t)local * hidden;
        for (u32 i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = t[i];
    } else {
        for (u32 i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = 0;
    }
}

// Dummy weights generated in place (tessera-model's weights/dummy.rs, `DummyFill`, defines them):
// element i of a part is center + half_width * unit(splitmix64(base ^ global index)), computed in
// f32 without fused multiply-add and rounded once to bf16, so the values equal the host
// generator's bit for bit while a 70B model's ~140 GB never cross PCIe. Grid-stride over the part.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

extern "C" __global__ void fill_dummy(bf16* __restrict__ out, unsigned long long n,
                                      unsigned long long base, float center, float half_width,
                                      unsigned long long cols, unsigned long long row0,
                                      unsigned long long col0, unsigned long long full_cols) {
    pdl_start();
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long global = (row0 + i / cols) * full_cols + col0 + i % cols;
        const float unit = (float)(splitmix64(base ^ global) >> 40) / 8388608.0f - 1.0f;
        out[i] = f2bf(__fadd_rn(center, __fmul_rn(half_width, unit)));
    }
}
