// moe_experts: permute -> grouped SwiGLU GEMMs -> weighted combine, all on the device.
//
// A pair is one (token, slot) of topk_ids. A pair is computed when its id is in [0, E) and
// its weight is not 0 (+0 or -0): a slot with id -1 or weight 0 contributes nothing, even
// when its expert's output would be NaN or inf.
// 1. experts_count (one work-item per pair): checks every id against [-1, E) (bad ones
//    raise the error flag and are skipped), counts the computed pairs per expert (global
//    atomics) and marks every pair as having no row.
// 2. experts_offsets (one work-group): prefix-sums the counts padded to TILE rows, turns
//    each count into its expert's first row, and names the expert of each TILE-row block.
// 3. experts_scatter (one work-item per pair): each computed pair takes the next row of its
//    expert. The order of rows within an expert depends on scheduling; the results do not
//    (every row is computed on its own). Rows no pair took hold -1 (the host fills them).
// 4. experts_gate_up: per TILE-row block of one expert, act = silu(x W1^T) * (x W3^T).
// 5. experts_down: out = act W2^T for the same blocks.
// 6. With S shared experts (dense, every token, weight 1): experts_shared_gate_up and
//    experts_shared_down compute each shared expert's output for every token, [S, T, H].
// 7. experts_combine: y[t] = sum over computed slots j, in slot order, of
//    w[t, j] * out[row(t, j)], then + shared[s, t] for s = 0..S-1, in f32, rounded to the
//    run dtype once; no float atomics.
// Nothing is sized by E but the counts (global memory): any E the ints index runs.

#define TILE 16

// Whether pair n is computed (its id is valid and its weight not zero).
inline int computed(int id, int E, float weight) {
    return id >= 0 && id < E && weight != 0.0f;
}

// Launch: global n_pairs rounded up to the work-group, any work-group.
__kernel void experts_count(__global const int *topk_ids, __global const float *topk_weights,
                            int n_pairs, int E, volatile __global int *flags, int flag_slot,
                            volatile __global int *counts, __global int *pair_row) {
    const int n = get_global_id(0);
    if (n >= n_pairs) return;
    const int id = topk_ids[n];
    pair_row[n] = -1;
    if (id < -1 || id >= E) {
        flag_bad_index(flags, flag_slot, n);
    } else if (computed(id, E, topk_weights[n])) {
        atomic_inc(&counts[id]);
    }
}

// Launch: one work-group. counts[e] becomes the first row of expert e; block_expert[b] the
// expert of block b (blocks past the last used one keep the host's -1).
__kernel void experts_offsets(__global int *counts, int E, __global int *block_expert,
                              __local uint *scan) {
    uint mine = 0u;
    FOR_CHUNK(e, E) { mine += (counts[e] + TILE - 1) / TILE * TILE; } END_CHUNK
    uint rows;
    int start = (int)wg_scan(scan, mine, &rows);
    FOR_CHUNK(e, E) {
        const int padded = (counts[e] + TILE - 1) / TILE * TILE;
        for (int b = start / TILE; b < (start + padded) / TILE; ++b) block_expert[b] = e;
        counts[e] = start;
        start += padded;
    } END_CHUNK
}

// Launch: as experts_count, after experts_offsets.
__kernel void experts_scatter(__global const int *topk_ids, __global const float *topk_weights,
                              int n_pairs, int E, volatile __global int *cursor,
                              __global int *rows, __global int *pair_row) {
    const int n = get_global_id(0);
    if (n >= n_pairs) return;
    const int id = topk_ids[n];
    if (computed(id, E, topk_weights[n])) {
        const int r = atomic_inc(&cursor[id]);
        rows[r] = n;
        pair_row[n] = r;
    }
}

inline float silu(float g) { return g / (1.0f + exp(-g)); }

// Launch: global (ceil(I / TILE) * TILE, n_blocks * TILE), local (TILE, TILE).
__kernel void experts_gate_up(__global const store_t *x, __global const store_t *w13,
                              __global const int *rows, __global const int *block_expert,
                              __global float *act, int H, int I, int k) {
    __local float xs[TILE][TILE + 1];
    __local float gs[TILE][TILE + 1];
    __local float us[TILE][TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int e = block_expert[get_group_id(1)];
    if (e < 0) return;  // uniform over the work-group: a block past the last expert
    const int r = get_group_id(1) * TILE + ly;
    const int n = rows[r];
    const int t = n >= 0 ? n / k : -1;
    const int col0 = get_group_id(0) * TILE;
    const int wrow = col0 + ly;  // the weight row this work-item loads
    __global const store_t *gate = w13 + ((size_t)e * 2 * I + wrow) * H;
    __global const store_t *up = w13 + ((size_t)e * 2 * I + I + wrow) * H;
    float acc_g = 0.0f, acc_u = 0.0f;
    for (int h0 = 0; h0 < H; h0 += TILE) {
        const int h = h0 + lx;
        const int in_h = h < H;
        xs[ly][lx] = (t >= 0 && in_h) ? load_f32(x, (size_t)t * H + h) : 0.0f;
        gs[ly][lx] = (wrow < I && in_h) ? load_f32(gate, h) : 0.0f;
        us[ly][lx] = (wrow < I && in_h) ? load_f32(up, h) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) {
            acc_g += xs[ly][kk] * gs[lx][kk];
            acc_u += xs[ly][kk] * us[lx][kk];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int c = col0 + lx;
    if (c < I) act[(size_t)r * I + c] = n >= 0 ? silu(acc_g) * acc_u : 0.0f;
}

// Launch: global (ceil(H / TILE) * TILE, n_blocks * TILE), local (TILE, TILE).
__kernel void experts_down(__global const float *act, __global const store_t *w2,
                           __global const int *block_expert, __global float *out, int H,
                           int I) {
    __local float acts[TILE][TILE + 1];
    __local float ws[TILE][TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int e = block_expert[get_group_id(1)];
    if (e < 0) return;  // uniform over the work-group
    const int r = get_group_id(1) * TILE + ly;
    const int col0 = get_group_id(0) * TILE;
    const int wrow = col0 + ly;
    __global const store_t *down = w2 + ((size_t)e * H + wrow) * I;
    float acc = 0.0f;
    for (int i0 = 0; i0 < I; i0 += TILE) {
        const int i = i0 + lx;
        acts[ly][lx] = i < I ? act[(size_t)r * I + i] : 0.0f;
        ws[ly][lx] = (wrow < H && i < I) ? load_f32(down, i) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) acc += acts[ly][kk] * ws[lx][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int c = col0 + lx;
    if (c < H) out[(size_t)r * H + c] = acc;
}

// SwiGLU of gate g and up u, clamped by `limit` when `clamp` (silu(min(g, c)) *
// clamp(u, -c, c); NaN stays NaN: comparisons pass it through).
inline float swiglu(float g, float u, int clamp, float limit) {
    if (clamp) {
        g = g > limit ? limit : g;
        u = u < -limit ? -limit : (u > limit ? limit : u);
    }
    return silu(g) * u;
}

// Shared expert s (of S), every token: act[s, t] = swiglu(x[t] W1_s^T, x[t] W3_s^T).
// sw13 [S, 2Is, H]; act f32 [S, T, Is].
// Launch: global (ceil(Is / TILE) * TILE, S * ceil(T / TILE) * TILE), local (TILE, TILE).
__kernel void experts_shared_gate_up(__global const store_t *x, __global const store_t *sw13,
                                     __global float *act, int T, int H, int Is, int clamp,
                                     float limit) {
    __local float xs[TILE][TILE + 1];
    __local float gs[TILE][TILE + 1];
    __local float us[TILE][TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int t_blocks = (T + TILE - 1) / TILE;
    const int s = get_group_id(1) / t_blocks;
    const int t = get_group_id(1) % t_blocks * TILE + ly;
    const int col0 = get_group_id(0) * TILE;
    const int wrow = col0 + ly;  // the weight row this work-item loads
    __global const store_t *gate = sw13 + ((size_t)s * 2 * Is + wrow) * H;
    __global const store_t *up = sw13 + ((size_t)s * 2 * Is + Is + wrow) * H;
    float acc_g = 0.0f, acc_u = 0.0f;
    for (int h0 = 0; h0 < H; h0 += TILE) {
        const int h = h0 + lx;
        const int in_h = h < H;
        xs[ly][lx] = (t < T && in_h) ? load_f32(x, (size_t)t * H + h) : 0.0f;
        gs[ly][lx] = (wrow < Is && in_h) ? load_f32(gate, h) : 0.0f;
        us[ly][lx] = (wrow < Is && in_h) ? load_f32(up, h) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) {
            acc_g += xs[ly][kk] * gs[lx][kk];
            acc_u += xs[ly][kk] * us[lx][kk];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int c = col0 + lx;
    if (c < Is && t < T) act[((size_t)s * T + t) * Is + c] = swiglu(acc_g, acc_u, clamp, limit);
}

// Shared expert s, every token: out[s, t] = act[s, t] W2_s^T. sw2 [S, H, Is]; out f32
// [S, T, H]. Launch: global (ceil(H / TILE) * TILE, S * ceil(T / TILE) * TILE), local
// (TILE, TILE).
__kernel void experts_shared_down(__global const float *act, __global const store_t *sw2,
                                  __global float *out, int T, int H, int Is) {
    __local float acts[TILE][TILE + 1];
    __local float ws[TILE][TILE + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int t_blocks = (T + TILE - 1) / TILE;
    const int s = get_group_id(1) / t_blocks;
    const int t = get_group_id(1) % t_blocks * TILE + ly;
    const int col0 = get_group_id(0) * TILE;
    const int wrow = col0 + ly;
    __global const store_t *down = sw2 + ((size_t)s * H + wrow) * Is;
    float acc = 0.0f;
    for (int i0 = 0; i0 < Is; i0 += TILE) {
        const int i = i0 + lx;
        acts[ly][lx] = (t < T && i < Is) ? act[((size_t)s * T + t) * Is + i] : 0.0f;
        ws[ly][lx] = (wrow < H && i < Is) ? load_f32(down, i) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) acc += acts[ly][kk] * ws[lx][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int c = col0 + lx;
    if (c < H && t < T) out[((size_t)s * T + t) * H + c] = acc;
}

// shared: the S shared experts' outputs [S, T, H] (S = 0: none; the buffer is not read).
// Launch: global (ceil(H / TILE) * TILE, T), local (TILE, 1).
__kernel void experts_combine(__global const float *out, __global const int *pair_row,
                              __global const float *topk_weights, __global const float *shared,
                              __global store_t *y, int T, int H, int k, int S) {
    const int h = get_global_id(0), t = get_global_id(1);
    if (h >= H) return;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
        const int r = pair_row[t * k + j];  // -1: not computed, contributes nothing
        if (r >= 0) acc += topk_weights[t * k + j] * out[(size_t)r * H + h];
    }
    for (int s = 0; s < S; ++s) acc += shared[((size_t)s * T + t) * H + h];
    store_f32(y, (size_t)t * H + h, acc);
}
