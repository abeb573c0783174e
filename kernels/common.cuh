// Shared helpers for every kernel family: bf16 <-> f32 conversion and warp/block reductions.
//
// bf16 is handled as raw `unsigned short` bits so that NVRTC needs no CUDA headers (cuda_bf16.h
// is not always on NVRTC's include path at run time); conversion is a shift one way and
// round-to-nearest-even the other, exactly what __float2bfloat16 does.

typedef unsigned short bf16;
typedef unsigned int u32;

__device__ __forceinline__ float bf2f(bf16 x) { return __uint_as_float(((u32)x) << 16); }

__device__ __forceinline__ bf16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)0x7fc0;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nwarps = blockDim.x >> 5;
    v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

// Programmatic dependent launch (sm_90 and later; launch/builder.rs sets the launch attribute):
// a kernel may start while the kernel before it on the stream is still running. pdl_trigger lets
// the kernel after this one start (its blocks then wait in their own pdl_wait); pdl_wait returns
// once every earlier kernel on the stream has finished and its writes are visible. Every kernel
// calls pdl_start before it touches memory that an earlier kernel writes or reads (only constant
// inputs, weights, may be read before; compile.rs's tests check that each kernel calls it).
// Without the attribute, or before sm_90, both are no-ops.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_start() {
    pdl_trigger();
    pdl_wait();
}

// silu(g) * u, the MLP's activation (activation.cu's silu_mul, gemv.cu's GLU epilogue).
__device__ __forceinline__ float silu_mul_f(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ u32 umin(u32 a, u32 b) { return a < b ? a : b; }

// Eight bf16 (one 16-byte load) to f32.
__device__ __forceinline__ void unpack8(uint4 raw, float* f) {
    const u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

// Paged attention's split along the context (attention.cu, decode_attention.cu): keys per
// partition, the batch's longest context split `max_splits` ways in whole multiples of
// ATTN_PART, and at least ATTN_MIN_PART keys (the host's ATTN_MIN_PART): a shorter partition
// costs its block's start and its share of the merge more than it saves. Every kernel of a
// split must agree on it.
#define ATTN_PART 32
#define ATTN_MIN_PART 64
__device__ __forceinline__ u32 partition_size(u32 max_kv_len, u32 max_splits) {
    const u32 per = (max_kv_len + max_splits - 1) / max_splits;
    const u32 size = (per + ATTN_PART - 1) / ATTN_PART * ATTN_PART;
    return size > ATTN_MIN_PART ? size : ATTN_MIN_PART;
}

// c += a * b for one 16x8x16 tile on tensor cores (bf16 in, f32 accumulate); every lane of the
// warp must call it. Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16), lane = 4 * g + t:
// A (16x16, row-major): regs {a0a1, a2a3, a4a5, a6a7} hold rows {g, g+8, g, g+8}, columns
// {2t, 2t, 2t+8, 2t+8} (+0, +1). B (16x8, k x n): regs {b0b1, b2b3} hold k = {2t, 2t+8} (+0, +1),
// n = g. C (16x8 f32): {c0, c1} row g, {c2, c3} row g + 8, columns 2t, 2t+1.
__device__ __forceinline__ void mma_bf16_16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two f32 as one bf16x2 word (lo in the low half), rounded to nearest even: one cvt from sm_80 on,
// where the software f2bf above takes about six integer operations a value. Every P operand of
// prefill_attention's P V mma passes through here (the same bits, NaN payloads aside; that kernel
// took 287 instead of 325 us in op_bench on an H100, docs/benchmarks.md, session 16), and
// gemm_glu's outputs.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
#if __CUDA_ARCH__ < 800
    return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
#else
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// Shared-memory address of a generic pointer to shared memory (for cp.async, ldmatrix, mbarriers
// and TMA).
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
