//! FP8 conversions of contract v2, in one place: e4m3fn encode/decode, the power-of-two
//! scale rule, per-128 activation quantization (`fp8_block128`) and the 656-byte FP8 latent
//! cache row (`fp8_ds_v32`).
//!
//! e4m3fn (OCP): 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; largest finite value
//! 448 (0x7E), no infinities, NaN 0x7F/0xFF, 0x80 = -0.0. Encoding rounds the f32 value to
//! nearest, ties to even, and saturates every magnitude beyond 448 (infinities included) to
//! ±448, as DeepSeek's and DeepGEMM's kernels do; decoding is exact.

use half::bf16;

/// The largest finite e4m3fn magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// Value of one code, computed from its fields (exact: every e4m3 value is an f32).
const fn decode_fields(code: u8) -> f32 {
    let exp = ((code >> 3) & 0xF) as u32;
    let man = (code & 0x7) as u32;
    let magnitude = if exp == 0xF && man == 0x7 {
        f32::NAN
    } else if exp == 0 {
        // Subnormal: man * 2^-9.
        man as f32 * (1.0 / 512.0)
    } else {
        // 2^(exp - 7) * (1 + man / 8): re-bias the exponent for f32 (127 - 7 = 120).
        f32::from_bits(((exp + 120) << 23) | (man << 20))
    };
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

const fn decode_table() -> [f32; 256] {
    let mut table = [0.0f32; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = decode_fields(c as u8);
        c += 1;
    }
    table
}

/// The value of every e4m3fn code, indexed by the code (NaN for 0x7F and 0xFF).
pub static E4M3_VALUES: [f32; 256] = decode_table();

/// The value of an e4m3fn code (exact).
#[inline(always)]
pub fn e4m3_decode(code: u8) -> f32 {
    E4M3_VALUES[code as usize]
}

/// The e4m3fn code of `v`: round to nearest, ties to even, from the f32 value; magnitudes
/// beyond 448 (and ±inf) saturate to ±448; NaN gives 0x7F with `v`'s sign bit; -0.0 gives
/// 0x80. f32 subnormals (far below half the smallest e4m3 step, 2^-10) give ±0.
#[inline]
pub fn e4m3_encode(v: f32) -> u8 {
    let bits = v.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs = bits & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        return sign | 0x7F;
    }
    if abs == 0x7F80_0000 {
        return sign | 0x7E;
    }
    let biased = (abs >> 23) as i32;
    if biased == 0 {
        return sign;
    }
    let e = biased - 127;
    // |v| = sig * 2^(e - 23) with a 24-bit significand.
    let sig = (abs & 0x7F_FFFF) | 0x80_0000;
    // Dropped bits: down to e4m3's step in this binade, 2^(e - 3) for normals (e >= -6),
    // the subnormal step 2^-9 below. Beyond 25 bits everything rounds to 0 anyway.
    let shift: u32 = if e >= -6 { 20 } else { (14 - e).min(25) as u32 };
    let kept = sig >> shift;
    let rem = sig & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let q = kept + u32::from(rem > half || (rem == half && kept & 1 == 1));
    if e < -6 {
        // Subnormal range: q in 0..=8, and 8 is the code of the smallest normal (0x08).
        return sign | q as u8;
    }
    // Normal range: q in 8..=16; 16 carries into the next binade.
    let (e, man) = if q == 16 { (e + 1, 0) } else { (e, q - 8) };
    if e > 8 || (e == 8 && man == 7) {
        return sign | 0x7E;
    }
    sign | (((e + 7) as u8) << 3) | man as u8
}

/// `2^ceil(log2 s)`, exactly, from the f32 bits of `s >= 0` (no floating-point log2):
/// a power of two stays itself, anything else goes up to the next power of two. Zero gives
/// zero; infinities and NaN are returned as they are (as is a value whose next power of two
/// overflows: infinity).
#[inline]
pub fn pow2_ceil(s: f32) -> f32 {
    let bits = s.to_bits() & 0x7FFF_FFFF;
    let exp = bits >> 23;
    let man = bits & 0x7F_FFFF;
    if exp == 0xFF || bits == 0 {
        return s;
    }
    if exp == 0 {
        // Subnormal: man * 2^-149; the next power of two of man, at the same scale (1 << 23
        // is the smallest normal, 2^-126).
        return f32::from_bits(man.next_power_of_two());
    }
    f32::from_bits((exp + u32::from(man != 0)) << 23)
}

/// How `fp8_block128` activation scales are formed (contract v2 `activation_scale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleMode {
    /// `sc = amax / 448` as computed in f32.
    F32,
    /// `sc` rounded up to a power of two ([`pow2_ceil`]; DeepGEMM's UE8M0 scales).
    Ue8m0,
}

/// Elements per activation quantization group and per FP8 weight block side.
pub const BLOCK: usize = 128;

/// Contract v2 `fp8_block128` activation quantization of one row, in place: per group of
/// 128 elements (the last one partial), `amax = max(max|v|, 1e-4)`, `sc = amax / 448`
/// (f32; [`ScaleMode::Ue8m0`]: `2^ceil(log2 sc)`), `v = e4m3(v / sc) * sc`. A NaN element
/// stays NaN (its code is NaN); infinities saturate to ±448 sc (amax infinite: NaN).
pub fn quantize_activation_row(row: &mut [f32], mode: ScaleMode) {
    for group in row.chunks_mut(BLOCK) {
        let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-4);
        let mut sc = amax / E4M3_MAX;
        if mode == ScaleMode::Ue8m0 {
            sc = pow2_ceil(sc);
        }
        for v in group.iter_mut() {
            *v = e4m3_decode(e4m3_encode(*v / sc)) * sc;
        }
    }
}

/// Bytes of one `fp8_ds_v32` cache row: 512 e4m3 codes, 4 f32 scales, 64 bf16 rope values.
pub const DS_V32_ROW_BYTES: usize = 656;
/// Width of a row once dequantized (`Dqk`): 512 latent + 64 rope dims.
pub const DS_V32_DIM: usize = 576;
/// Latent (quantized) dims of a row; also `Dv`.
pub const DS_V32_LATENT: usize = 512;
/// Rope dims of a row (stored as bf16).
pub const DS_V32_ROPE: usize = 64;
/// Latent dims per scale.
pub const DS_V32_TILE: usize = 128;
/// Byte offset of the four little-endian f32 scales.
const SCALES_AT: usize = DS_V32_LATENT;
/// Byte offset of the 64 little-endian bf16 rope values.
const ROPE_AT: usize = DS_V32_LATENT + 4 * (DS_V32_LATENT / DS_V32_TILE);

/// Writes one `fp8_ds_v32` row from finite values, as `mla_kv_quantize` specifies: per
/// 128-dim tile `amax = max|x|`, `sc = max(amax / 448, 1e-4)` (f32), `sc = 2^ceil(log2 sc)`
/// (exact, [`pow2_ceil`]), codes `e4m3(x / sc)` (-0.0 encodes as 0x80); rope dims as bf16,
/// rounded to nearest even.
pub fn quantize_ds_v32_row(kv: &[f32; DS_V32_DIM], row: &mut [u8; DS_V32_ROW_BYTES]) {
    let (latent, rope) = kv.split_at(DS_V32_LATENT);
    for (t, tile) in latent.chunks_exact(DS_V32_TILE).enumerate() {
        let amax = tile.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let sc = pow2_ceil((amax / E4M3_MAX).max(1e-4));
        let codes = &mut row[t * DS_V32_TILE..(t + 1) * DS_V32_TILE];
        for (c, &v) in codes.iter_mut().zip(tile) {
            *c = e4m3_encode(v / sc);
        }
        row[SCALES_AT + 4 * t..SCALES_AT + 4 * t + 4].copy_from_slice(&sc.to_le_bytes());
    }
    for (r, &v) in rope.iter().enumerate() {
        let b = bf16::from_f32(v).to_bits();
        row[ROPE_AT + 2 * r..ROPE_AT + 2 * r + 2].copy_from_slice(&b.to_le_bytes());
    }
}

/// The four f32 tile scales of an `fp8_ds_v32` row, as stored.
#[inline]
pub fn ds_v32_scales(row: &[u8; DS_V32_ROW_BYTES]) -> [f32; 4] {
    std::array::from_fn(|t| {
        let at = SCALES_AT + 4 * t;
        f32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]])
    })
}

/// Dequantizes one `fp8_ds_v32` row: `K[d] = e4m3(byte d) * scale[d / 128]` (the stored f32
/// scale, whatever it is) for d < 512, `K[512 + r] = rope[r]`. Any bytes are accepted: NaN
/// codes or scales give NaN values.
#[inline]
pub fn dequantize_ds_v32_row(row: &[u8; DS_V32_ROW_BYTES], kv: &mut [f32; DS_V32_DIM]) {
    let scales = ds_v32_scales(row);
    let (latent, rope) = kv.split_at_mut(DS_V32_LATENT);
    for (t, tile) in latent.chunks_exact_mut(DS_V32_TILE).enumerate() {
        let sc = scales[t];
        let codes = &row[t * DS_V32_TILE..(t + 1) * DS_V32_TILE];
        for (v, &c) in tile.iter_mut().zip(codes) {
            *v = e4m3_decode(c) * sc;
        }
    }
    for (r, v) in rope.iter_mut().enumerate() {
        let at = ROPE_AT + 2 * r;
        *v = f32::from_bits(u32::from(u16::from_le_bytes([row[at], row[at + 1]])) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// e4m3fn value of a code from the format's definition, in f64 (NaN for 0x7F/0xFF).
    fn reference_value(code: u8) -> f64 {
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let (e, m) = (((code >> 3) & 0xF) as i32, (code & 7) as f64);
        if e == 15 && m == 7.0 {
            return f64::NAN;
        }
        if e == 0 {
            return sign * m / 8.0 * 2f64.powi(-6);
        }
        sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)
    }

    /// The non-negative finite codes 0x00..=0x7E in increasing value.
    fn positive_codes() -> Vec<u8> {
        (0u8..=0x7E).collect()
    }

    /// Nearest-even reference encoder: search the 127 non-negative values in f64.
    fn reference_encode(v: f32) -> u8 {
        if v.is_nan() {
            return if v.is_sign_negative() { 0xFF } else { 0x7F };
        }
        let sign = if v.is_sign_negative() { 0x80 } else { 0 };
        let a = (v as f64).abs();
        if a >= 448.0 {
            return sign | 0x7E;
        }
        let codes = positive_codes();
        let hi = codes.partition_point(|&c| reference_value(c) < a);
        let c_hi = codes[hi];
        if reference_value(c_hi) == a || hi == 0 {
            return sign | c_hi;
        }
        let c_lo = codes[hi - 1];
        let (d_lo, d_hi) = (a - reference_value(c_lo), reference_value(c_hi) - a);
        let pick = if d_lo < d_hi {
            c_lo
        } else if d_hi < d_lo {
            c_hi
        } else if c_lo.is_multiple_of(2) {
            c_lo
        } else {
            c_hi
        };
        sign | pick
    }

    #[test]
    fn every_code_decodes_exactly() {
        for code in 0..=255u8 {
            let (got, want) = (e4m3_decode(code), reference_value(code));
            if want.is_nan() {
                assert!(got.is_nan(), "{code:#04x}");
                assert!(code == 0x7F || code == 0xFF);
            } else {
                assert_eq!(got as f64, want, "{code:#04x}");
                assert_eq!(got.is_sign_negative(), code & 0x80 != 0, "{code:#04x}");
            }
        }
        assert_eq!(e4m3_decode(0x7E), 448.0);
        assert_eq!(e4m3_decode(0xFE), -448.0);
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_decode(0x80).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn every_finite_code_round_trips() {
        for code in (0..=255u8).filter(|&c| c & 0x7F != 0x7F) {
            assert_eq!(e4m3_encode(e4m3_decode(code)), code, "{code:#04x}");
        }
    }

    #[test]
    fn ties_between_neighbours_go_to_the_even_code() {
        let codes = positive_codes();
        for pair in codes.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            // Midpoints have 5 significant bits: exact in f32.
            let mid = ((reference_value(lo) + reference_value(hi)) / 2.0) as f32;
            assert_eq!(mid as f64 * 2.0, reference_value(lo) + reference_value(hi));
            let even = if lo.is_multiple_of(2) { lo } else { hi };
            assert_eq!(e4m3_encode(mid), even, "tie {lo:#04x}/{hi:#04x}");
            assert_eq!(e4m3_encode(-mid), 0x80 | even, "-tie {lo:#04x}/{hi:#04x}");
            assert_eq!(
                e4m3_encode(mid.next_down()),
                lo,
                "below {lo:#04x}/{hi:#04x}"
            );
            assert_eq!(e4m3_encode(mid.next_up()), hi, "above {lo:#04x}/{hi:#04x}");
        }
    }

    #[test]
    fn zeros_overflow_infinities_and_nan() {
        assert_eq!(e4m3_encode(0.0), 0x00);
        assert_eq!(e4m3_encode(-0.0), 0x80);
        assert_eq!(e4m3_encode(f32::from_bits(1)), 0x00);
        assert_eq!(e4m3_encode(-f32::MIN_POSITIVE), 0x80);
        // Half the smallest step ties to 0 (even); 1.5 steps tie to 2 steps.
        assert_eq!(e4m3_encode(2f32.powi(-10)), 0x00);
        assert_eq!(e4m3_encode(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(e4m3_encode(448.0), 0x7E);
        // 464 is the midpoint of 448 and 480 (not a value): ties to 448's even code.
        assert_eq!(e4m3_encode(464.0), 0x7E);
        for v in [465.0f32, 480.0, 1e6, f32::MAX, f32::INFINITY] {
            assert_eq!(e4m3_encode(v), 0x7E, "{v}");
            assert_eq!(e4m3_encode(-v), 0xFE, "-{v}");
        }
        assert_eq!(e4m3_encode(f32::NAN), 0x7F);
        assert_eq!(e4m3_encode(-f32::NAN), 0xFF);
    }

    #[test]
    fn encoding_matches_a_nearest_even_search_across_all_f32_binades() {
        // Every 4099th f32 bit pattern (~1M values over every exponent), both signs.
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(4099) {
            let v = f32::from_bits(bits);
            assert_eq!(e4m3_encode(v), reference_encode(v), "{v:e} ({bits:#010x})");
            bits = next;
        }
    }

    #[test]
    fn pow2_ceil_is_exact_from_the_bits() {
        assert_eq!(pow2_ceil(1.0), 1.0);
        assert_eq!(pow2_ceil(0.75), 1.0);
        assert_eq!(pow2_ceil(2f32.powi(-20)), 2f32.powi(-20));
        // 2^k (1 + 2^-23): a float log2 rounds it to k; the exact answer is 2^(k+1).
        assert_eq!(pow2_ceil(2f32.powi(-10).next_up()), 2f32.powi(-9));
        // 1e-4 = 1.6384 * 2^-14.
        assert_eq!(pow2_ceil(1e-4), 2f32.powi(-13));
        assert_eq!(pow2_ceil(f32::from_bits(3)), f32::from_bits(4));
        assert_eq!(pow2_ceil(f32::from_bits(0x7F_FFFF)), f32::MIN_POSITIVE);
        assert_eq!(pow2_ceil(f32::MAX), f32::INFINITY);
        assert_eq!(pow2_ceil(0.0), 0.0);
        assert!(pow2_ceil(f32::NAN).is_nan());
    }

    #[test]
    fn activation_groups_are_quantized_per_128_with_both_scale_modes() {
        // Group 0: amax 3.5 (sc = 3.5/448 = 2^-7 exactly); group 1 (partial, 2 elements):
        // amax 0.3.
        let mut row: Vec<f32> = (0..130).map(|i| (i as f32 - 64.0) / 128.0 * 7.0).collect();
        row[129] = 0.3;
        row[128] = -0.1;
        let orig = row.clone();
        quantize_activation_row(&mut row, ScaleMode::F32);
        let sc0 = 3.5f32 / 448.0;
        for i in 0..128 {
            let want = e4m3_decode(e4m3_encode(orig[i] / sc0)) * sc0;
            assert_eq!(row[i], want, "{i}");
        }
        let sc1 = 0.3f32 / 448.0;
        assert_eq!(row[129], e4m3_decode(e4m3_encode(0.3 / sc1)) * sc1);
        assert_eq!(row[128], e4m3_decode(e4m3_encode(-0.1 / sc1)) * sc1);

        let mut ue = orig.clone();
        quantize_activation_row(&mut ue, ScaleMode::Ue8m0);
        let sc1 = pow2_ceil(0.3f32 / 448.0);
        assert_eq!(sc1, 2f32.powi(-10));
        assert_eq!(ue[129], e4m3_decode(e4m3_encode(0.3 / sc1)) * sc1);
        // An all-zero group uses the 1e-4 floor and stays zero.
        let mut zeros = vec![0.0f32; 5];
        quantize_activation_row(&mut zeros, ScaleMode::F32);
        assert_eq!(zeros, vec![0.0; 5]);
    }

    fn row_bytes(kv: &[f32; DS_V32_DIM]) -> [u8; DS_V32_ROW_BYTES] {
        let mut row = [0u8; DS_V32_ROW_BYTES];
        quantize_ds_v32_row(kv, &mut row);
        row
    }

    #[test]
    fn ds_v32_rows_hold_codes_power_of_two_scales_and_bf16_rope() {
        let mut kv = [0.0f32; DS_V32_DIM];
        // Tile 0 all zero but one -0.0; tile 1 amax exactly 448 (scale 1); tile 2 amax
        // 448 * 2^-3 * (1 + 2^-23) (scale must round up to 2^-2); tile 3 small values.
        kv[5] = -0.0;
        kv[128] = 448.0;
        kv[129] = -3.3;
        kv[256] = (56.0f32).next_up();
        kv[257] = 1.0;
        kv[384] = 1e-3;
        kv[512] = 1.0 + 2f32.powi(-8); // a bf16 tie: rounds to 1.0
        kv[513] = -2.5;
        let row = row_bytes(&kv);
        assert_eq!(
            ds_v32_scales(&row),
            [2f32.powi(-13), 1.0, 0.25, 2f32.powi(-13)]
        );
        assert_eq!(row[0], 0x00);
        assert_eq!(row[5], 0x80);
        assert_eq!(row[128], 0x7E);
        assert_eq!(row[129], e4m3_encode(-3.3));
        assert_eq!(row[256], e4m3_encode(56.0f32.next_up() / 0.25));
        assert_eq!(row[257], e4m3_encode(4.0));
        assert_eq!(row[384], e4m3_encode(1e-3 / 2f32.powi(-13)));
        assert_eq!(&row[528..530], &bf16::from_f32(1.0).to_bits().to_le_bytes());
        assert_eq!(
            &row[530..532],
            &bf16::from_f32(-2.5).to_bits().to_le_bytes()
        );

        let mut back = [0.0f32; DS_V32_DIM];
        dequantize_ds_v32_row(&row, &mut back);
        assert_eq!(back[128], 448.0);
        assert_eq!(back[129], e4m3_decode(e4m3_encode(-3.3)));
        assert_eq!(back[257], 1.0);
        assert_eq!(back[512], 1.0);
        assert_eq!(back[513], -2.5);
        assert_eq!(back[5].to_bits(), (-0.0f32 * 2f32.powi(-13)).to_bits());
    }

    #[test]
    fn ds_v32_dequantize_multiplies_by_any_stored_scale() {
        let mut row = [0u8; DS_V32_ROW_BYTES];
        row[0] = 0x7E; // 448
        row[200] = 0x38; // 1.0
        row[300] = 0x7F; // NaN code
        let scales = [1.1f32, 0.3, f32::NAN, 3.0];
        for (t, s) in scales.iter().enumerate() {
            row[512 + 4 * t..516 + 4 * t].copy_from_slice(&s.to_le_bytes());
        }
        let mut kv = [0.0f32; DS_V32_DIM];
        dequantize_ds_v32_row(&row, &mut kv);
        assert_eq!(kv[0], 448.0 * 1.1f32);
        assert_eq!(kv[200], 0.3);
        assert!(kv[300].is_nan() && kv[256].is_nan());
        assert_eq!(kv[400], 0.0);
    }
}
