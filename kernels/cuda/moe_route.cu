// moe_route.cu — DeepSeek-V2/V3 gating (see kernels/README.md for the launch contract).
// Prepended by the backend with kernels/common/moemla_device.h.
//
// One block per token: scores (sigmoid / softmax) -> selection scores (+ bias) -> group
// scores (max / top-2 sum) -> drop all but the best topk_group groups (-inf) -> top_k by
// iterated block-wide argmax (ties to the lower expert id) -> unbiased scores of the chosen
// ids, renormalised in slot order, scaled.

// Block-wide argmax of (v, i) with lower-index tie break; every thread gets the winner.
// `red_v` / `red_i` hold one entry per warp. Contains two __syncthreads.
__device__ __forceinline__ void moemla_block_argmax(float& v, int& i, float* red_v, int* red_i) {
    const int lane = threadIdx.x % MOEMLA_WARP_SIZE;
    const int warp = threadIdx.x / MOEMLA_WARP_SIZE;
    const int nwarps = (blockDim.x + MOEMLA_WARP_SIZE - 1) / MOEMLA_WARP_SIZE;
    moemla_warp_argmax(v, i);
    if (lane == 0) {
        red_v[warp] = v;
        red_i[warp] = i;
    }
    __syncthreads();
    float bv = red_v[0];
    int bi = red_i[0];
    for (int w = 1; w < nwarps; ++w) {
        if (moemla_argmax_better(red_v[w], red_i[w], bv, bi)) {
            bv = red_v[w];
            bi = red_i[w];
        }
    }
    __syncthreads();  // red_* may be reused right after
    v = bv;
    i = bi;
}

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

template <typename T>
__device__ void moemla_moe_route(const T* __restrict__ logits, const float* __restrict__ bias,
                                 int has_bias, int* __restrict__ topk_ids,
                                 float* __restrict__ topk_weights, int experts, int top_k,
                                 int n_group, int topk_group, int score_func, int group_select,
                                 int renormalize, float routed_scaling_factor) {
    MOEMLA_DYN_SMEM(smem);
    float* scores = reinterpret_cast<float*>(smem);       // [E] unbiased scores
    float* sel = scores + experts;                         // [E] selection scores
    int* taken = reinterpret_cast<int*>(sel + experts);    // [E] 1 once chosen
    float* gscore = reinterpret_cast<float*>(taken + experts);  // [n_group]
    int* gkept = reinterpret_cast<int*>(gscore + n_group);      // [n_group]
    __shared__ float red_v[MOEMLA_MAX_WARPS];
    __shared__ int red_i[MOEMLA_MAX_WARPS];

    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const moemla_i64 row = (moemla_i64)blockIdx.x * experts;

    // 1. Scores.
    float local_max = MOEMLA_NEG_INF;
    for (int e = tid; e < experts; e += nthreads) {
        float x = moemla_load(logits + row + e);
        scores[e] = x;
        local_max = fmaxf(local_max, x);
        taken[e] = 0;
    }
    if (score_func == 1) {
        // softmax over the row
        float mx = moemla_block_reduce(local_max, true, red_v);
        float local_sum = 0.0f;
        for (int e = tid; e < experts; e += nthreads) {
            float p = expf(scores[e] - mx);
            scores[e] = p;
            local_sum += p;
        }
        float sum = moemla_block_reduce(local_sum, false, red_v);
        for (int e = tid; e < experts; e += nthreads) scores[e] = scores[e] / sum;
    } else {
        for (int e = tid; e < experts; e += nthreads) scores[e] = 1.0f / (1.0f + expf(-scores[e]));
    }
    // 2. Selection scores (bias steers selection only). NaN never wins: it becomes -inf.
    for (int e = tid; e < experts; e += nthreads) {
        float s = scores[e] + (has_bias ? bias[e] : 0.0f);
        sel[e] = (s == s) ? s : MOEMLA_NEG_INF;
    }
    __syncthreads();

    // 3. Group limit.
    if (n_group > 1) {
        const int gsize = experts / n_group;
        for (int g = tid; g < n_group; g += nthreads) {
            float best = MOEMLA_NEG_INF, second = MOEMLA_NEG_INF;
            for (int e = g * gsize; e < (g + 1) * gsize; ++e) {
                float s = sel[e];
                if (s > best) {
                    second = best;
                    best = s;
                } else if (s > second) {
                    second = s;
                }
            }
            // top2_sum over a one-expert group is that expert's score.
            gscore[g] = (group_select == 1 && gsize > 1) ? best + second : best;
            gkept[g] = 0;
        }
        __syncthreads();
        for (int round = 0; round < topk_group; ++round) {
            float v = MOEMLA_NEG_INF;
            int idx = MOEMLA_INT_MAX;
            for (int g = tid; g < n_group; g += nthreads) {
                if (!gkept[g] && moemla_argmax_better(gscore[g], g, v, idx)) {
                    v = gscore[g];
                    idx = g;
                }
            }
            moemla_block_argmax(v, idx, red_v, red_i);
            if (tid == 0 && idx != MOEMLA_INT_MAX) gkept[idx] = 1;
            __syncthreads();
        }
        for (int e = tid; e < experts; e += nthreads) {
            if (!gkept[e / gsize]) sel[e] = MOEMLA_NEG_INF;
        }
        __syncthreads();
    }

    // 4. Top-k by iterated argmax; thread 0 records the ids in slot order.
    const moemla_i64 out = (moemla_i64)blockIdx.x * top_k;
    for (int j = 0; j < top_k; ++j) {
        float v = MOEMLA_NEG_INF;
        int idx = MOEMLA_INT_MAX;
        for (int e = tid; e < experts; e += nthreads) {
            if (!taken[e] && moemla_argmax_better(sel[e], e, v, idx)) {
                v = sel[e];
                idx = e;
            }
        }
        moemla_block_argmax(v, idx, red_v, red_i);
        // top_k <= E, so an untaken expert always exists and idx is a real id.
        if (tid == 0) {
            taken[idx] = 1;
            topk_ids[out + j] = idx;
        }
        __syncthreads();
    }

    // 5. Weights: unbiased scores, renormalised in slot order, scaled.
    if (tid == 0) {
        float sum = 0.0f;
        for (int j = 0; j < top_k; ++j) sum += scores[topk_ids[out + j]];
        for (int j = 0; j < top_k; ++j) {
            float w = scores[topk_ids[out + j]];
            if (renormalize) w = w / sum;
            topk_weights[out + j] = w * routed_scaling_factor;
        }
    }
}

#define MOEMLA_ROUTE_ENTRY(SFX, T)                                                              \
    extern "C" __global__ void moemla_moe_route_##SFX(                                           \
        const T* logits, const float* bias, int has_bias, int* topk_ids, float* topk_weights,    \
        int experts, int top_k, int n_group, int topk_group, int score_func, int group_select,   \
        int renormalize, float routed_scaling_factor) {                                          \
        moemla_moe_route<T>(logits, bias, has_bias, topk_ids, topk_weights, experts, top_k,      \
                            n_group, topk_group, score_func, group_select, renormalize,          \
                            routed_scaling_factor);                                              \
    }

MOEMLA_ROUTE_ENTRY(f32, float)
MOEMLA_ROUTE_ENTRY(f16, moemla_f16)
MOEMLA_ROUTE_ENTRY(bf16, moemla_bf16)
