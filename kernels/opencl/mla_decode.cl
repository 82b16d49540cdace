// mla_decode: split-KV flash decoding over a paged latent cache (FlashMLA semantics).
//
// mla_split: one work-group per (split s, block of QB query rows of one kv head, batch b).
// The rows of kv head g are (query i, head h) pairs with h / (Hq / Hkv) == g, row
// r = i * (Hq / Hkv) + h % (Hq / Hkv). The work-group walks positions
// [s * chunk, min((s + 1) * chunk, seqlen)) in tiles of TN cache rows: each tile is loaded
// once into local memory and shared by the QB rows; scores use an online softmax. Positions
// at or beyond seqlen are never loaded (they may hold NaN). The partial (o, m, l) of each
// row and split goes to a workspace.
// mla_combine: one work-group per (b, i, h) merges the splits into o and lse.
//
// Bad indices raise flags instead of being read (flag_bad_index): the seqlen slot takes the
// smallest batch whose seqlen is outside [0, max_blocks * block_size] (that batch then reads
// nothing), the table slot the smallest row-major block-table position whose entry is
// outside [0, num_blocks) among those the batch's positions need.

// Cache rows: run-dtype rows of D values here; fp8.cl defines kv_t and LOAD_KV for the
// fp8_ds_v32 build of this file (-DKV_FP8, backends/opencl/src/programs_v2.rs).
#ifndef LOAD_KV
typedef store_t kv_t;
#define LOAD_KV(p, row, D, d) load_f32((p), (size_t)(row) * (D) + (d))
#endif

__kernel void mla_split(__global const store_t *q, __global const kv_t *kv_cache,
                        __global const int *block_table, __global const int *cache_seqlens,
                        volatile __global int *seqlen_flags, int seqlen_slot,
                        volatile __global int *table_flags, int table_slot,
                        __global float *ws_o, __global float *ws_ml, int Sq, int Hq,
                        int Hkv, int D, int Dv, int num_blocks, int block_size,
                        int max_blocks, int causal, float scale, int chunk, int n_splits,
                        int QB, int TN,
                        __local float *qs, __local float *ks, __local float *sc,
                        __local float *alpha) {
    const int lid = get_local_id(0);
    const int wg = get_local_size(0);
    const int s = get_group_id(0);
    const int g = get_group_id(1) % Hkv;
    const int r0 = (get_group_id(1) / Hkv) * QB;
    const int b = get_group_id(2);
    const int group = Hq / Hkv;
    const int rows = group * Sq;

    int seqlen = cache_seqlens[b];
    if (seqlen < 0 || seqlen > max_blocks * block_size) {
        if (lid == 0) flag_bad_index(seqlen_flags, seqlen_slot, b);
        seqlen = 0;
    }
    const int start = s * chunk;
    const int end = min(start + chunk, seqlen);

    // Query rows of this block, widened to f32.
    FOR_STRIDED(idx, QB * D) {
        const int r = r0 + idx / D;
        const int i = r / group, h = g * group + r % group;
        qs[idx] = r < rows ? load_f32(q, (((size_t)b * Sq + i) * Hq + h) * D + idx % D) : 0.0f;
    } END_STRIDED
    // Work-item rr < QB owns the running max and sum of row r0 + rr.
    float m_run = -INFINITY, l_run = 0.0f;
    // The partial o of (row r0 + idx / Dv, column idx % Dv) is owned by work-item idx % wg.
    FOR_STRIDED(idx, QB * Dv) {
        const int r = r0 + idx / Dv;
        if (r < rows) {
            const size_t part = (((size_t)b * Hkv + g) * rows + r) * n_splits + s;
            ws_o[part * Dv + idx % Dv] = 0.0f;
        }
    } END_STRIDED

    for (int p0 = start; p0 < end; p0 += TN) {
        barrier(CLK_LOCAL_MEM_FENCE);
        // Cache rows p0 .. p0 + TN of kv head g; positions >= end are zeros, never loaded.
        FOR_STRIDED(idx, TN * D) {
            const int p = p0 + idx / D;
            float v = 0.0f;
            if (p < end) {
                const int j = b * max_blocks + p / block_size;
                const int blk = block_table[j];
                if (blk >= 0 && blk < num_blocks) {
                    const size_t row = ((size_t)blk * block_size + p % block_size) * Hkv + g;
                    v = LOAD_KV(kv_cache, row, D, idx % D);
                } else {
                    flag_bad_index(table_flags, table_slot, j);
                }
            }
            ks[idx] = v;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
        // Scaled scores; positions a row may not attend to are -inf.
        FOR_STRIDED(idx, QB * TN) {
            const int rr = idx / TN, p = p0 + idx % TN;
            const int r = r0 + rr;
            const int i = r / group;
            const int len = causal ? seqlen - Sq + i + 1 : seqlen;
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += qs[rr * D + d] * ks[(idx % TN) * D + d];
            sc[idx] = (r < rows && p < end && p < len) ? scale * dot : -INFINITY;
        } END_STRIDED
        barrier(CLK_LOCAL_MEM_FENCE);
        // Online softmax: scores become probabilities relative to the new running max.
        if (lid < QB) alpha[lid] = online_softmax_row(sc + lid * TN, TN, &m_run, &l_run);
        barrier(CLK_LOCAL_MEM_FENCE);
        FOR_STRIDED(idx, QB * Dv) {
            const int rr = idx / Dv, d = idx % Dv;
            const int r = r0 + rr;
            if (r < rows) {
                const size_t part = (((size_t)b * Hkv + g) * rows + r) * n_splits + s;
                float acc = ws_o[part * Dv + d] * alpha[rr];
                for (int pp = 0; pp < TN; ++pp) acc += sc[rr * TN + pp] * ks[pp * D + d];
                ws_o[part * Dv + d] = acc;
            }
        } END_STRIDED
    }
    if (lid < QB && r0 + lid < rows) {
        const size_t part = (((size_t)b * Hkv + g) * rows + r0 + lid) * n_splits + s;
        ws_ml[part * 2] = m_run;
        ws_ml[part * 2 + 1] = l_run;
    }
}

// Launch: global (WG * B * Sq * Hq), local WG; work-group index = (b * Sq + i) * Hq + h.
__kernel void mla_combine(__global const float *ws_o, __global const float *ws_ml,
                          __global store_t *o, __global float *lse, int Sq, int Hq, int Hkv,
                          int Dv, int n_splits) {
    const int lid = get_local_id(0);
    const int wg = get_local_size(0);
    const int row = get_group_id(0);
    const int h = row % Hq, i = (row / Hq) % Sq, b = row / (Hq * Sq);
    const int group = Hq / Hkv;
    const int g = h / group, r = i * group + h % group;
    const size_t part0 = (((size_t)b * Hkv + g) * group * Sq + r) * n_splits;
    float m = -INFINITY;
    for (int s = 0; s < n_splits; ++s) m = fmax(m, ws_ml[(part0 + s) * 2]);
    float l = 0.0f;
    if (m != -INFINITY) {
        for (int s = 0; s < n_splits; ++s) {
            l += ws_ml[(part0 + s) * 2 + 1] * exp(ws_ml[(part0 + s) * 2] - m);
        }
    }
    FOR_STRIDED(d, Dv) {
        float acc = 0.0f;
        if (m != -INFINITY) {
            for (int s = 0; s < n_splits; ++s) {
                acc += ws_o[(part0 + s) * Dv + d] * exp(ws_ml[(part0 + s) * 2] - m);
            }
            acc /= l;
        }
        store_f32(o, (size_t)row * Dv + d, acc);
    } END_STRIDED
    if (lid == 0) lse[((size_t)b * Hq + h) * Sq + i] = m != -INFINITY ? m + log(l) : -INFINITY;
}
