// moe_experts: permute -> grouped SwiGLU GEMMs -> weighted combine, all on the device.
//
// 1. experts_plan (one work-group): checks every id against [-1, E) (bad ones raise the
//    error flag and are skipped), counts pairs per expert, prefix-sums the counts padded to
//    TILE rows, and scatters each expert's (token, slot) pairs in pair order, so the result
//    does not depend on scheduling. Padded rows hold -1.
// 2. experts_gate_up: per TILE-row block of one expert, act = silu(x W1^T) * (x W3^T).
// 3. experts_down: out = act W2^T for the same blocks.
// 4. experts_combine: y[t] = sum over slots j, in slot order, of w[t, j] * out[row(t, j)];
//    no float atomics.

#define TILE 16

__kernel void experts_plan(__global const int *topk_ids, int n_pairs, int E,
                           volatile __global int *bad_index, __global int *block_expert,
                           int n_blocks, __global int *rows, __global int *pair_row,
                           volatile __local int *counts, __local int *starts) {
    const int lid = get_local_id(0);
    const int ls = get_local_size(0);
    FOR_STRIDED(e, E) { counts[e] = 0; } END_STRIDED
    barrier(CLK_LOCAL_MEM_FENCE);
    FOR_STRIDED(n, n_pairs) {
        const int id = topk_ids[n];
        if (id < -1 || id >= E) {
            flag_bad_index(bad_index, n);
        } else if (id >= 0) {
            atomic_inc(&counts[id]);
        }
        pair_row[n] = -1;
    } END_STRIDED
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    if (lid == 0) {
        for (int b = 0; b < n_blocks; ++b) block_expert[b] = -1;
        int start = 0;
        for (int e = 0; e < E; ++e) {
            starts[e] = start;
            const int padded = (counts[e] + TILE - 1) / TILE * TILE;
            for (int b = start / TILE; b < (start + padded) / TILE; ++b) block_expert[b] = e;
            start += padded;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    FOR_STRIDED(e, E) {
        int r = starts[e];
        for (int n = 0; n < n_pairs; ++n) {
            if (topk_ids[n] == e) {
                rows[r] = n;
                pair_row[n] = r;
                ++r;
            }
        }
        for (; r % TILE != 0; ++r) rows[r] = -1;
    } END_STRIDED
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

// Launch: global (ceil(H / TILE) * TILE, T), local (TILE, 1).
__kernel void experts_combine(__global const float *out, __global const int *pair_row,
                              __global const float *topk_weights, __global store_t *y, int H,
                              int k) {
    const int h = get_global_id(0), t = get_global_id(1);
    if (h >= H) return;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
        const int r = pair_row[t * k + j];
        const float w = topk_weights[t * k + j];
        // A slot with weight 0 (+0 or -0) or id -1 contributes nothing (never 0 * NaN).
        if (r >= 0 && w != 0.0f) acc += w * out[(size_t)r * H + h];
    }
    store_f32(y, (size_t)t * H + h, acc);
}
