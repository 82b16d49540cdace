// mla_sparse_decode: DeepSeek Sparse Attention over the cache slots each query lists
// (FlashMLA sparse semantics), one kv head; dense rows of D run-dtype values, or
// fp8_ds_v32 rows with -DKV_FP8 (fp8.cl: kv_t, LOAD_KV).
//
// sparse_split: one work-group per (split s, block of QB heads, query row r = b * Sq + i).
// It walks list entries [s * chunk, min((s + 1) * chunk, len)) of indices[r, :] (len =
// topk_length[b], or topk) in tiles of TN: the listed rows are gathered into local memory
// once and shared by the QB heads; -1 entries score -inf and are never loaded; duplicates
// count twice. Online softmax; the partial (o, m, l) of each (r, h, split) goes to a
// workspace. sparse_combine: one work-group per (r, h) merges the splits, applies the sink
// (o *= 1 / (1 + exp(sink[h] - lse)), lse unchanged) and writes o and lse; nothing
// attended gives o = 0, lse = -inf. With one split (`direct`, e.g. prefill: enough rows to
// fill the device), sparse_split keeps o in local memory (acc: QB * (Dv + 2) floats) and
// finishes each row itself exactly as sparse_combine would: no workspace, no combine.
//
// Index checks (flag slots, backends/opencl/src/flags.rs): a topk_length entry outside
// [0, topk] flags its batch (that batch then attends nothing); an entry that counts and is
// neither -1 nor in [0, slots) flags its row-major position and is not used.

__kernel void sparse_split(__global const store_t *q, __global const kv_t *kv_cache,
                           __global const int *indices, __global const int *topk_length,
                           int has_length, volatile __global int *len_flags, int len_slot,
                           volatile __global int *idx_flags, int idx_slot,
                           __global float *ws_o, __global float *ws_ml, int direct,
                           __global store_t *o, __global float *lse,
                           __global const float *sink, int has_sink, int Sq, int Hq,
                           int D, int Dv, int slots, int topk, float scale, int chunk,
                           int n_splits, int QB, int TN, __local float *qs,
                           __local float *ks, __local float *sc, __local float *alpha,
                           __local int *valid, __local float *acc) {
    const int lid = get_local_id(0);
    const int s = get_group_id(0);
    const int h0 = get_group_id(1) * QB;
    const int r = get_group_id(2);
    const int b = r / Sq;

    int len = topk;
    if (has_length) {
        len = topk_length[b];
        if (len < 0 || len > topk) {
            if (lid == 0) flag_bad_index(len_flags, len_slot, b);
            len = 0;
        }
    }
    const int start = s * chunk;
    const int end = min(start + chunk, len);
    __global const int *list = indices + (size_t)r * topk;

    FOR_STRIDED(idx, QB * D) {
        const int h = h0 + idx / D;
        qs[idx] = h < Hq ? load_f32(q, ((size_t)r * Hq + h) * D + idx % D) : 0.0f;
    } END_STRIDED
    float m_run = -INFINITY, l_run = 0.0f;
    FOR_STRIDED(idx, QB * Dv) {
        const int h = h0 + idx / Dv;
        if (direct) acc[idx] = 0.0f;
        else if (h < Hq) ws_o[(((size_t)r * Hq + h) * n_splits + s) * Dv + idx % Dv] = 0.0f;
    } END_STRIDED

    for (int j0 = start; j0 < end; j0 += TN) {
        barrier(CLK_LOCAL_MEM_FENCE);
        // Which entries of this tile attend (checked once, by one work-item each).
        FOR_STRIDED(jj, TN) {
            const int j = j0 + jj;
            int slot = -1;
            if (j < end) {
                slot = list[j];
                if (slot != -1 && (slot < 0 || slot >= slots)) {
                    flag_bad_index(idx_flags, idx_slot, r * topk + j);
                    slot = -1;
                }
            }
            valid[jj] = slot;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
        FOR_STRIDED(idx, TN * D) {
            const int slot = valid[idx / D];
            ks[idx] = slot >= 0 ? LOAD_KV(kv_cache, slot, D, idx % D) : 0.0f;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
        FOR_STRIDED(idx, QB * TN) {
            const int hh = idx / TN, jj = idx % TN;
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += qs[hh * D + d] * ks[jj * D + d];
            sc[idx] = (h0 + hh < Hq && valid[jj] >= 0) ? scale * dot : -INFINITY;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < QB) alpha[lid] = online_softmax_row(sc + lid * TN, TN, &m_run, &l_run);
        barrier(CLK_LOCAL_MEM_FENCE);
        FOR_STRIDED(idx, QB * Dv) {
            const int hh = idx / Dv, d = idx % Dv;
            if (h0 + hh < Hq) {
                const size_t at = (((size_t)r * Hq + h0 + hh) * n_splits + s) * Dv + d;
                float v = (direct ? acc[idx] : ws_o[at]) * alpha[hh];
                for (int jj = 0; jj < TN; ++jj) v += sc[hh * TN + jj] * ks[jj * D + d];
                if (direct) acc[idx] = v;
                else ws_o[at] = v;
            }
        } END_STRIDED
    }
    if (!direct) {
        if (lid < QB && h0 + lid < Hq) {
            const size_t part = ((size_t)r * Hq + h0 + lid) * n_splits + s;
            ws_ml[part * 2] = m_run;
            ws_ml[part * 2 + 1] = l_run;
        }
        return;
    }
    // One split: sparse_combine's arithmetic with n_splits 1 (exp(m - m) = 1). acc holds
    // QB * Dv sums, then per head l (0: nothing attended) and the sink factor.
    __local float *l_of = acc + QB * Dv, *factor_of = l_of + QB;
    if (lid < QB && h0 + lid < Hq) {
        const int h = h0 + lid;
        const int empty = m_run == -INFINITY;
        const float row_lse = empty ? -INFINITY : m_run + log(l_run);
        l_of[lid] = empty ? 0.0f : l_run;
        factor_of[lid] =
            (has_sink && !empty) ? 1.0f / (1.0f + exp(sink[h] - row_lse)) : 1.0f;
        lse[((size_t)b * Hq + h) * Sq + r % Sq] = row_lse;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    FOR_STRIDED(idx, QB * Dv) {
        const int hh = idx / Dv;
        if (h0 + hh < Hq) {
            const float l = l_of[hh];
            const float v = l == 0.0f ? 0.0f : acc[idx] / l * factor_of[hh];
            store_f32(o, ((size_t)r * Hq + h0 + hh) * Dv + idx % Dv, v);
        }
    } END_STRIDED
}

// Launch: global (WG * B * Sq * Hq), local WG; work-group index = r * Hq + h.
__kernel void sparse_combine(__global const float *ws_o, __global const float *ws_ml,
                             __global const float *sink, int has_sink, __global store_t *o,
                             __global float *lse, int Sq, int Hq, int Dv, int n_splits) {
    const int row = get_group_id(0);
    const int h = row % Hq, r = row / Hq;
    const int i = r % Sq, b = r / Sq;
    const size_t part0 = (size_t)row * n_splits;
    float m = -INFINITY;
    for (int s = 0; s < n_splits; ++s) m = fmax(m, ws_ml[(part0 + s) * 2]);
    float l = 0.0f;
    if (m != -INFINITY) {
        for (int s = 0; s < n_splits; ++s) {
            l += ws_ml[(part0 + s) * 2 + 1] * exp(ws_ml[(part0 + s) * 2] - m);
        }
    }
    const int empty = m == -INFINITY;
    const float row_lse = empty ? -INFINITY : m + log(l);
    const float factor = (has_sink && !empty) ? 1.0f / (1.0f + exp(sink[h] - row_lse)) : 1.0f;
    FOR_STRIDED(d, Dv) {
        float acc = 0.0f;
        if (!empty) {
            for (int s = 0; s < n_splits; ++s) {
                acc += ws_o[(part0 + s) * Dv + d] * exp(ws_ml[(part0 + s) * 2] - m);
            }
            acc = acc / l * factor;
        }
        store_f32(o, (size_t)row * Dv + d, acc);
    } END_STRIDED
    if (get_local_id(0) == 0) lse[((size_t)b * Hq + h) * Sq + i] = row_lse;
}
