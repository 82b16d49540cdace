// moe_experts v2: the two GEMMs of moe_experts.cl for FP8 block-scaled weights
// (w8a16), fp8_block128 activation quantization (w8a8) and the SwiGLU clamp. The plan
// (count, offsets, scatter) and the combine are moe_experts.cl's.
//
// 1. experts_x_f32: x [T, H] (run dtype) widened into an f32 workspace.
// 2. experts_quant (w8a8 only, on that workspace): per row and group of 128 elements
//    (the last one partial) amax = max(max|v|, 1e-4), sc = amax / 448 (f32 division;
//    ue8m0: 2^ceil(log2 sc)), v = e4m3(v / sc) * sc.
// 3. experts_gate_up_v2: per TILE-row block of one expert, act = silu(min(g, c)) *
//    clamp(u, -c, c) (c = swiglu_limit when `clamp`, else silu(g) * u) with
//    g, u = x W1^T, x W3^T over the dequantized weights W[e, r, c] = w[e, r, c] *
//    scale[e, r / 128, c / 128] (FP8), or the run-dtype weights.
// 4. experts_quant again on act (w8a8 only), then experts_down_v2: out = act W2^T.
// Weights are passed as bytes and read as e4m3 codes (fp8 = 1) or as store_t.

#define TILE 16
#define QBLOCK 128

// Launch: global n rounded up to the work-group, any work-group.
__kernel void experts_x_f32(__global const store_t *x, __global float *xf, int n) {
    const int i = get_global_id(0);
    if (i < n) xf[i] = load_f32(x, i);
}

// Launch: global rows * ceil(n / 128) rounded up, any work-group: one work-item per
// (row, group) of the [rows, n] f32 matrix v, quantized in place.
__kernel void experts_quant(__global float *v, int rows, int n, int ue8m0) {
    const int groups = (n + QBLOCK - 1) / QBLOCK;
    const int id = get_global_id(0);
    if (id >= rows * groups) return;
    const int r = id / groups, g = id % groups;
    __global float *p = v + (size_t)r * n + g * QBLOCK;
    const int len = min(QBLOCK, n - g * QBLOCK);
    float amax = 0.0f;
    for (int i = 0; i < len; ++i) amax = fmax(amax, fabs(p[i]));
    float sc = fmax(amax, 1e-4f) / E4M3_MAX;
    if (ue8m0) sc = pow2_ceil(sc);
    for (int i = 0; i < len; ++i) p[i] = e4m3_decode(e4m3_encode(p[i] / sc)) * sc;
}

// Element (r, c) of expert e's weight matrix [R, C] (dequantized when fp8; `scale` is
// [E, ceil(R / 128), ceil(C / 128)]).
inline float weight(__global const uchar *w, __global const float *scale, int fp8, int e,
                    int R, int C, int r, int c) {
    const size_t at = ((size_t)e * R + r) * C + c;
    if (!fp8) return load_f32((__global const store_t *)w, at);
    const int sr = (R + QBLOCK - 1) / QBLOCK, sc = (C + QBLOCK - 1) / QBLOCK;
    return e4m3_decode(w[at]) * scale[((size_t)e * sr + r / QBLOCK) * sc + c / QBLOCK];
}

inline float silu(float g) { return g / (1.0f + exp(-g)); }

// Launch: global (ceil(I / TILE) * TILE, n_blocks * TILE), local (TILE, TILE).
__kernel void experts_gate_up_v2(__global const float *xf, __global const uchar *w13,
                                 __global const float *scale13, int fp8,
                                 __global const int *rows, __global const int *block_expert,
                                 __global float *act, int H, int I, int k, int clamp,
                                 float limit) {
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
    float acc_g = 0.0f, acc_u = 0.0f;
    for (int h0 = 0; h0 < H; h0 += TILE) {
        const int h = h0 + lx;
        const int in_w = wrow < I && h < H;
        xs[ly][lx] = (t >= 0 && h < H) ? xf[(size_t)t * H + h] : 0.0f;
        gs[ly][lx] = in_w ? weight(w13, scale13, fp8, e, 2 * I, H, wrow, h) : 0.0f;
        us[ly][lx] = in_w ? weight(w13, scale13, fp8, e, 2 * I, H, I + wrow, h) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) {
            acc_g += xs[ly][kk] * gs[lx][kk];
            acc_u += xs[ly][kk] * us[lx][kk];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int c = col0 + lx;
    if (c >= I) return;
    float a = 0.0f;
    if (n >= 0) {
        if (clamp) {
            // NaN stays NaN (comparisons pass it through).
            const float g = acc_g > limit ? limit : acc_g;
            const float u = acc_u < -limit ? -limit : (acc_u > limit ? limit : acc_u);
            a = silu(g) * u;
        } else {
            a = silu(acc_g) * acc_u;
        }
    }
    act[(size_t)r * I + c] = a;
}

// Launch: global (ceil(H / TILE) * TILE, n_blocks * TILE), local (TILE, TILE).
__kernel void experts_down_v2(__global const float *act, __global const uchar *w2,
                              __global const float *scale2, int fp8,
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
    float acc = 0.0f;
    for (int i0 = 0; i0 < I; i0 += TILE) {
        const int i = i0 + lx;
        acts[ly][lx] = i < I ? act[(size_t)r * I + i] : 0.0f;
        ws[ly][lx] = (wrow < H && i < I) ? weight(w2, scale2, fp8, e, H, I, wrow, i) : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE; ++kk) acc += acts[ly][kk] * ws[lx][kk];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const int c = col0 + lx;
    if (c < H) out[(size_t)r * H + c] = acc;
}
