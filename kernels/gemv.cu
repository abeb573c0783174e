// GEMV for decode batches: out[m, n] = x[m, k] @ w[n, k]^T, bf16 in and out, f32 accumulation,
// for m <= 8 (gemv_m8) or m <= 16 (gemv_m16). One kernel, no split-K second pass. gemv_glu_m8
// also applies the MLP's activation to a fused gate|up weight (see GLU below).
//
// At small m a linear layer is a stream over its weight: each weight byte serves only m
// products, so the kernel is bound by memory bandwidth as long as it keeps enough loads in flight
// and does little work per byte. The products run on tensor cores (mma.m16n8k16: 16 weight rows
// x 8 rows of x per instruction), so the arithmetic per byte stays negligible for every m up to
// 16, and a lane needs only 4 accumulators per 8 rows of x (few registers, many warps resident).
//
// Work split: a block owns 16 weight rows (one mma tile); its GEMV_WARPS warps take turns over
// the row's 32-wide k tiles, GEMV_UNROLL consecutive tiles per warp per step, so each lane has
// 2 * GEMV_UNROLL 16-byte weight loads in flight and a warp reads 64 * GEMV_UNROLL contiguous
// bytes of each row. The warps' partial 16 x 8 tiles are then summed in shared memory in a fixed
// order (deterministic results).
//
// k order: a dot product does not depend on the order of k, so lane (g, t) of the mma layout
// (see mma_bf16_16816 in common.cuh) loads 8 contiguous values of weight rows g and g + 8 and of
// x row g at k = 32 * tile + 8 * t, and feeds them as its own k slots {2t, 2t+1, 2t+8, 2t+9} of
// two consecutive mma's. A and B take their slots from the same lane's loads, so every product
// pairs the same k, and each load is one 16-byte vector instead of four 4-byte pieces.
//
// Requirements (checked by the host, which falls back to cuBLAS otherwise): k % 8 == 0 and
// 16-byte aligned x and w (whole 16-byte vectors per row), 1 <= m <= 8 * NT, n >= 1, and
// blockDim.x = 32 * GEMV_WARPS.

#define GEMV_WARPS 8
#define GEMV_UNROLL 4
#define GEMV_ROWS 16

// The weight is read once per call: keep it out of L1 (no_allocate), which then holds x, which
// every block reads.
__device__ __forceinline__ uint4 ld_stream16(const bf16* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// NT: tiles of 8 rows of x (1 for m <= 8, 2 for m <= 16). ROWS: weight rows per block, 16 (an
// mma tile) or 8 (the tile's upper half zero): twice the blocks for a short weight, where 16-row
// blocks would each stream their rows in several dependent steps with the GPU half full (o_proj
// of an 8B model reached 72% of the copy bandwidth); the registers the unused half frees hold
// UNROLL = 8 steps of loads instead of 4.
//
// GLU: w is a fused [gate; up] weight of 2n rows and the output is silu(x @ gate^T) * (x @ up^T),
// n wide (the MLP's gate|up projection and silu_mul in one kernel). A block then owns 8 outputs:
// gate rows row0.. in the tile's lower half and the matching up rows n + row0.. in its upper
// half, so each output's two sums end in the same block. Both are rounded to bf16 before the
// activation, as the unfused kernels round the gate|up tensor, so the results are the same.
template <int NT, int ROWS, int UNROLL, bool GLU = false>
__device__ __forceinline__ void gemv(bf16* __restrict__ out, const bf16* __restrict__ x,
                                     const bf16* __restrict__ w, u32 m, u32 n, u32 k) {
    static_assert(!GLU || ROWS == 16, "a GLU block pairs 8 gate rows with 8 up rows");
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u32 row0 = blockIdx.x * (GLU ? 8 : ROWS);
    // Rows past n read row n - 1 (valid memory); their sums are never written.
    const bf16* w_lo = w + (size_t)umin(row0 + g, n - 1) * k;
    const bf16* w_hi = w + (size_t)(GLU ? n + umin(row0 + g, n - 1) : umin(row0 + g + 8, n - 1)) * k;
    const u32 chunks = k / 8, tiles = (chunks + 3) / 4;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // Two accumulator tiles per tile of x, one for each mma of a 16-byte load: two shorter
    // dependency chains of mma's instead of one.
    float acc[NT][2][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 8; i++) acc[j][i / 4][i % 4] = 0.0f;

    for (u32 tile0 = warp * UNROLL; tile0 < tiles; tile0 += GEMV_WARPS * UNROLL) {
        // Every load of the step first, unconditionally (clamped addresses, zeroed after), so
        // the compiler issues them back to back and they are in flight together. A chunk past k
        // (the last tile of a row whose k is not a multiple of 32) is zero in both operands;
        // rows of x past m are zero in B.
        uint4 a_lo[UNROLL], a_hi[UNROLL], b[NT][UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const u32 c = (tile0 + u) * 4 + t;
            const size_t off = (size_t)umin(c, chunks - 1) * 8;
            a_lo[u] = ld_stream16(w_lo + off);
            a_hi[u] = ROWS == 16 ? ld_stream16(w_hi + off) : zero;
#pragma unroll
            for (int j = 0; j < NT; j++)
                b[j][u] = *(const uint4*)(x + (size_t)umin(j * 8 + g, m - 1) * k + off);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            if ((tile0 + u) * 4 + t >= chunks) a_lo[u] = a_hi[u] = zero;
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (j * 8 + g >= m) b[j][u] = zero;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            // A registers: {row g, row g + 8} x {slots 2t.., slots 2t+8..}.
            const u32 a0[4] = {a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y};
            const u32 a1[4] = {a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w};
#pragma unroll
            for (int j = 0; j < NT; j++) {
                mma_bf16_16816(acc[j][0], a0, b[j][u].x, b[j][u].y);
                mma_bf16_16816(acc[j][1], a1, b[j][u].z, b[j][u].w);
            }
        }
    }

    // acc[j][*] = {(row g, x row 2t), (row g, 2t + 1), (row g + 8, 2t), (row g + 8, 2t + 1)}
    // of tile j, stored [x row][weight row] so that the final sums write consecutive outputs.
    __shared__ float part[GEMV_WARPS][NT * 8][16];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const float* c0 = acc[j][0];
        const float* c1 = acc[j][1];
        part[warp][j * 8 + 2 * t][g] = c0[0] + c1[0];
        part[warp][j * 8 + 2 * t + 1][g] = c0[1] + c1[1];
        part[warp][j * 8 + 2 * t][g + 8] = c0[2] + c1[2];
        part[warp][j * 8 + 2 * t + 1][g + 8] = c0[3] + c1[3];
    }
    __syncthreads();
    if constexpr (GLU) {
        for (u32 i = threadIdx.x; i < NT * 8 * 8; i += blockDim.x) {
            const u32 xr = i / 8, r = i % 8;
            if (xr >= m || row0 + r >= n) continue;
            float gate = 0.0f, up = 0.0f;
#pragma unroll
            for (int v = 0; v < GEMV_WARPS; v++) {
                gate += part[v][xr][r];
                up += part[v][xr][r + 8];
            }
            out[(size_t)xr * n + row0 + r] = f2bf(silu_mul_f(bf2f(f2bf(gate)), bf2f(f2bf(up))));
        }
    } else {
        for (u32 i = threadIdx.x; i < NT * 8 * ROWS; i += blockDim.x) {
            const u32 xr = i / ROWS, r = i % ROWS;
            if (xr >= m || row0 + r >= n) continue;
            float s = 0.0f;
#pragma unroll
            for (int v = 0; v < GEMV_WARPS; v++) s += part[v][xr][r];
            out[(size_t)xr * n + row0 + r] = f2bf(s);
        }
    }
}

// Before waiting for the previous kernel (pdl_start), a block asks L2 for the weights of its
// first step: they are constant, and with programmatic dependent launch the block may be resident
// while the previous kernel still runs, so its first loads then come from L2 instead of starting
// cold when that kernel ends. One step of each warp (a quarter or a half of a row of 4096 for
// 16- and 8-row blocks) keeps what the first wave asks for (a few MB) well inside L2.
template <int ROWS, int UNROLL, bool GLU = false>
__device__ __forceinline__ void gemv_prefetch(const bf16* __restrict__ w, u32 n, u32 k) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u32 row0 = blockIdx.x * (GLU ? 8 : ROWS), chunks = k / 8;
#pragma unroll
    for (int half = 0; half < ROWS / 8; half++) {
        const u32 r = GLU ? half * n + umin(row0 + g, n - 1) : umin(row0 + g + 8 * half, n - 1);
        const bf16* row = w + (size_t)r * k;
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            const u32 c = umin((warp * UNROLL + u) * 4 + t, chunks - 1);
            asm volatile("prefetch.global.L2 [%0];" ::"l"(row + (size_t)c * 8));
        }
    }
}

// At least 2 blocks per SM: without a minimum, ptxas trades the loads in flight for registers
// (it moved each step's loads next to their mma's, 3 in flight instead of 12); with it, a lane
// keeps all of a step's loads in flight (84 / 108 registers for sm_90). Each kernel first asks L2
// for its first step of weights, then waits for the kernel that writes x (pdl_start).
#define GEMV_KERNEL(NAME, NT, ROWS, UNROLL, GLU)                                                    \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, 2)                              \
        NAME(bf16* __restrict__ out, const bf16* __restrict__ x, const bf16* __restrict__ w, u32 m, \
             u32 n, u32 k) {                                                                      \
        gemv_prefetch<ROWS, UNROLL, GLU>(w, n, k);                                                \
        pdl_start();                                                                              \
        gemv<NT, ROWS, UNROLL, GLU>(out, x, w, m, n, k);                                          \
    }

GEMV_KERNEL(gemv_m8, 1, 16, GEMV_UNROLL, false)
// 8 weight rows per block, for short weights (the host picks it; see `gemv`'s ROWS).
GEMV_KERNEL(gemv_m8_r8, 1, 8, 2 * GEMV_UNROLL, false)
GEMV_KERNEL(gemv_m16, 2, 16, GEMV_UNROLL, false)
// gemv_m8 with the GLU epilogue: out[m, n] = silu(x @ w[:n]^T) * (x @ w[n:]^T), w of 2n rows.
GEMV_KERNEL(gemv_glu_m8, 1, 16, GEMV_UNROLL, true)
