// dsa_indexer_topk: DeepSeek-V3.2's lightning indexer and its top-k over a paged cache.
//
// indexer_scores: one work-item per (cache position p, query row r = b * Sq + i) scores
// score(p) = sum_h w[r, h] * max(0, q[r, h] . k_p) (f32) for p < L (L = seqlen, or
// seqlen - Sq + i + 1 when causal) and writes its selection key (score_key of moe_route.cl:
// order preserving, NaN as -inf) into keys[r, p]; positions outside [0, L) get key 0,
// below every score's. The top k of each row's keys are then chosen and ordered best first
// by moe_route.cl's select, compact and rank/radix kernels (ties to the lower position);
// indexer_write turns them into flat cache slots and scores, -1 / -inf where the chosen
// key is 0 (fewer than top_k positions).
//
// Index checks (flag slots, backends/opencl/src/flags.rs): a seqlen outside
// [0, max_blocks * block_size] flags its batch (which then scores nothing); a block-table
// entry covering a position < seqlen and outside [0, num_blocks) flags its row-major
// position and is not used.

// The order-preserving key of a score (as moe_route.cl's score_key).
inline uint indexer_key(float v) {
    if (isnan(v)) v = -INFINITY;
    if (v == 0.0f) v = 0.0f;  // -0 ties with +0
    const uint u = as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Launch: global (ceil(cap / LS) * LS, B * Sq), local (LS, 1).
__kernel void indexer_scores(__global const store_t *q, __global const float *weights,
                             __global const store_t *k_cache, __global const int *block_table,
                             __global const int *cache_seqlens,
                             volatile __global int *seq_flags, int seq_slot,
                             volatile __global int *table_flags, int table_slot, int Sq,
                             int Hi, int Di, int num_blocks, int block_size, int max_blocks,
                             int causal, int cap, __global float *scores,
                             __global uint *keys) {
    const int p = get_global_id(0), r = get_global_id(1);
    if (p >= cap) return;
    const int b = r / Sq, i = r % Sq;
    int seqlen = cache_seqlens[b];
    if (seqlen < 0 || seqlen > cap) {
        if (p == 0) flag_bad_index(seq_flags, seq_slot, b);
        seqlen = 0;
    }
    const int len = causal ? seqlen - Sq + i + 1 : seqlen;
    float score = -INFINITY;
    uint key = 0u;
    if (p < seqlen) {
        const int j = b * max_blocks + p / block_size;
        const int blk = block_table[j];
        if (blk < 0 || blk >= num_blocks) {
            if (p % block_size == 0) flag_bad_index(table_flags, table_slot, j);
        } else if (p < len) {
            __global const store_t *k = k_cache + ((size_t)blk * block_size + p % block_size) * Di;
            __global const store_t *qr = q + (size_t)r * Hi * Di;
            score = 0.0f;
            for (int h = 0; h < Hi; ++h) {
                float dot = 0.0f;
                for (int d = 0; d < Di; ++d) dot += load_f32(qr, h * Di + d) * load_f32(k, d);
                score += weights[(size_t)r * Hi + h] * fmax(dot, 0.0f);
            }
            key = indexer_key(score);
        }
    }
    scores[(size_t)r * cap + p] = score;
    keys[(size_t)r * cap + p] = key;
}

// Launch: global (ceil(top_k / LS) * LS, B * Sq), local (LS, 1). pairs: per row 2 * k_sel
// (key, position) pairs, the best first at sorted_at.
__kernel void indexer_write(__global const uint2 *pairs, int k_sel, int sorted_at,
                            __global const float *scores, int cap,
                            __global const int *block_table, int max_blocks,
                            int block_size, int Sq, int top_k, __global int *topk_indices,
                            __global float *topk_scores) {
    const int j = get_global_id(0), r = get_global_id(1);
    if (j >= top_k) return;
    int slot = -1;
    float score = -INFINITY;
    if (j < k_sel) {
        const uint2 pr = pairs[(size_t)r * 2 * k_sel + sorted_at + j];
        if (pr.x != 0u) {
            const int p = (int)pr.y, b = r / Sq;
            slot = block_table[b * max_blocks + p / block_size] * block_size + p % block_size;
            score = scores[(size_t)r * cap + p];
        }
    }
    topk_indices[(size_t)r * top_k + j] = slot;
    topk_scores[(size_t)r * top_k + j] = score;
}
