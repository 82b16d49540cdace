// moe_route hash routing (DeepSeek-V4's first layers): ids = tid2eid[input_ids[t]],
// weights = s[ids] (s: the score function of the logits), renormalised by max(sum, 1e-20)
// in slot order, then scaled. One work-item per token.
//
// Index checks (flag slots of backends/opencl/src/flags.rs): an input id outside
// [0, vocab) flags its token (slot_ids); a table entry outside [0, E), or equal to an
// earlier one of its row, flags its row-major position in tid2eid (slot_table). A token
// with a bad index writes ids -1 and weights 0 and reads nothing through it.

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
                         volatile __global int *flags_table, int slot_table) {
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
            flag_bad_index(flags_table, slot_table, token * top_k + j);
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
