// moe_route: DeepSeek-V2/V3 gating, one work-group per token.
//
// Launch: global = T * LS, local = LS (a power of two). Local buffers: scores and
// selection scores [E], expert taken flags [E], group scores and kept flags [n_group],
// reduction scratch [LS] (value and index).
//
// s = sigmoid(logit) or softmax(logits); sel = s + bias (selection only); with groups,
// experts outside the topk_group best groups get sel = -inf; ids = top_k of sel
// (descending, ties to the lower id); weights = s[ids], renormalised by max(sum, 1e-20),
// then scaled.

#define SCORE_SIGMOID 0
#define SCORE_SOFTMAX 1
#define GROUP_MAX 0
#define GROUP_TOP2_SUM 1

// Tree reductions of one value per work-item; every work-item gets the result.
inline float wg_max(__local float *red, float v) {
    const int lid = get_local_id(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int n = get_local_size(0) / 2; n > 0; n >>= 1) {
        if (lid < n) red[lid] = fmax(red[lid], red[lid + n]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_sum(__local float *red, float v) {
    const int lid = get_local_id(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int n = get_local_size(0) / 2; n > 0; n >>= 1) {
        if (lid < n) red[lid] = red[lid] + red[lid + n];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

// Whether candidate (v, i) beats (bv, bi): higher score, ties to the lower id; -1 = none.
// A NaN score counts as -inf.
inline int beats(float v, int i, float bv, int bi) {
    if (i < 0) return 0;
    v = isnan(v) ? -INFINITY : v;
    bv = isnan(bv) ? -INFINITY : bv;
    return bi < 0 || v > bv || (v == bv && i < bi);
}

__kernel void moe_route(__global const store_t *logits, __global const float *bias,
                        int has_bias, __global int *topk_ids, __global float *topk_weights,
                        int E, int score_func, int n_group, int topk_group, int group_select,
                        int top_k, int renormalize, float scaling, __local float *s,
                        __local float *sel, __local int *taken, __local float *gscore,
                        __local int *gkept, __local float *red_v, __local int *red_i) {
    const int t = get_group_id(0);
    const int lid = get_local_id(0);
    const int ls = get_local_size(0);
    __global const store_t *row = logits + (size_t)t * E;

    // Scores.
    float local_max = -INFINITY;
    FOR_STRIDED(e, E) {
        s[e] = load_f32(row, e);
        local_max = fmax(local_max, s[e]);
        taken[e] = 0;
    } END_STRIDED
    if (score_func == SCORE_SOFTMAX) {
        const float m = wg_max(red_v, local_max);
        float part = 0.0f;
        FOR_STRIDED(e, E) { part += exp(s[e] - m); } END_STRIDED
        const float total = wg_sum(red_v, part);
        FOR_STRIDED(e, E) { s[e] = exp(s[e] - m) / total; } END_STRIDED
    } else {
        FOR_STRIDED(e, E) { s[e] = 1.0f / (1.0f + exp(-s[e])); } END_STRIDED
    }
    FOR_STRIDED(e, E) { sel[e] = s[e] + (has_bias ? bias[e] : 0.0f); } END_STRIDED
    barrier(CLK_LOCAL_MEM_FENCE);

    // Group limit: score groups, keep the topk_group best (ties to the lower group).
    if (n_group > 1) {
        const int gsize = E / n_group;
        FOR_STRIDED(g, n_group) {
            float a = -INFINITY, b = -INFINITY;
            for (int e = g * gsize; e < (g + 1) * gsize; ++e) {
                const float v = sel[e];
                if (v > a) {
                    b = a;
                    a = v;
                } else if (v > b) {
                    b = v;
                }
            }
            gscore[g] = (group_select == GROUP_TOP2_SUM && gsize > 1) ? a + b : a;
            gkept[g] = 0;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) {
            for (int r = 0; r < topk_group; ++r) {
                int best = -1;
                for (int g = 0; g < n_group; ++g) {
                    if (!gkept[g] && beats(gscore[g], g, best < 0 ? 0.0f : gscore[best], best)) {
                        best = g;
                    }
                }
                gkept[best] = 1;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        FOR_STRIDED(e, E) {
            if (!gkept[e / gsize]) sel[e] = -INFINITY;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    // Top-k by iterated argmax.
    for (int j = 0; j < top_k; ++j) {
        float bv = 0.0f;
        int bi = -1;
        FOR_STRIDED(e, E) {
            if (!taken[e] && beats(sel[e], e, bv, bi)) {
                bv = sel[e];
                bi = e;
            }
        } END_STRIDED
        red_v[lid] = bv;
        red_i[lid] = bi;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int half_n = ls / 2; half_n > 0; half_n >>= 1) {
            if (lid < half_n && beats(red_v[lid + half_n], red_i[lid + half_n], red_v[lid], red_i[lid])) {
                red_v[lid] = red_v[lid + half_n];
                red_i[lid] = red_i[lid + half_n];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        if (lid == 0) {
            const int id = red_i[0];  // >= 0: validation keeps top_k <= E
            taken[id] = 1;
            topk_ids[(size_t)t * top_k + j] = id;
            topk_weights[(size_t)t * top_k + j] = s[id];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    // Unbiased weights: renormalise, then scale.
    if (lid == 0) {
        __global float *w = topk_weights + (size_t)t * top_k;
        float sum = 0.0f;
        for (int j = 0; j < top_k; ++j) sum += w[j];
        // max(sum, 1e-20): all-zero scores give weights 0, not 0 / 0.
        const float denom = renormalize ? fmax(sum, 1e-20f) : 1.0f;
        for (int j = 0; j < top_k; ++j) w[j] = w[j] / denom * scaling;
    }
}
