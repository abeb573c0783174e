// Token choice on the GPU, so a step copies back a few bytes per sequence instead of its logits.
// (penalize_rows and sample_rows, the general case, are described further down.)
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
    pdl_start();
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

// Sampling in general, exactly the host sampler's definition (sampler.rs), two kernels per step:
//  - penalize_rows: a row's logits to f32 (`work`), then the repetition penalty over the tokens
//    of prompt and output and the frequency and presence penalties over the output, from a list
//    of each row's distinct tokens with their output counts (CSR: `pen_offsets` per row).
//  - sample_rows: greedy (temperature 0, or no finite scaled maximum) is the argmax; otherwise
//    temperature, top-k, top-p, min-p, then one draw walking the surviving tokens in id order
//    with the uniform number the host's generator gives for the row's (seed, position).
// Ties rank the lower id first, as on the host: top-k and top-p find their threshold value by
// radix selection (four passes of 256 buckets over the value's bits: counts for top-k, f64 mass
// for top-p) and then keep the tokens equal to it in id order up to the count that is needed.
// Sums are f64 like the host's, in another order, so a draw within rounding of a boundary can
// differ; anything else is the same token.
//
// fparams per row: temperature, top_p, min_p, repetition, frequency, presence penalty.
// Grid: one block per row, SAMPLE_THREADS threads. Thread t owns ids [t * chunk, (t+1) * chunk)
// where order matters (finding the n-th token, the draw); elsewhere threads stride the row.

#define SAMPLE_THREADS 1024
#define FP_COUNT 6
#define POS_INF __int_as_float(0x7f800000)

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    penalize_rows(float* __restrict__ work, const bf16* __restrict__ logits, u32 vocab,
                  const float* __restrict__ fparams, const u32* __restrict__ pen_offsets,
                  const u32* __restrict__ pen_tokens, const u32* __restrict__ pen_counts) {
    pdl_start();
    const u32 row = blockIdx.x;
    float* w = work + (size_t)row * vocab;
    const bf16* l = logits + (size_t)row * vocab;
    for (u32 i = threadIdx.x; i < vocab; i += blockDim.x) w[i] = bf2f(l[i]);
    __syncthreads();
    const float* p = fparams + (size_t)row * FP_COUNT;
    const float rep = p[3], freq = p[4], pres = p[5];
    // Each token appears once in a row's list, so no two threads touch one value.
    for (u32 e = pen_offsets[row] + threadIdx.x; e < pen_offsets[row + 1]; e += blockDim.x) {
        const u32 t = pen_tokens[e];
        if (t >= vocab) continue;  // never produced by the model
        float x = w[t];
        if (rep != 1.0f) x = x > 0.0f ? x / rep : x * rep;
        const u32 c = pen_counts[e];
        if (c > 0) x -= freq * (float)c + pres;
        w[t] = x;
    }
}

// Float bits to an unsigned key of the same order (any non-NaN float).
__device__ __forceinline__ u32 order_key(float f) {
    const u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ bool finite(float x) { return x == x && fabsf(x) != POS_INF; }

// Exclusive prefix sum of one value per thread, in thread order; `*total` gets the block's sum.
// `scratch` holds 32 values.
template <typename T>
__device__ T block_exclusive_scan(T v, T* scratch, T* total) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    T inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= (u32)o) inc += y;
    }
    T exc = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0) exc = T(0);
    __syncthreads();  // earlier users of `scratch` are done
    if (lane == 31) scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        T s = lane < nwarps ? scratch[lane] : T(0);
        T si = s;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const T y = __shfl_up_sync(0xffffffffu, si, o);
            if (lane >= (u32)o) si += y;
        }
        if (lane < nwarps) scratch[lane] = si;  // inclusive over warps
    }
    __syncthreads();
    *total = scratch[nwarps - 1];
    return (warp > 0 ? scratch[warp - 1] : T(0)) + exc;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = NEG_INF;
    for (u32 w = 0; w < nwarps; w++) m = fmaxf(m, scratch[w]);
    return m;
}

// The argmax of an f32 row, as argmax_rows defines it (every thread gets it).
__device__ u32 row_argmax(const float* x, u32 n, float* values, u32* indices) {
    Best best = {NEG_INF, NO_INDEX};
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) consider(best, x[i], i);
    best = warp_best(best);
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) {
        values[warp] = best.value;
        indices[warp] = best.index;
    }
    __syncthreads();
    Best b = {NEG_INF, NO_INDEX};
    for (u32 w = 0; w < nwarps; w++) b = better(b, Best{values[w], indices[w]});
    return b.index == NO_INDEX ? 0 : b.index;
}

// What survives the filters, token by token. Thresholds from radix selection: a token whose key
// is above the threshold survives; one equal to it survives when its id is at most the cut.
struct Filter {
    const float* x;
    float temperature, smax, min_p;
    bool use_k, use_p;
    u32 key_k, cut_k;  // top-k over order_key(x / temperature)
    u32 key_p, cut_p;  // top-p over the weight's bits

    // Candidate of top-k: a drawable token (x > -inf; NaN fails).
    __device__ bool candidate(u32 i, float xi) const { return xi > NEG_INF; }
    __device__ bool in_top_k(u32 i, float xi) const {
        if (!use_k) return true;
        const u32 key = order_key(xi / temperature);
        return key > key_k || (key == key_k && i <= cut_k);
    }
    __device__ float weight(float xi) const { return expf(xi / temperature - smax); }
    // Survives top-k and has a weight that did not underflow; `*w` gets the weight.
    __device__ bool weighted(u32 i, float* w) const {
        const float xi = x[i];
        if (!candidate(i, xi) || !in_top_k(i, xi)) return false;
        *w = weight(xi);
        return *w > 0.0f;
    }
    __device__ bool in_top_p(u32 i, float w) const {
        if (!use_p) return true;
        const u32 key = __float_as_uint(w);  // positive: bits in value order
        return key > key_p || (key == key_p && i <= cut_p);
    }
    // Survives every filter; `*w` gets the weight.
    __device__ bool keep(u32 i, float* w) const {
        return weighted(i, w) && in_top_p(i, *w) && (min_p <= 0.0f || *w >= min_p);
    }
};

// The id of the m-th token (1-based, id order) for which `pred(i)` holds, m >= 1; every thread
// gets it. Threads own contiguous ids, count theirs, scan, and the owner of the m-th walks.
template <typename Pred>
__device__ u32 nth_in_order(Pred pred, u32 m, u32 lo, u32 hi, u32* scratch, u32* result) {
    // Written before the scan's first barrier; the owner writes only after it.
    if (threadIdx.x == 0) *result = NO_INDEX;
    u32 count = 0;
    for (u32 i = lo; i < hi; i++) count += pred(i) ? 1 : 0;
    u32 total;
    const u32 before = block_exclusive_scan<u32>(count, scratch, &total);
    if (before < m && before + count >= m) {
        u32 seen = before;
        for (u32 i = lo; i < hi; i++) {
            if (pred(i) && ++seen == m) {
                *result = i;
                break;
            }
        }
    }
    __syncthreads();
    return *result;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(u32* __restrict__ out, const float* __restrict__ work, u32 vocab,
                const float* __restrict__ fparams, const u32* __restrict__ top_ks,
                const double* __restrict__ uniforms) {
    pdl_start();
    __shared__ u32 hist[256];
    __shared__ double mass[256];
    __shared__ u32 su[32];
    __shared__ double sd[32];
    __shared__ float sf[32];
    __shared__ u32 sel_prefix, sel_remaining, sel_id, sel_thread, sel_last, sel_all;
    __shared__ double sel_above;

    const u32 row = blockIdx.x, tid = threadIdx.x;
    const float* x = work + (size_t)row * vocab;
    const float* p = fparams + (size_t)row * FP_COUNT;
    const float temperature = p[0], top_p = p[1], min_p = p[2];
    const u32 top_k = top_ks[row];
    const u32 chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const u32 lo = umin(tid * chunk, vocab), hi = umin(lo + chunk, vocab);

    float xmax = NEG_INF;  // fmaxf skips NaN, like the host's f32::max
    for (u32 i = tid; i < vocab; i += blockDim.x) xmax = fmaxf(xmax, x[i]);
    xmax = block_max(xmax, sf);
    const float smax = xmax / temperature;
    if (temperature == 0.0f || !finite(smax)) {
        // Greedy; or nothing to draw from (all -inf) or a certain token (+inf).
        const u32 token = row_argmax(x, vocab, sf, su);
        if (tid == 0) out[row] = token;
        return;
    }
    Filter f = {x, temperature, smax, min_p, false, false, 0, 0, 0, 0};

    // top-k: the k-th largest scaled logit, then its equals in id order.
    if (top_k > 0) {
        u32 n = 0;
        for (u32 i = tid; i < vocab; i += blockDim.x) n += x[i] > NEG_INF ? 1 : 0;
        u32 candidates;
        block_exclusive_scan<u32>(n, su, &candidates);
        if (top_k < candidates) {
            u32 prefix = 0, mask = 0, remaining = top_k;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (u32 b = tid; b < 256; b += blockDim.x) hist[b] = 0;
                __syncthreads();
                for (u32 i = tid; i < vocab; i += blockDim.x) {
                    const float xi = x[i];
                    if (!(xi > NEG_INF)) continue;
                    const u32 key = order_key(xi / temperature);
                    if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
                }
                __syncthreads();
                if (tid == 0) {
                    u32 above = 0;
                    int b = 255;
                    for (; b > 0; b--) {
                        if (above + hist[b] >= remaining) break;
                        above += hist[b];
                    }
                    sel_prefix = prefix | ((u32)b << shift);
                    sel_remaining = remaining - above;
                }
                __syncthreads();
                prefix = sel_prefix;
                remaining = sel_remaining;
                mask |= 255u << shift;
            }
            f.use_k = true;
            f.key_k = prefix;
            f.cut_k = nth_in_order(
                [&](u32 i) { return x[i] > NEG_INF && order_key(x[i] / temperature) == prefix; },
                remaining, lo, hi, su, &sel_id);
        }
    }

    // top-p: the smallest set of most likely tokens holding top_p of the mass.
    if (top_p < 1.0f) {
        double part = 0.0;
        for (u32 i = tid; i < vocab; i += blockDim.x) {
            float w;
            if (f.weighted(i, &w)) part += (double)w;
        }
        double total;
        block_exclusive_scan<double>(part, sd, &total);
        const double target = (double)top_p * total;
        u32 prefix = 0, mask = 0;
        double above = 0.0;
        if (tid == 0) sel_all = 0;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (u32 b = tid; b < 256; b += blockDim.x) {
                hist[b] = 0;
                mass[b] = 0.0;
            }
            __syncthreads();
            for (u32 i = tid; i < vocab; i += blockDim.x) {
                float w;
                if (!f.weighted(i, &w)) continue;
                const u32 key = __float_as_uint(w);
                if ((key & mask) == prefix) {
                    atomicAdd(&hist[(key >> shift) & 255u], 1u);
                    atomicAdd(&mass[(key >> shift) & 255u], (double)w);
                }
            }
            __syncthreads();
            if (tid == 0) {
                int b = 255;
                for (; b >= 0; b--) {
                    if (hist[b] > 0 && above + mass[b] >= target) break;
                    above += mass[b];
                }
                if (b < 0) {
                    // Rounding kept the sum short of the target: the host then keeps everything.
                    sel_all = 1;
                    b = 0;
                }
                sel_prefix = prefix | ((u32)b << shift);
                sel_remaining = hist[b];
                sel_above = above;
            }
            __syncthreads();
            if (sel_all) break;
            prefix = sel_prefix;
            above = sel_above;
            mask |= 255u << shift;
        }
        if (!sel_all) {
            // Every token above the threshold weight W is kept; of those equal to it, as many as
            // reach the target, in id order.
            const float w_cut = __uint_as_float(prefix);
            const double need = ceil((target - above) / (double)w_cut);
            const u32 equal = sel_remaining;
            const u32 m = need < 1.0 ? 1u : (need >= (double)equal ? equal : (u32)need);
            f.use_p = true;
            f.key_p = prefix;
            f.cut_p = nth_in_order(
                [&](u32 i) {
                    float w;
                    return f.weighted(i, &w) && __float_as_uint(w) == prefix;
                },
                m, lo, hi, su, &sel_id);
        }
        __syncthreads();
    }

    // The draw: the first token in id order whose running weight passes uniform * total.
    double sum = 0.0;
    u32 last = NO_INDEX;
    for (u32 i = lo; i < hi; i++) {
        float w;
        if (f.keep(i, &w)) {
            sum += (double)w;
            last = i;
        }
    }
    double total;
    const double before = block_exclusive_scan<double>(sum, sd, &total);
    const double target = uniforms[row] * total;
    if (tid == 0) {
        sel_thread = NO_INDEX;
        sel_last = 0;
    }
    __syncthreads();
    if (sum > 0.0 && before + sum > target) atomicMin(&sel_thread, tid);
    if (last != NO_INDEX) atomicMax(&sel_last, last);
    __syncthreads();
    if (tid == sel_thread) {
        double acc = before;
        u32 token = last;  // within rounding of the chunk's end
        for (u32 i = lo; i < hi; i++) {
            float w;
            if (f.keep(i, &w)) {
                acc += (double)w;
                if (acc > target) {
                    token = i;
                    break;
                }
            }
        }
        out[row] = token;
    }
    // Only reachable through rounding in the running sum: the host then takes the last token.
    if (sel_thread == NO_INDEX && tid == 0) out[row] = sel_last;
}
