// moe_route.cu — DeepSeek-V2/V3 gating (see kernels/README.md for the launch contract).
// Prepended by the backend with kernels/common/moemla_device.h.
//
// One block per token: scores (sigmoid / softmax / sqrt-softplus) -> selection scores
// (+ bias) -> group scores (max / top-2 sum) -> drop all but the best topk_group groups
// (-inf) -> top_k -> unbiased scores of the chosen ids, renormalised in slot order, scaled.
// Hash routing (vocab > 0): the ids are the token's tid2eid row instead (checked, flagged).
//
// Ranking (groups and experts alike): larger first, the lower index on ties, NaN as -inf,
// -0 equal to +0. Both selections are block-wide radix selects of the k-th best key (four
// 8-bit passes over the n values) followed by an ordered compaction of the k winners and,
// for the experts, a bitonic sort of those k: O(n + k log^2 k) per token, whatever k is
// (moemla_block_topk, in moemla_device.h: dsa_indexer_topk.cu selects with it too).

// Block-wide sum / max of one float; every thread gets the result. Two __syncthreads.
__device__ __forceinline__ float moemla_block_reduce(float v, bool is_max, float* red) {
    const int lane = threadIdx.x % MOEMLA_WARP_SIZE;
    const int warp = threadIdx.x / MOEMLA_WARP_SIZE;
    const int nwarps = (blockDim.x + MOEMLA_WARP_SIZE - 1) / MOEMLA_WARP_SIZE;
    v = is_max ? moemla_warp_max(v) : moemla_warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = red[0];
    for (int w = 1; w < nwarps; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
    __syncthreads();
    return r;
}

// Most warps a block can have (1024 threads / 32 lanes).
#define MOEMLA_MAX_WARPS 32
// The dynamic shared memory layout of moemla_moe_route_* (kernel-plan route::shared_bytes
// computes the same size): every region 4-byte entries, in this order.
struct moemla_route_smem {
    float* sel;    // [E] selection scores; later the chosen experts' unbiased scores
    int* cand;     // [pow2_ceil(top_k)] chosen experts, best first
    float* gscore; // [n_group] group scores
    int* gsel;     // [n_group] the kept groups
    int* gkept;    // [n_group] 1 when kept
    int* hist;     // [256] radix histogram
    int* part;     // [2 * blockDim.x] per-thread counts
    int* bcast;    // [2] values broadcast by thread 0
};

// ln(1 + y) for y >= 0 with logf only (Kahan's trick: exact to a few ulp where 1 + y
// rounds, and y itself where 1 + y == 1).
__device__ __forceinline__ float moemla_log1p(float y) {
    const float u = 1.0f + y;
    return u == 1.0f ? y : logf(u) * (y / (u - 1.0f));
}

// sqrt(softplus(x)), softplus(x) = x above 20, else ln(1 + e^x) (DeepSeek-V4).
__device__ __forceinline__ float moemla_sqrt_softplus(float x) {
    return sqrtf(x > 20.0f ? x : moemla_log1p(expf(x)));
}

template <typename T>
__device__ void moemla_moe_route(const T* __restrict__ logits, const float* __restrict__ bias,
                                 int has_bias, const int* __restrict__ input_ids,
                                 const int* __restrict__ tid2eid, int vocab,
                                 int* __restrict__ topk_ids, float* __restrict__ topk_weights,
                                 int experts, int top_k, int n_group, int topk_group,
                                 int score_func, int group_select, int renormalize,
                                 float routed_scaling_factor, moemla_u64* __restrict__ err) {
    MOEMLA_DYN_SMEM(smem);
    moemla_route_smem s;
    s.sel = reinterpret_cast<float*>(smem);
    s.cand = reinterpret_cast<int*>(s.sel + experts);
    s.gscore = reinterpret_cast<float*>(s.cand + moemla_pow2_ceil(top_k));
    s.gsel = reinterpret_cast<int*>(s.gscore + n_group);
    s.gkept = s.gsel + n_group;
    s.hist = s.gkept + n_group;
    s.part = s.hist + MOEMLA_RADIX_BINS;
    s.bcast = s.part + 2 * blockDim.x;
    __shared__ float red[MOEMLA_MAX_WARPS];

    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const moemla_i64 row = (moemla_i64)blockIdx.x * experts;

    // 1. Score function. Scores are recomputed from the logits where needed (step 5) with
    //    the same operations, so they are not kept.
    float mx = 0.0f, sum = 1.0f;
    if (score_func == 1) {
        float local_max = MOEMLA_NEG_INF;
        for (int e = tid; e < experts; e += nthreads) local_max = fmaxf(local_max, moemla_load(logits + row + e));
        mx = moemla_block_reduce(local_max, true, red);
        float local_sum = 0.0f;
        for (int e = tid; e < experts; e += nthreads) local_sum += expf(moemla_load(logits + row + e) - mx);
        sum = moemla_block_reduce(local_sum, false, red);
    }
    auto score = [&](int e) -> float {
        const float x = moemla_load(logits + row + e);
        if (score_func == 1) return expf(x - mx) / sum;
        return score_func == 2 ? moemla_sqrt_softplus(x) : 1.0f / (1.0f + expf(-x));
    };

    if (vocab > 0) {
        // Hash routing: ids = tid2eid[input_ids[t]]. A bad token id (err[0], position t)
        // or a bad table entry (err[1], position t * top_k + j in token order; resolved to
        // the table position by moemla_moe_route_hash_resolve) is flagged and never used:
        // its slot gets id -1 and weight 0.
        const moemla_i64 t = blockIdx.x;
        if (tid == 0) {
            const int id = input_ids[t];
            const bool bad = id < 0 || id >= vocab;
            if (bad) moemla_flag_index(&err[0], t, id);
            s.bcast[0] = bad ? -1 : id;
        }
        __syncthreads();
        const int id = s.bcast[0];
        for (int j = tid; j < top_k; j += nthreads) {
            int e = -1;
            if (id >= 0) {
                const int* table_row = tid2eid + (moemla_i64)id * top_k;
                const int v = table_row[j];
                bool ok = v >= 0 && v < experts;
                for (int jj = 0; jj < j && ok; ++jj) ok = table_row[jj] != v;
                if (ok) {
                    e = v;
                } else {
                    moemla_flag_index(&err[1], t * top_k + j, v);
                }
            }
            s.cand[j] = e;
        }
        __syncthreads();
    } else {
        // 2. Selection scores (the bias steers selection only); NaN ranks as -inf.
        for (int e = tid; e < experts; e += nthreads) {
            const float v = score(e) + (has_bias ? bias[e] : 0.0f);
            s.sel[e] = (v == v) ? v : MOEMLA_NEG_INF;
        }

        // 3. Group limit: keep the topk_group best groups, the others' experts become -inf.
        if (n_group > 1) {
            __syncthreads();
            const int gsize = experts / n_group;
            for (int g = tid; g < n_group; g += nthreads) {
                float best = MOEMLA_NEG_INF, second = MOEMLA_NEG_INF;
                for (int e = g * gsize; e < (g + 1) * gsize; ++e) {
                    const float v = s.sel[e];
                    if (v > best) {
                        second = best;
                        best = v;
                    } else if (v > second) {
                        second = v;
                    }
                }
                // top2_sum over a one-expert group is that expert's score; inf + -inf = NaN
                // ranks as -inf.
                s.gscore[g] = (group_select == 1 && gsize > 1) ? best + second : best;
                s.gkept[g] = 0;
            }
            moemla_block_topk(s.gscore, n_group, topk_group, false, s.gsel, s.hist, s.part, s.bcast);
            for (int j = tid; j < topk_group; j += nthreads) s.gkept[s.gsel[j]] = 1;
            __syncthreads();
            for (int e = tid; e < experts; e += nthreads) {
                if (!s.gkept[e / gsize]) s.sel[e] = MOEMLA_NEG_INF;
            }
        }

        // 4. The top_k experts, best first.
        moemla_block_topk(s.sel, experts, top_k, true, s.cand, s.hist, s.part, s.bcast);
    }

    // 5. Weights: unbiased scores of the chosen ids, renormalised (sum in slot order,
    //    divided by max(sum, 1e-20)), scaled. sel is free again: it holds the scores.
    const moemla_i64 out = (moemla_i64)blockIdx.x * top_k;
    for (int j = tid; j < top_k; j += nthreads) {
        const int id = s.cand[j];
        topk_ids[out + j] = id;
        s.sel[j] = id >= 0 ? score(id) : 0.0f;
    }
    __syncthreads();
    if (renormalize && tid == 0) {
        float total = 0.0f;
        for (int j = 0; j < top_k; ++j) total += s.sel[j];
        red[0] = fmaxf(total, 1e-20f);
    }
    __syncthreads();
    const float denom = renormalize ? red[0] : 1.0f;
    for (int j = tid; j < top_k; j += nthreads) {
        const float w = renormalize ? s.sel[j] / denom : s.sel[j];
        topk_weights[out + j] = w * routed_scaling_factor;
    }
}

// After a hash-routed moemla_moe_route_*: turns the first bad table entry in token order
// (err[1]: position t * top_k + j, value v) into the contract's report: err[2] = its
// position in tid2eid (input_ids[t] * top_k + j) and v, err[3] = the first column of that
// row holding v too (position 0, value = the column), clean when v is not repeated.
// Grid (1, 1, 1), block (1, 1, 1).
extern "C" __global__ void moemla_moe_route_hash_resolve(const int* __restrict__ input_ids,
                                                         const int* __restrict__ tid2eid,
                                                         int top_k, moemla_u64* __restrict__ err) {
    if (threadIdx.x != 0 || err[1] == ~(moemla_u64)0) return;
    const moemla_i64 order = (moemla_i64)(err[1] >> 32);
    const int v = (int)(moemla_u32)(err[1] & 0xffffffffu);
    const moemla_i64 t = order / top_k;
    const int j = (int)(order % top_k);
    // Token t's id was in range: a token with a bad id flags err[0] and no table entry.
    const moemla_i64 at = (moemla_i64)input_ids[t] * top_k;
    err[2] = ((moemla_u64)(at + j) << 32) | (moemla_u64)(moemla_u32)v;
    for (int jj = 0; jj < j; ++jj) {
        if (tid2eid[at + jj] == v) {
            err[3] = (moemla_u64)(moemla_u32)jj;
            break;
        }
    }
}

#define MOEMLA_ROUTE_ENTRY(SFX, T)                                                              \
    extern "C" __global__ void moemla_moe_route_##SFX(                                           \
        const T* logits, const float* bias, int has_bias, const int* input_ids,                  \
        const int* tid2eid, int vocab, int* topk_ids, float* topk_weights, int experts,          \
        int top_k, int n_group, int topk_group, int score_func, int group_select,                \
        int renormalize, float routed_scaling_factor, moemla_u64* err) {                         \
        moemla_moe_route<T>(logits, bias, has_bias, input_ids, tid2eid, vocab, topk_ids,         \
                            topk_weights, experts, top_k, n_group, topk_group, score_func,       \
                            group_select, renormalize, routed_scaling_factor, err);              \
    }

MOEMLA_ROUTE_ENTRY(f32, float)
MOEMLA_ROUTE_ENTRY(f16, moemla_f16)
MOEMLA_ROUTE_ENTRY(bf16, moemla_bf16)
