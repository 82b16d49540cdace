// mla_kv_quantize: latent rows [N, 576] (run dtype) -> fp8_ds_v32 rows [N, 656] (bytes).
//
// One work-group of 128 per row; work-item l owns dims l, 128 + l, 256 + l, 384 + l (one
// per tile) and, for l < 64, rope dim l. Per tile: amax = max|x| (f32), sc =
// 2^ceil(log2 max(amax / 448, 1e-4)) (exact, from the bits), codes = e4m3(x / sc) (exact
// division by a power of two, never saturating; -0.0 gives 0x80); the four scales as
// little-endian f32 at byte 512; the rope as little-endian bf16 (round to nearest even) at
// byte 528. A non-finite input is an input error: the flag slot (flag_bad_index, as for index
// errors) takes the smallest row-major element index holding one, capture_nonfinite then
// copies that value's bits, and the host reports it at the next synchronize.

#define KVQ_LS 128

// Work-item l of a work-group of KVQ_LS writing one fp8_ds_v32 row o from its finite values
// v[t] = x[t * 128 + l] (t < 4) and, for l < 64, rope value r = x[512 + l]. Every
// work-item of the group calls it (barriers). Shared with mla_cache_write.cl.
void ds_write_row(const float *v, float r, __global uchar *o, int l, __local float *red) {
    if (l < 64) {
        const uint u = as_uint(r);
        // bf16, round to nearest even (finite input; a non-finite one is an error anyway).
        const uint b = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        o[DS_ROPE + 2 * l] = (uchar)(b & 0xFFu);
        o[DS_ROPE + 2 * l + 1] = (uchar)(b >> 8);
    }
    for (int t = 0; t < 4; ++t) {
        red[l] = fabs(v[t]);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int n = KVQ_LS / 2; n > 0; n >>= 1) {
            if (l < n) red[l] = fmax(red[l], red[l + n]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        const float sc = pow2_ceil(fmax(red[0] / E4M3_MAX, 1e-4f));
        barrier(CLK_LOCAL_MEM_FENCE);
        o[t * 128 + l] = (uchar)e4m3_encode(v[t] / sc);
        if (l < 4) o[DS_SCALES + 4 * t + l] = (uchar)(as_uint(sc) >> (8 * l));
    }
}

__kernel void kv_quantize(__global const store_t *kv, __global uchar *out, int N,
                          volatile __global int *flags, int flag_slot, __local float *red) {
    const int row = get_group_id(0), l = get_local_id(0);
    __global const store_t *x = kv + (size_t)row * 576;
    float v[4];
    for (int t = 0; t < 4; ++t) {
        v[t] = load_f32(x, t * 128 + l);
        if (!isfinite(v[t])) flag_bad_index(flags, flag_slot, row * 576 + t * 128 + l);
    }
    float r = 0.0f;
    if (l < 64) {
        r = load_f32(x, 512 + l);
        if (!isfinite(r)) flag_bad_index(flags, flag_slot, row * 576 + 512 + l);
    }
    ds_write_row(v, r, out + (size_t)row * DS_ROW, l, red);
}

// After the op's kernels (global 1, local 1): word 1 of flag slot `flag_slot` takes the f32
// bits of the non-finite value at the position word 0 holds (INT_MAX: none, nothing done).
__kernel void capture_nonfinite(__global int *flags, int flag_slot,
                                __global const store_t *values) {
    const int at = flags[2 * flag_slot];
    if (at >= 0 && at != INT_MAX) flags[2 * flag_slot + 1] = as_int(load_f32(values, at));
}
