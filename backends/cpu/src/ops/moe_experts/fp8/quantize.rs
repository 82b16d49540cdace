//! `fp8_block128` activation quantization of one row on AVX-512: the same values, bit for
//! bit, as [`moemla_core::fp8::quantize_activation_row`] (NaN stays NaN), sixteen lanes at
//! a time. Per group of 128: `amax = max(max|v|, 1e-4)` (NaN elements ignored, as
//! `f32::max` does), `sc = amax / 448` (or its power of two up, UE8M0), `v / sc` rounded to
//! the nearest e4m3 value (ties to even; at or beyond 448 saturates to 448), times `sc`.

use moemla_core::fp8::{quantize_activation_row, ScaleMode};

/// Quantizes `row` in place as the contract's `fp8_block128` activations: on AVX-512 where
/// the CPU has it, else by the core's scalar definition.
pub fn activation_row(row: &mut [f32], mode: ScaleMode) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected on this CPU just above.
        unsafe { x86::row(row, mode) };
        return;
    }
    quantize_activation_row(row, mode);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ScaleMode;
    use moemla_core::fp8::{pow2_ceil, BLOCK, E4M3_MAX};
    use std::arch::x86_64::*;

    /// Smallest normal e4m3 magnitude, 2^-6: below it values round to multiples of 2^-9.
    const MIN_NORMAL: f32 = 1.0 / 64.0;

    /// [`super::activation_row`] on AVX-512F.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row(row: &mut [f32], mode: ScaleMode) {
        for group in row.chunks_mut(BLOCK) {
            let len = group.len();
            let lanes = len.div_ceil(16);
            let mask = |i: usize| -> __mmask16 { crate::lanes::first16(len - 16 * i) };
            let mut amax = _mm512_setzero_ps();
            for i in 0..lanes {
                // SAFETY: only the group's live lanes are read (masked load).
                let v = _mm512_maskz_loadu_ps(mask(i), group.as_ptr().add(16 * i));
                // VMAXPS returns its second operand where either is NaN: NaN elements are
                // skipped, as `f32::max` skips them.
                amax = _mm512_max_ps(_mm512_abs_ps(v), amax);
            }
            let mut sc = _mm512_reduce_max_ps(amax).max(1e-4) / E4M3_MAX;
            if mode == ScaleMode::Ue8m0 {
                sc = pow2_ceil(sc);
            }
            let scale = _mm512_set1_ps(sc);
            for i in 0..lanes {
                let p = group.as_mut_ptr().add(16 * i);
                // SAFETY: the live lanes of the group, read and written under the same mask.
                let v = _mm512_maskz_loadu_ps(mask(i), p);
                let q = e4m3_round(_mm512_div_ps(v, scale));
                _mm512_mask_storeu_ps(p, mask(i), _mm512_mul_ps(q, scale));
            }
        }
    }

    /// Each lane rounded to the nearest e4m3 value (ties to even), as `e4m3_decode(
    /// e4m3_encode(x))`: 3 mantissa bits from 2^-6 up, multiples of 2^-9 below (f32
    /// subnormals give zero), saturated at 448 (infinities too), the sign kept, NaN kept.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn e4m3_round(x: __m512) -> __m512 {
        let bits = _mm512_castps_si512(x);
        let sign = _mm512_and_si512(bits, _mm512_set1_epi32(i32::MIN));
        let abs = _mm512_abs_ps(x);
        // Normal range: round the 23-bit mantissa to 3 bits, to nearest even (a carry
        // moves into the exponent; an infinity stays one).
        let a = _mm512_castps_si512(abs);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<20>(a), _mm512_set1_epi32(1));
        let up = _mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(0x7FFFF)), odd);
        let normal = _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(!0xFFFFF)));
        // Below 2^-6: to the nearest multiple of 2^-9 (ties to even, exceptions off).
        let tiny = _mm512_roundscale_ps::<
            { (9 << 4) | _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(abs);
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs, _mm512_set1_ps(MIN_NORMAL));
        let rounded = _mm512_mask_mov_ps(normal, below, tiny);
        let saturated = _mm512_min_ps(rounded, _mm512_set1_ps(E4M3_MAX));
        let signed = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(saturated), sign));
        // NaN lanes (any payload) stay NaN.
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_mov_ps(signed, nan, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::{e4m3_decode, e4m3_encode, BLOCK};

    /// Values that probe every rule once scaled by a group's `sc`: ties between e4m3
    /// neighbours (normal and subnormal), the 2^-6 boundary, 448 and beyond, f32
    /// subnormals, signed zeros, infinities and NaN.
    fn probes(sc: f32) -> Vec<f32> {
        let mut v = Vec::new();
        for code in 0..0x7Eu8 {
            let a = e4m3_decode(code);
            let b = e4m3_decode(code + 1);
            for x in [
                a,
                (a + b) / 2.0,
                f32::from_bits(((a + b) / 2.0).to_bits() + 1),
            ] {
                v.push(x * sc);
                v.push(-x * sc);
            }
        }
        v.extend([448.0, 449.0, 464.0, 479.9, 480.0, 1e30].map(|x| x * sc));
        v.extend([
            f32::MIN_POSITIVE / 4.0,
            -0.0,
            0.0,
            2f32.powi(-10),
            2f32.powi(-6),
        ]);
        v
    }

    /// Bit-equal, or both NaN.
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn check(row: &[f32], mode: ScaleMode) {
        let mut want = row.to_vec();
        quantize_activation_row(&mut want, mode);
        let mut got = row.to_vec();
        activation_row(&mut got, mode);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                same(g, w),
                "{mode:?} element {i} ({}): {g:e} vs {w:e}",
                row[i]
            );
        }
    }

    /// Every lane of `e4m3_round` against `e4m3_decode(e4m3_encode(x))`, over a stride
    /// through all f32 bit patterns (both signs, every exponent, NaN payloads) and the
    /// rounding's edge cases: saturation at 448 (values that round to 480 or beyond,
    /// infinities), ties, the 2^-6 boundary, f32 subnormals.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lanes_round_as_the_core_codec_over_all_f32_bit_patterns() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut xs: Vec<f32> = (0..=u32::MAX).step_by(997).map(f32::from_bits).collect();
        xs.extend(probes(1.0));
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::NAN,
        ]);
        xs.extend([f32::from_bits(0x7F80_0001), f32::from_bits(0xFF80_0001)]);
        xs.extend([463.9, 464.0, 464.1, -479.0, 1e5, f32::MIN_POSITIVE, -1e-40]);
        for chunk in xs.chunks(16) {
            let mut lanes = [0.0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F was detected; 16 values read and written.
            unsafe {
                use std::arch::x86_64::*;
                let r = x86::e4m3_round(_mm512_loadu_ps(lanes.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), r);
            }
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = e4m3_decode(e4m3_encode(x));
                assert!(
                    same(g, want),
                    "{x:e} ({:#010x}): {g:e} vs {want:e}",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn rows_match_the_core_definition_bit_for_bit() {
        let mut lcg = crate::test_util::Lcg::new(11);
        for mode in [ScaleMode::F32, ScaleMode::Ue8m0] {
            // Each group's largest element sets sc; the probes are placed under it.
            for amax in [448.0f32, 1.0, 3.7e-3, 1e-6, 6.0e4] {
                let sc = amax / 448.0;
                let mut row = probes(sc);
                row.retain(|x| x.abs() <= amax || x.is_nan());
                for chunk in row.chunks_mut(BLOCK - 1) {
                    chunk[0] = amax;
                }
                check(&row, mode);
            }
            // Random rows of every length up to three groups and a partial one.
            for len in [1, 15, 16, 17, 127, 128, 129, 300] {
                let row = lcg.vec(len, -5.0, 5.0);
                check(&row, mode);
            }
            // Specials inside a group: NaN ignored by amax, infinite amax.
            check(&[1.0, f32::NAN, -0.25, 3.0], mode);
            // A NaN after the largest value in the same lane of a later chunk, then a
            // small one: amax must keep the largest (whatever the lanes' reduction does).
            let mut lane = vec![0.5f32; 3 * 16];
            lane[3] = 40.0;
            lane[16 + 3] = f32::NAN;
            lane[32 + 3] = 0.25;
            check(&lane, mode);
            check(&[1.0, f32::INFINITY, -0.25], mode);
            check(&[f32::from_bits(0x7F80_0001), 0.5], mode);
            check(&[0.0; 40], mode);
        }
    }
}
