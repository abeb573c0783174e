// Token embedding lookup for a (possibly vocab-parallel) table: row `token - vocab_start` of the
// table, zeros for tokens another rank holds (the all-reduce fills them in).
// Grid: one block per token; threads stride over the hidden dimension.

extern "C" __global__ void embedding(bf16* __restrict__ out, const bf16* __restrict__ table,
                                     const u32* __restrict__ tokens, u32 vocab_start,
                                     u32 vocab_rows, u32 hidden) {
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
