// moe_route: DeepSeek-V2/V3 gating as a pipeline of small kernels over a batch of tokens.
//
// Every kernel runs one work-group of LS (a power of two) per token: global = n * LS,
// local = LS, work-group w handles token t0 + w and slice w of the global scratch: selection keys [E], group keys [n_group], (key, id) pairs [2 * top_k] and a state
// record [STATE] (the row's softmax max and sum, the select threshold). Local memory does not
// grow with E: at most LS uint16s or 256 uints per kernel. Each kernel keeps its barriers
// few and unconditional (PoCL 3.1 needed minutes to compile one fused kernel with
// conditional and nested barrier loops).
//
// s = sigmoid(logit), sqrt(softplus(logit)) (softplus(x) = x above 20) or softmax(logits);
// sel = s + bias (selection only); with groups,
// experts outside the topk_group best groups get sel = -inf; ids = top_k of sel
// (descending, ties to the lower id); weights = s[ids], renormalised by max(sum, 1e-20),
// then scaled. A NaN selection score, and a NaN group score, ranks as -inf.
//
// Selection works on keys: each score maps to a uint in the same order (NaN as -inf, -0 as
// +0). A radix select (route_select_pass for the 8-bit digits 24, 16, 8, 0 over a 256-bin
// histogram, then route_select_cut) finds the k-th largest key tau; the chosen are all keys
// > tau and the lowest-index keys == tau up to k. route_compact writes the chosen experts'
// (key, id) pairs in id order; route_rank (top_k <= 128) or 8 route_radix passes (4-bit
// digits, stable) order them best first. Work per token is O(E + top_k) (plus O(top_k^2)
// by rank), never one pass over E per chosen expert.

#define SCORE_SIGMOID 0
#define SCORE_SOFTMAX 1
#define SCORE_SQRTSOFTPLUS 2
#define GROUP_MAX 0
#define GROUP_TOP2_SUM 1
// score_key(-inf), and of NaN.
#define KEY_NEG_INF 0x007FFFFFu
// State record per token: the select's digits so far (then tau), how many keys == those
// digits are still needed, the cut index, the row's softmax max and sum (as bits).
#define STATE 8
#define ST_PREFIX 0
#define ST_NEED 1
#define ST_CUT 2
#define ST_MAX 3
#define ST_SUM 4

// The order-preserving key of a score: larger score, larger key.
inline uint score_key(float v) {
    if (isnan(v)) v = -INFINITY;
    if (v == 0.0f) v = 0.0f;  // -0 ties with +0
    const uint u = as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The score of a key (NaN came back as -inf).
inline float key_score(uint k) {
    return as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// Whether index i with key `key` is among the chosen of a select with threshold (tau, cut).
inline int chosen(uint key, int i, uint tau, int cut) {
    return key > tau || (key == tau && i <= cut);
}

// The score of expert e of a row (m, total: the row's softmax max and sum).
inline float expert_score(__global const store_t *row, int e, int score_func, float m,
                          float total) {
    const float x = load_f32(row, e);
    if (score_func == SCORE_SQRTSOFTPLUS) return sqrt(x > 20.0f ? x : log1p(exp(x)));
    return score_func == SCORE_SOFTMAX ? exp(x - m) / total : 1.0f / (1.0f + exp(-x));
}

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

// Softmax statistics (softmax only) and the selection key of every expert.
__kernel void route_keys(__global const store_t *logits, __global const float *bias,
                         int has_bias, int t0, int E, int score_func, __global uint *keys_ws,
                         __global uint *state, __local float *red) {
    const int w = get_group_id(0);
    __global const store_t *row = logits + (size_t)(t0 + w) * E;
    __global uint *keys = keys_ws + (size_t)w * E;
    const int softmax = score_func == SCORE_SOFTMAX;
    float part = -INFINITY;
    FOR_STRIDED(e, softmax ? E : 0) { part = fmax(part, load_f32(row, e)); } END_STRIDED
    const float row_max = wg_max(red, part);
    const float m = softmax ? row_max : 0.0f;
    part = 0.0f;
    FOR_STRIDED(e, softmax ? E : 0) { part += exp(load_f32(row, e) - m); } END_STRIDED
    const float row_sum = wg_sum(red, part);
    const float total = softmax ? row_sum : 1.0f;
    FOR_STRIDED(e, E) {
        const float s = expert_score(row, e, score_func, m, total);
        keys[e] = score_key(s + (has_bias ? bias[e] : 0.0f));
    } END_STRIDED
    if (get_local_id(0) == 0) {
        state[(size_t)w * STATE + ST_MAX] = as_uint(m);
        state[(size_t)w * STATE + ST_SUM] = as_uint(total);
    }
}

// Group scores: the best key of each group, or the key of the sum of its best two.
__kernel void route_groups(__global const uint *keys_ws, int E, int n_group,
                           int group_select, __global uint *gkeys_ws) {
    const int w = get_group_id(0);
    __global const uint *keys = keys_ws + (size_t)w * E;
    const int gsize = E / n_group;
    FOR_STRIDED(g, n_group) {
        uint a = KEY_NEG_INF, b = KEY_NEG_INF;
        for (int e = g * gsize; e < (g + 1) * gsize; ++e) {
            const uint v = keys[e];
            if (v > a) {
                b = a;
                a = v;
            } else if (v > b) {
                b = v;
            }
        }
        const int top2 = group_select == GROUP_TOP2_SUM && gsize > 1;
        gkeys_ws[(size_t)w * n_group + g] = top2 ? score_key(key_score(a) + key_score(b)) : a;
    } END_STRIDED
}

// One digit of the select of the top k of keys[0, n): digit `shift` (24 first, which also
// starts the select) of tau, by a histogram of the keys that match the digits so far.
__kernel void route_select_pass(__global const uint *keys_ws, int n, int k, int shift,
                                __global uint *state, volatile __local uint *hist) {
    const int w = get_group_id(0);
    __global const uint *keys = keys_ws + (size_t)w * n;
    __global uint *st = state + (size_t)w * STATE;
    const int first = shift == 24;
    const uint prefix = first ? 0u : st[ST_PREFIX];
    const uint need = first ? (uint)k : st[ST_NEED];
    const uint high = first ? 0u : 0xFFFFFFFFu << (shift + 8);
    FOR_STRIDED(d, 256) { hist[d] = 0u; } END_STRIDED
    barrier(CLK_LOCAL_MEM_FENCE);
    FOR_STRIDED(i, n) {
        const uint key = keys[i];
        if ((key & high) == prefix) atomic_inc(&hist[(key >> shift) & 0xFFu]);
    } END_STRIDED
    barrier(CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) {
        // The largest digit whose keys, with all larger ones, reach `need`; the keys
        // matching the digits so far number at least `need`, so digit 0 is the last resort.
        uint above = 0u;
        int d = 255;
        while (d > 0 && above + hist[d] < need) above += hist[d--];
        st[ST_PREFIX] = prefix | ((uint)d << shift);
        st[ST_NEED] = need - above;
    }
}

// Ends the select: the cut is the index of the need-th key equal to tau, in index order.
__kernel void route_select_cut(__global const uint *keys_ws, int n, __global uint *state,
                               __local uint *scan) {
    const int w = get_group_id(0);
    __global const uint *keys = keys_ws + (size_t)w * n;
    __global uint *st = state + (size_t)w * STATE;
    const uint tau = st[ST_PREFIX], need = st[ST_NEED];
    uint ties = 0u;
    FOR_CHUNK(i, n) { ties += keys[i] == tau; } END_CHUNK
    uint all_ties;
    uint seen = wg_scan(scan, ties, &all_ties);
    const int mine = seen < need && need <= seen + ties;
    FOR_CHUNK(i, n) {
        if (mine && keys[i] == tau && ++seen == need) st[ST_CUT] = (uint)i;
    } END_CHUNK
}

// Sets the key of every expert outside the chosen groups to -inf.
__kernel void route_mask(__global uint *keys_ws, __global const uint *gkeys_ws, int E,
                         int n_group, __global const uint *state) {
    const int w = get_group_id(0);
    __global uint *keys = keys_ws + (size_t)w * E;
    __global const uint *gkeys = gkeys_ws + (size_t)w * n_group;
    __global const uint *st = state + (size_t)w * STATE;
    const uint tau = st[ST_PREFIX];
    const int cut = (int)st[ST_CUT];
    const int gsize = E / n_group;
    FOR_STRIDED(e, E) {
        const int g = e / gsize;
        if (!chosen(gkeys[g], g, tau, cut)) keys[e] = KEY_NEG_INF;
    } END_STRIDED
}

// The chosen experts' (key, id) pairs, in id order, into pairs[0, top_k).
__kernel void route_compact(__global const uint *keys_ws, int E, int top_k,
                            __global const uint *state, __global uint2 *pairs_ws,
                            __local uint *scan) {
    const int w = get_group_id(0);
    __global const uint *keys = keys_ws + (size_t)w * E;
    __global uint2 *pairs = pairs_ws + (size_t)w * 2 * top_k;
    __global const uint *st = state + (size_t)w * STATE;
    const uint tau = st[ST_PREFIX];
    const int cut = (int)st[ST_CUT];
    uint mine = 0u;
    FOR_CHUNK(e, E) { mine += chosen(keys[e], e, tau, cut); } END_CHUNK
    uint all;
    uint at = wg_scan(scan, mine, &all);
    FOR_CHUNK(e, E) {
        const uint key = keys[e];
        if (chosen(key, e, tau, cut)) pairs[at++] = (uint2)(key, (uint)e);
    } END_CHUNK
}

// Orders pairs[0, top_k) best first (ties in id order) into pairs[top_k, 2 top_k) by rank:
// O(top_k^2), for small top_k.
__kernel void route_rank(int top_k, __global uint2 *pairs_ws) {
    __global uint2 *pairs = pairs_ws + (size_t)get_group_id(0) * 2 * top_k;
    FOR_STRIDED(j, top_k) {
        const uint2 p = pairs[j];
        int rank = 0;
        for (int i = 0; i < top_k; ++i) {
            const uint2 q = pairs[i];
            rank += q.x > p.x || (q.x == p.x && i < j);
        }
        pairs[top_k + rank] = p;
    } END_STRIDED
}

// One stable pass of an LSD radix sort of the pairs by descending key (4-bit digit
// `shift` of the inverted key), from pairs[src, src + top_k) to pairs[dst, dst + top_k).
__kernel void route_radix(int top_k, int shift, int src_at, int dst_at,
                          __global uint2 *pairs_ws, __local uint16 *scan16) {
    __global uint2 *pairs = pairs_ws + (size_t)get_group_id(0) * 2 * top_k;
    __global const uint2 *src = pairs + src_at;
    __global uint2 *dst = pairs + dst_at;
    uint count[16];
    for (int d = 0; d < 16; ++d) count[d] = 0u;
    FOR_CHUNK(i, top_k) { ++count[(~src[i].x >> shift) & 15u]; } END_CHUNK
    uint16 totals_v;
    const uint16 before_v = wg_scan16(scan16, vload16(0, count), &totals_v);
    uint totals[16], base[16];
    vstore16(totals_v, 0, totals);
    vstore16(before_v, 0, base);
    uint start = 0u;
    for (int d = 0; d < 16; ++d) {
        base[d] += start;
        start += totals[d];
    }
    FOR_CHUNK(i, top_k) {
        const uint2 p = src[i];
        dst[base[(~p.x >> shift) & 15u]++] = p;
    } END_CHUNK
}

// ids and unbiased weights from the ordered pairs at pairs[sorted_at, sorted_at + top_k):
// renormalised by max(sum, 1e-20) in slot order, then scaled.
__kernel void route_weights(__global const store_t *logits, int t0, int E, int score_func,
                            int top_k, int sorted_at, __global const uint2 *pairs_ws,
                            __global const uint *state, int renormalize, float scaling,
                            __global int *topk_ids, __global float *topk_weights,
                            __local float *denom) {
    const int w = get_group_id(0);
    const size_t t = (size_t)(t0 + w);
    __global const store_t *row = logits + t * E;
    __global const uint2 *sorted = pairs_ws + (size_t)w * 2 * top_k + sorted_at;
    __global const uint *st = state + (size_t)w * STATE;
    const float m = as_float(st[ST_MAX]), total = as_float(st[ST_SUM]);
    __global float *wt = topk_weights + t * top_k;
    FOR_STRIDED(j, top_k) {
        const int id = (int)sorted[j].y;
        topk_ids[t * top_k + j] = id;
        wt[j] = expert_score(row, id, score_func, m, total);
    } END_STRIDED
    barrier(CLK_GLOBAL_MEM_FENCE);
    if (get_local_id(0) == 0) {
        float sum = 0.0f;
        for (int j = 0; j < (renormalize ? top_k : 0); ++j) sum += wt[j];
        denom[0] = renormalize ? fmax(sum, 1e-20f) : 1.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    FOR_STRIDED(j, top_k) { wt[j] = wt[j] / denom[0] * scaling; } END_STRIDED
}
