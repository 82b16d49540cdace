// FP8 helpers of contract v2 (prepended to every v2 program after common.cl).
//
// e4m3fn (OCP): sign, 4 exponent bits (bias 7), 3 mantissa bits; largest finite 448 (0x7E),
// no infinities, NaN 0x7F/0xFF, 0x80 = -0.0. Decoding is exact (bit arithmetic); encoding
// rounds the f32 value to nearest, ties to even, and saturates magnitudes beyond 448 (and
// infinities) to +-448; NaN encodes as 0x7F with its sign.

#define E4M3_MAX 448.0f

// The value of an e4m3fn code (exact).
inline float e4m3_decode(uint code) {
    const uint e = (code >> 3) & 15u, m = code & 7u;
    uint bits;
    if (e == 15u && m == 7u) {
        bits = 0x7FC00000u;
    } else if (e == 0u) {
        bits = as_uint((float)m * 0.001953125f);  // m * 2^-9, exact
    } else {
        bits = ((e + 120u) << 23) | (m << 20);  // rebias 7 -> 127
    }
    return as_float(bits | ((code & 0x80u) << 24));
}

// The e4m3fn code of v: round to nearest even, saturating to +-448.
inline uint e4m3_encode(float v) {
    const uint bits = as_uint(v);
    const uint sign = (bits >> 24) & 0x80u;
    const uint a = bits & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7Fu;
    if (a >= 0x43E00000u) return sign | 0x7Eu;  // >= 448 (incl. inf): saturate
    const int biased = (int)(a >> 23);
    if (biased == 0) return sign;  // f32 subnormals are far below 2^-10
    const int e = biased - 127;
    const uint sig = (a & 0x7FFFFFu) | 0x800000u;
    // Keep 3 mantissa bits for normals (e >= -6); the subnormal step is 2^-9 below.
    const uint shift = e >= -6 ? 20u : (uint)min(14 - e, 25);
    const uint kept = sig >> shift;
    const uint rem = sig & ((1u << shift) - 1u);
    const uint half_ulp = 1u << (shift - 1u);
    const uint q = kept + (rem > half_ulp || (rem == half_ulp && (kept & 1u)));
    if (e < -6) return sign | q;  // q in 0..8; 8 is the smallest normal, 0x08
    // q in 8..16: 16 carries into the next binade.
    const int ee = q == 16u ? e + 1 : e;
    const uint man = q == 16u ? 0u : q - 8u;
    if (ee > 8 || (ee == 8 && man == 7u)) return sign | 0x7Eu;
    return sign | ((uint)(ee + 7) << 3) | man;
}

// 2^ceil(log2 s) for finite s >= 0, exactly from the bits (0 stays 0).
inline float pow2_ceil(float s) {
    const uint b = as_uint(s) & 0x7FFFFFFFu;
    const uint e = b >> 23, m = b & 0x7FFFFFu;
    if (e == 0xFFu || b == 0u) return s;
    if (e == 0u) {
        // Subnormal: the next power of two of the mantissa at the same scale.
        uint p = 1u;
        while (p < m) p <<= 1;
        return as_float(p);
    }
    return as_float((e + (m != 0u)) << 23);
}

// fp8_ds_v32 rows: 512 e4m3 codes, four little-endian f32 tile scales, 64 little-endian
// bf16 rope values (656 bytes).
#define DS_ROW 656
#define DS_LATENT 512
#define DS_SCALES 512
#define DS_ROPE 528

// Little-endian f32 at byte `at` of `p`.
inline float load_le_f32(__global const uchar *p, size_t at) {
    return as_float((uint)p[at] | ((uint)p[at + 1] << 8) | ((uint)p[at + 2] << 16) |
                    ((uint)p[at + 3] << 24));
}

// Dimension d (< 576) of fp8_ds_v32 row `row`, dequantized with its stored scale.
inline float ds_v32_load(__global const uchar *cache, size_t row, int d) {
    __global const uchar *r = cache + row * DS_ROW;
    if (d < DS_LATENT) return e4m3_decode(r[d]) * load_le_f32(r, DS_SCALES + 4 * (d >> 7));
    const int at = DS_ROPE + 2 * (d - DS_LATENT);
    return as_float(((uint)r[at] | ((uint)r[at + 1] << 8)) << 16);
}

// Cache rows as the attention kernels read them: KV_FP8 selects fp8_ds_v32 rows (row width
// D is then 576), otherwise rows of D run-dtype values.
#ifdef KV_FP8
typedef uchar kv_t;
#define LOAD_KV(p, row, D, d) ds_v32_load((p), (row), (d))
#else
typedef store_t kv_t;
#define LOAD_KV(p, row, D, d) load_f32((p), (size_t)(row) * (D) + (d))
#endif
