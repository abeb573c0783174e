// Rotary position embedding, "rotate half" convention of HF Llama: pairs (i, i + d/2) of every q
// and k head are rotated by the token's angle. The cos/sin tables are f32
// `[max_positions, head_dim / 2]`, built on the host with any scaling (Llama 3, linear, ...)
// already applied, so this kernel does not know the scaling type.
// Grid: one block per token row; threads stride over (head, i) pairs of the q and k heads.

extern "C" __global__ void rope(bf16* __restrict__ qkv, const u32* __restrict__ positions,
                               const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                               u32 num_rot_heads, u32 head_dim, u32 row_width) {
    pdl_start();
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

// rope, then the rotated k heads and the v heads of each row into its slot of one layer's paged
// cache (kv_cache.cu's layout and padding slot): write_kv fused in, which saves a launch and a
// re-read of the row per layer. The rotated k also stays in the row, as `rope` leaves it.
// Grid: (rows, blocks per row); a row's pairs and v values are spread over its blocks, so that at
// decode (one row) each thread has one pair: one block striding a row did 3 dependent rounds of
// loads for an 8B model's 2560 pairs (4.4 us on an H100, for 10 KB of data).
extern "C" __global__ void rope_write_kv(bf16* __restrict__ qkv, bf16* __restrict__ k_cache,
                                        bf16* __restrict__ v_cache,
                                        const u32* __restrict__ positions,
                                        const u32* __restrict__ slot_mapping,
                                        const float* __restrict__ cos_t,
                                        const float* __restrict__ sin_t, u32 num_heads,
                                        u32 num_kv_heads, u32 head_dim, u32 row_width) {
    pdl_start();
    const u32 half = head_dim / 2, q_width = num_heads * head_dim, kv_width = num_kv_heads * head_dim;
    bf16* row = qkv + (size_t)blockIdx.x * row_width;
    const size_t table = (size_t)positions[blockIdx.x] * half;
    const u32 slot = slot_mapping[blockIdx.x];
    bf16* k = slot == 0xffffffffu ? nullptr : k_cache + (size_t)slot * kv_width;
    const u32 first = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
    for (u32 j = first; j < (num_heads + num_kv_heads) * half; j += stride) {
        const u32 h = j / half, i = j % half;
        bf16* head = row + (size_t)h * head_dim;
        const float c = cos_t[table + i], s = sin_t[table + i];
        const float x1 = bf2f(head[i]), x2 = bf2f(head[i + half]);
        const bf16 y1 = f2bf(x1 * c - x2 * s), y2 = f2bf(x2 * c + x1 * s);
        head[i] = y1;
        head[i + half] = y2;
        if (h >= num_heads && k) {
            k[(h - num_heads) * head_dim + i] = y1;
            k[(h - num_heads) * head_dim + i + half] = y2;
        }
    }
    if (!k) return;
    bf16* v = v_cache + (size_t)slot * kv_width;
    for (u32 i = first; i < kv_width; i += stride) v[i] = row[q_width + kv_width + i];
}

// rope_write_kv with 4 pairs a thread (8-byte loads and stores, cos/sin as float4) and V in
// 16-byte pieces: same arithmetic as above. In a prefill step of 8,192 rows the scalar kernel's
// 2-byte accesses reached about half of the copy bandwidth (session 8's ncu profile: 5.1 ms of
// a 206 ms step for ~7 GB moved). Needs head_dim % 8 == 0 and 16-byte aligned buffers (the host
// checks). Grid: (rows, blocks per row) over the rows' pairs in fours.
extern "C" __global__ void rope_write_kv_v4(bf16* __restrict__ qkv, bf16* __restrict__ k_cache,
                                           bf16* __restrict__ v_cache,
                                           const u32* __restrict__ positions,
                                           const u32* __restrict__ slot_mapping,
                                           const float* __restrict__ cos_t,
                                           const float* __restrict__ sin_t, u32 num_heads,
                                           u32 num_kv_heads, u32 head_dim, u32 row_width) {
    pdl_start();
    const u32 half = head_dim / 2, quads = half / 4;
    const u32 q_width = num_heads * head_dim, kv_width = num_kv_heads * head_dim;
    bf16* row = qkv + (size_t)blockIdx.x * row_width;
    const size_t table = (size_t)positions[blockIdx.x] * half;
    const u32 slot = slot_mapping[blockIdx.x];
    bf16* k = slot == 0xffffffffu ? nullptr : k_cache + (size_t)slot * kv_width;
    const u32 first = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
    for (u32 j = first; j < (num_heads + num_kv_heads) * quads; j += stride) {
        const u32 h = j / quads, i = (j % quads) * 4;
        bf16* head = row + (size_t)h * head_dim;
        const float4 c4 = *reinterpret_cast<const float4*>(cos_t + table + i);
        const float4 s4 = *reinterpret_cast<const float4*>(sin_t + table + i);
        const float c[4] = {c4.x, c4.y, c4.z, c4.w}, s[4] = {s4.x, s4.y, s4.z, s4.w};
        bf16 x1[4], x2[4], y1[4], y2[4];
        *reinterpret_cast<uint2*>(x1) = *reinterpret_cast<const uint2*>(head + i);
        *reinterpret_cast<uint2*>(x2) = *reinterpret_cast<const uint2*>(head + i + half);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float a = bf2f(x1[e]), b = bf2f(x2[e]);
            y1[e] = f2bf(a * c[e] - b * s[e]);
            y2[e] = f2bf(b * c[e] + a * s[e]);
        }
        const uint2 lo = *reinterpret_cast<const uint2*>(y1), hi = *reinterpret_cast<const uint2*>(y2);
        *reinterpret_cast<uint2*>(head + i) = lo;
        *reinterpret_cast<uint2*>(head + i + half) = hi;
        if (h >= num_heads && k) {
            *reinterpret_cast<uint2*>(k + (h - num_heads) * head_dim + i) = lo;
            *reinterpret_cast<uint2*>(k + (h - num_heads) * head_dim + i + half) = hi;
        }
    }
    if (!k) return;
    bf16* v = v_cache + (size_t)slot * kv_width;
    const bf16* v_row = row + q_width + kv_width;
    for (u32 i = first * 8; i < kv_width; i += stride * 8) {
        *reinterpret_cast<uint4*>(v + i) = *reinterpret_cast<const uint4*>(v_row + i);
    }
}
