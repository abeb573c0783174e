// The MLP's gate|up projection with its activation in one Hopper GEMM:
// out[m, j] = silu(x[m] . gate[j]) * (x[m] . up[j]) for a fused weight w = [gate; up] of 2n rows,
// so the product never goes to memory. Split, a prefill step's gate|up GEMM writes a
// [rows, 2n] product that silu_mul then reads back and halves: at 8,192 rows of the 8B layout
// that is 700 MB a layer moved for nothing, ~8 ms of a ~180 ms prompt step (docs/benchmarks.md),
// and cuBLAS has no epilogue for it.
//
// sm_90a only (wgmma, TMA, setmaxnreg); compiled for every GPU, but empty below Hopper and
// launched only where `launch::gemm_glu_supports` says so.
//
// Block: 3 warpgroups. Warpgroup 0 is the producer: one thread issues the TMA copies of each
// 64-wide k slice into a ring of GG_STAGES stages (x's 128 rows, gate's and up's 128 rows each).
// Warpgroups 1 and 2 are consumers, 64 rows of x each: per k slice four wgmma m64n256k16 whose
// 256 columns are the block's 128 gate rows then its 128 up rows, so every thread holds each of
// its gate accumulators beside the up accumulator of the same output column, and the epilogue
// is silu(gate) * up in registers. Stage hand-off: `full[s]` completes when the stage's bytes
// have landed (TMA transaction count); `empty[s]` when all 8 consumer warps have finished the
// wgmma that read it.
//
// Shared memory layout of a stage (each part 1024-byte aligned, 128-byte rows, TMA's 128-byte
// swizzle): x tile [128][64], then w tile [256][64] (gate rows, then up rows).
//
// Blocks walk output tiles in groups of GG_GROUP_M row tiles, column tile by column tile, so a
// wave of blocks shares ~16 MB of x rows and ~16 MB of weight rows in L2.

#define GG_BM 128
#define GG_BN 128
#define GG_BK 64
#ifndef GG_STAGES
#define GG_STAGES 4
#endif
#ifndef GG_GROUP_M
#define GG_GROUP_M 16
#endif
// GG_CLUSTER 2: blocks run in clusters of two on vertically adjacent tiles (same weight rows),
// each loading its own x tile and half of the weight tile, which TMA multicasts to both: half
// the weight traffic from L2. 1: every block loads its whole tiles.
#ifndef GG_CLUSTER
#define GG_CLUSTER 1
#endif
#define GG_THREADS 384
#define GG_X_BYTES (GG_BM * GG_BK * 2)
#define GG_W_BYTES (2 * GG_BN * GG_BK * 2)
#define GG_STAGE_BYTES (GG_X_BYTES + GG_W_BYTES)
#define GG_SMEM_BYTES (GG_STAGES * GG_STAGE_BYTES + 1024)

typedef unsigned long long u64;

// A TMA tensor map (CUtensorMap): 128 opaque bytes made by cuTensorMapEncodeTiled on the host.
struct __align__(64) TensorMap {
    u64 words[16];
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Waits for the phase of parity `parity` of `bar` to complete. With GG_WAIT_LIMIT defined (a
// debugging build: TESSERA_KERNEL_DEFINES="GG_WAIT_LIMIT=100000000"), a wait that polls that many
// times traps instead, so a broken hand-off fails at once instead of hanging the GPU.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#ifdef GG_WAIT_LIMIT
    for (u32 polls = 0;; polls++) {
        u32 done;
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (done) return;
        if (polls == GG_WAIT_LIMIT) __trap();
    }
#else
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
#endif
}

// TMA: the box of `map` at (c0 along the inner dimension, c1 along the outer) into shared memory
// at `dst`, completing `bytes` of `bar`'s transaction count.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TensorMap* map, u32 c0, u32 c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// TMA into the same offset of every block of the cluster in `mask`, completing bytes on each
// block's barrier at `bar`'s offset.
__device__ __forceinline__ void tma_load_2d_multicast(u32 dst, const TensorMap* map, u32 c0, u32 c1, u32 bar,
                                                      unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
        " [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
        : "memory");
}

// Arrives on the barrier at the same offset as `bar` in cluster block `rank`.
__device__ __forceinline__ void mbar_arrive_cluster(u32 bar, u32 rank) {
    asm volatile(
        "{\n.reg .b32 remote;\n"
        "mapa.shared::cluster.u32 remote, %0, %1;\n"
        "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [remote];\n}" ::"r"(bar),
        "r"(rank)
        : "memory");
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
}

__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// wgmma shared-memory descriptor of a K-major tile of 128-byte rows with the 128-byte swizzle:
// start address >> 4 (bits 0-13), leading byte offset 16 >> 4 (unused by this layout), stride
// byte offset 1024 >> 4 between groups of 8 rows (bits 32-45), swizzle mode 1 (bits 62-63).
__device__ __forceinline__ u64 gg_desc(u32 addr) {
    return (u64)((addr & 0x3ffff) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void wgmma_m64n256k16(float* d, u64 desc_a, u64 desc_b, u32 accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// silu(g) * u with g and u first rounded to bf16, as cuBLAS's bf16 product then silu_mul give.
__device__ __forceinline__ float gg_glu(float g, float u) {
    return silu_mul_f(bf2f(f2bf(g)), bf2f(f2bf(u)));
}

// Origin (first row, first column) of output tile `tile` of a grid of row tiles GG_CLUSTER x
// GG_BM rows high: tiles go down GG_GROUP_M row tiles, then across one column tile, group after
// group. Block `rank` of a cluster takes its own GG_BM rows of the tile.
__device__ __forceinline__ void gg_tile_origin(u32 tile, u32 tiles_m, u32 tiles_n, u32 rank, u32* m0, u32* j0) {
    const u32 per_group = GG_GROUP_M * tiles_n, group = tile / per_group;
    const u32 first_m = group * GG_GROUP_M, group_m = umin(tiles_m - first_m, GG_GROUP_M);
    const u32 in_group = tile % per_group;
    *m0 = ((first_m + in_group % group_m) * GG_CLUSTER + rank) * GG_BM;
    *j0 = (in_group / group_m) * GG_BN;
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// out [m, n] = silu(x @ gate^T) * (x @ up^T), x [m, k] (`x_map`), w = [gate; up] [2n, k]
// (`w_map`), both maps with 64 x 128 boxes and the 128-byte swizzle. n % 128 == 0.
// Persistent: a grid of at most one block per SM, block b taking tiles b, b + gridDim.x, ...
// The stage ring runs on across a block's tiles, so the producer loads the next tile's first
// slices while the consumers are in the previous tile's epilogue.
// Block: GG_THREADS threads and GG_SMEM_BYTES of dynamic shared memory; an even grid (with
// GG_CLUSTER 2 the two blocks of a cluster take the same tiles).
#if GG_CLUSTER == 2
#define GG_CLUSTER_DIMS __cluster_dims__(2, 1, 1)
#else
#define GG_CLUSTER_DIMS
#endif
extern "C" __global__ void GG_CLUSTER_DIMS __launch_bounds__(GG_THREADS, 1)
    gemm_glu(bf16* __restrict__ out, const __grid_constant__ TensorMap x_map,
             const __grid_constant__ TensorMap w_map, u32 m, u32 n, u32 k) {
    pdl_start();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(1024) unsigned char gg_smem[];
    __shared__ __align__(8) u64 bars[2 * GG_STAGES];
    const u32 base = (smem_addr(gg_smem) + 1023) & ~1023u;
    const u32 full0 = smem_addr(&bars[0]), empty0 = smem_addr(&bars[GG_STAGES]);
    // Tiles of GG_CLUSTER x GG_BM rows; a cluster (or a lone block) takes every `step`-th.
    const u32 tiles_m = (m + GG_CLUSTER * GG_BM - 1) / (GG_CLUSTER * GG_BM), tiles_n = n / GG_BN;
    const u32 tiles = tiles_m * tiles_n, step = gridDim.x / GG_CLUSTER;
    const u32 slices = (k + GG_BK - 1) / GG_BK;
#if GG_CLUSTER == 2
    const u32 rank = cluster_rank(), first = blockIdx.x / 2;
#else
    const u32 rank = 0, first = blockIdx.x;
#endif

    // Warp-uniform as far as the compiler can tell (a shuffle from lane 0), so that the
    // consumers' wgmma are not serialized as if in a divergent path.
    const u32 wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
    if (threadIdx.x == 0) {
        for (u32 s = 0; s < GG_STAGES; s++) {
            mbar_init(full0 + 8 * s, 1);
            // Every consumer warp of every block whose loads write this stage.
            mbar_init(empty0 + 8 * s, 8 * GG_CLUSTER);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
#if GG_CLUSTER == 2
    // The peer's barriers exist before any multicast or remote arrive reaches them.
    cluster_sync();
#else
    __syncthreads();
#endif

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) {
            u32 it = 0;
            for (u32 tile = first; tile < tiles; tile += step) {
                u32 m0, j0;
                gg_tile_origin(tile, tiles_m, tiles_n, rank, &m0, &j0);
                for (u32 i = 0; i < slices; i++, it++) {
                    const u32 s = it % GG_STAGES, round = it / GG_STAGES;
                    mbar_wait(empty0 + 8 * s, (round & 1) ^ 1);
                    const u32 stage = base + s * GG_STAGE_BYTES, full = full0 + 8 * s;
                    mbar_expect_tx(full, GG_STAGE_BYTES);
                    tma_load_2d(stage, &x_map, i * GG_BK, m0, full);
#if GG_CLUSTER == 2
                    // Block 0 brings the gate rows, block 1 the up rows, to both blocks.
                    const u32 half = stage + GG_X_BYTES + rank * (GG_W_BYTES / 2);
                    tma_load_2d_multicast(half, &w_map, i * GG_BK, rank * n + j0, full, 3);
#else
                    tma_load_2d(stage + GG_X_BYTES, &w_map, i * GG_BK, j0, full);
                    tma_load_2d(stage + GG_X_BYTES + GG_W_BYTES / 2, &w_map, i * GG_BK, n + j0, full);
#endif
                }
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        const u32 c = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
        float d[128];
        // A consumed stage is free once every block that loads into it knows.
        auto release = [rank](u32 bar) {
            mbar_arrive(bar);
            if (GG_CLUSTER == 2) mbar_arrive_cluster(bar, rank ^ 1);
        };
        u32 it = 0;
        for (u32 tile = first; tile < tiles; tile += step) {
            u32 m0, j0;
            gg_tile_origin(tile, tiles_m, tiles_n, rank, &m0, &j0);
            // Not unrolled: a peeled copy of the body would move the accumulators between
            // registers, and ptxas then serializes the wgmma.
#pragma unroll 1
            for (u32 i = 0; i < slices; i++, it++) {
                const u32 s = it % GG_STAGES, round = it / GG_STAGES;
                mbar_wait(full0 + 8 * s, round & 1);
                const u32 stage = base + s * GG_STAGE_BYTES;
                const u32 a = stage + c * 64 * 128, b = stage + GG_X_BYTES;
                wgmma_fence();
#pragma unroll
                for (u32 kk = 0; kk < GG_BK / 16; kk++) {
                    // The tile's first product overwrites the accumulators (scale-d 0).
                    wgmma_m64n256k16(d, gg_desc(a + kk * 32), gg_desc(b + kk * 32), i > 0 || kk > 0);
                }
                wgmma_commit();
                // The slice before this one is done: its stage may be refilled.
                wgmma_wait<1>();
                if (i > 0 && lane == 0) release(empty0 + 8 * ((it - 1) % GG_STAGES));
            }
            wgmma_wait<0>();
            if (lane == 0) release(empty0 + 8 * ((it - 1) % GG_STAGES));
            // The accumulators are final only now: keep the compiler from reading them any earlier
            // (the wait above names no register).
#pragma unroll
            for (int i = 0; i < 128; i++) asm volatile("" : "+f"(d[i])::"memory");

            // Lane (warp, lane) holds rows 16 warp + lane / 4 (+ 8) and, for each group j of 8
            // columns, columns 8 j + 2 (lane % 4) (+ 1): d[4 j + {0, 1}] and d[4 j + {2, 3}]. Groups
            // 0 - 15 are gate columns, 16 - 31 the up columns of the same outputs.
            const u32 row = m0 + c * 64 + warp * 16 + lane / 4;
            bf16* dst = out + (size_t)row * n + j0 + 2 * (lane % 4);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                if (row + 8 * h < m) {
#pragma unroll
                    for (int j = 0; j < 16; j++) {
                        const float lo = gg_glu(d[4 * j + 2 * h], d[4 * (j + 16) + 2 * h]);
                        const float hi = gg_glu(d[4 * j + 2 * h + 1], d[4 * (j + 16) + 2 * h + 1]);
                        *reinterpret_cast<u32*>(dst + (size_t)8 * h * n + 8 * j) = pack_bf16x2(lo, hi);
                    }
                }
            }
        }
    }
#if GG_CLUSTER == 2
    // No block leaves while its peer may still multicast into it or arrive on its barriers.
    __syncwarp();
    cluster_sync();
#endif
#endif
}
