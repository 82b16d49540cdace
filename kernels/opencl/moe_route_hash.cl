// moe_route hash routing (DeepSeek-V4's first layers): ids = tid2eid[input_ids[t]],
// weights = s[ids] (s: the score function of the logits), renormalised by max(sum, 1e-20)
// in slot order, then scaled. One work-item per token.
//
// Index checks (flag slots of backends/opencl/src/flags.rs): an input id outside
// [0, vocab) flags its token (slot_ids). A table entry outside [0, E), or equal to an
// earlier one of its row, is found in token order, as the contract's check reports it: the
// token's first bad column lowers first_bad to t * top_k + j, and route_hash_resolve then
// flags that entry's tid2eid position in the range slot or the repeat slot. A token with a
// bad index writes ids -1 and weights 0 and reads nothing through it.

#define SCORE_SOFTMAX 1
#define SCORE_SQRTSOFTPLUS 2

// The score of logit x (m, total: the row's softmax max and sum).
inline float hash_score(float x, int score_func, float m, float total) {
    if (score_func == SCORE_SQRTSOFTPLUS) return sqrt(x > 20.0f ? x : log1p(exp(x)));
    return score_func == SCORE_SOFTMAX ? exp(x - m) / total : 1.0f / (1.0f + exp(-x));
}

// Launch: global T rounded up, any work-group.
__kernel void route_hash(__global const store_t *logits, int T, int E, int top_k,
                         int score_func, __global const int *input_ids, int vocab,
                         __global const int *tid2eid, int renormalize, float scaling,
                         __global int *topk_ids, __global float *topk_weights,
                         volatile __global int *flags_ids, int slot_ids,
                         volatile __global int *first_bad) {
    const int t = get_global_id(0);
    if (t >= T) return;
    __global const store_t *row = logits + (size_t)t * E;
    __global int *ids = topk_ids + (size_t)t * top_k;
    __global float *wt = topk_weights + (size_t)t * top_k;
    const int token = input_ids[t];
    int ok = token >= 0 && token < vocab;
    if (!ok) flag_bad_index(flags_ids, slot_ids, t);
    __global const int *experts = tid2eid + (size_t)(ok ? token : 0) * top_k;
    for (int j = 0; ok && j < top_k; ++j) {
        const int e = experts[j];
        int bad = e < 0 || e >= E;
        for (int i = 0; !bad && i < j; ++i) bad = experts[i] == e;
        if (bad) {
            atomic_min(first_bad, t * top_k + j);
            ok = 0;
        }
    }
    float m = 0.0f, total = 1.0f;
    if (ok && score_func == SCORE_SOFTMAX) {
        m = -INFINITY;
        for (int e = 0; e < E; ++e) m = fmax(m, load_f32(row, e));
        total = 0.0f;
        for (int e = 0; e < E; ++e) total += exp(load_f32(row, e) - m);
    }
    float sum = 0.0f;
    for (int j = 0; j < top_k; ++j) {
        const int e = ok ? experts[j] : -1;
        const float w = ok ? hash_score(load_f32(row, e), score_func, m, total) : 0.0f;
        ids[j] = e;
        wt[j] = w;
        sum += w;
    }
    const float denom = renormalize ? fmax(sum, 1e-20f) : 1.0f;
    for (int j = 0; j < top_k; ++j) wt[j] = wt[j] / denom * scaling;
}

// Launch: global 1, local 1, after route_hash: the table entry of the first bad (token,
// column) in token order, in the range slot (outside [0, E)) or the repeat slot.
__kernel void route_hash_resolve(__global const int *first_bad, __global const int *input_ids,
                                 __global const int *tid2eid, int top_k, int E,
                                 volatile __global int *range_flags, int range_slot,
                                 volatile __global int *repeat_flags, int repeat_slot) {
    const int v = first_bad[0];
    if (v == INT_MAX) return;
    const int at = input_ids[v / top_k] * top_k + v % top_k;  // a valid token's row
    const int e = tid2eid[at];
    if (e < 0 || e >= E) {
        flag_bad_index(range_flags, range_slot, at);
    } else {
        flag_bad_index(repeat_flags, repeat_slot, at);
    }
}
