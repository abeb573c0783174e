// Rotary position embedding, "rotate half" convention of HF Llama: pairs (i, i + d/2) of every q
// and k head are rotated by the token's angle. The cos/sin tables are f32
// `[max_positions, head_dim / 2]`, built on the host with any scaling (Llama 3, linear, ...)
// already applied, so this kernel does not know the scaling type.
// Grid: one block per token row; threads stride over (head, i) pairs of the q and k heads.

extern "C" __global__ void rope(bf16* __restrict__ qkv, const u32* __restrict__ positions,
                               const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                               u32 num_rot_heads, u32 head_dim, u32 row_width) {
    u32 half = head_dim / 2;
    bf16* row = qkv + (size_t)blockIdx.x * row_width;
    size_t table = (size_t)positions[blockIdx.x] * half;
    for (u32 j = threadIdx.x; j < num_rot_heads * half; j += blockDim.x) {
        u32 h = j / half, i = j % half;
        bf16* head = row + (size_t)h * head_dim;
        float c = cos_t[table + i], s = sin_t[table + i];
        float x1 = bf2f(head[i]), x2 = bf2f(head[i + half]);
        head[i] = f2bf(x1 * c - x2 * s);
        head[i + half] = f2bf(x2 * c + x1 * s);
    }
}
