//! Vectorisable row kernels: for the softmax, maximum and `exp` with a running sum; for
//! the experts, SwiGLU.
//!
//! `f32::exp` is a libm call per element, which no compiler vectorises: in `mla_decode`
//! that made the softmax cost ~40% of the two GEMMs, in the bf16 experts SwiGLU ~6% of
//! the op. Here `exp` is a range reduction plus polynomial in plain arithmetic, so that
//! loops over it vectorise (compiled for the widest vector unit found at run time).

/// ln 2 split in two (high part exact in few bits): Cephes `expf` constants.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` underflows to 0 (f32 subnormals are not produced).
const EXP_MIN: f32 = -87.336_55;
/// Above this, `exp` overflows to +inf.
const EXP_MAX: f32 = 88.722_83;
/// Cephes `expf`'s polynomial for `(e^r - 1 - r) / r^2`, highest degree first (Cephes'
/// last coefficient, 5.0000001201e-1, rounds to 0.5 in f32).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// The largest element (-inf for an empty slice; NaN elements are skipped).
pub fn max(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { x86::max(xs) };
    }
    pulp::Arch::new().dispatch(Max(xs))
}

/// Multiplies every element by `by` (16 lanes at a time with AVX-512F; a plain loop, as
/// compiled for the baseline, elsewhere).
pub fn scale(xs: &mut [f32], by: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { x86::scale(xs, by) };
    }
    xs.iter_mut().for_each(|x| *x *= by);
}

/// Replaces every `x` by `exp(x * scale - shift)` and returns their sum. With AVX-512F the
/// same range reduction and polynomial as [`exp`] on 16 lanes, fused multiply-adds and
/// `VSCALEFPS` for the `2^n` (its last bits may differ from [`exp`]'s; the softmax's `exp`
/// was ~6% of a decode at h_q 16).
pub fn exp_scaled_sum(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { x86::exp_scaled_sum(xs, scale, shift) };
    }
    pulp::Arch::new().dispatch(ExpScaledSum { xs, scale, shift })
}

/// `gate[j] = silu(gate[j]) * up[j]`, or with a `limit` c (DeepSeek-V4's clamp)
/// `silu(min(gate[j], c)) * clamp(up[j], -c, c)`, over the shorter of the two; `silu(x) =
/// x / (1 + exp(-x))`. A NaN in either stays NaN. `c` must not be NaN.
pub fn swiglu(gate: &mut [f32], up: &[f32], limit: Option<f32>) {
    debug_assert_eq!(gate.len(), up.len(), "swiglu operands");
    pulp::Arch::new().dispatch(Swiglu { gate, up, limit })
}

/// SiLU (swish), `x * sigmoid(x)`, on [`exp`].
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Partial results kept apart so that loops vectorise; combined in a fixed order.
const LANES: usize = 16;

/// [`max`] as a pulp kernel: `with_simd` is inlined into the code compiled for the
/// detected vector unit (a closure would be compiled on its own, for the baseline).
struct Max<'a>(&'a [f32]);

impl pulp::WithSimd for Max<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = self.0.chunks_exact(LANES);
        let tail = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for c in chunks {
            for j in 0..LANES {
                acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
            }
        }
        acc.iter().fold(tail, |m, &x| m.max(x))
    }
}

/// [`exp_scaled_sum`] as a pulp kernel.
struct ExpScaledSum<'a> {
    xs: &'a mut [f32],
    scale: f32,
    shift: f32,
}

impl pulp::WithSimd for ExpScaledSum<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> f32 {
        let (scale, shift) = (self.scale, self.shift);
        for x in self.xs.iter_mut() {
            *x = exp(*x * scale - shift);
        }
        let mut acc = [0.0f32; LANES];
        let chunks = self.xs.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for j in 0..LANES {
                acc[j] += c[j];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// [`swiglu`] as a pulp kernel.
struct Swiglu<'a> {
    gate: &'a mut [f32],
    up: &'a [f32],
    limit: Option<f32>,
}

impl pulp::WithSimd for Swiglu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let pairs = self.gate.iter_mut().zip(self.up);
        match self.limit {
            None => pairs.for_each(|(g, &u)| *g = silu(*g) * u),
            Some(c) => pairs.for_each(|(g, &u)| {
                // Selects, not `f32::min` (which would turn a NaN gate into c).
                let g_c = if *g > c { c } else { *g };
                let u_c = if u > c {
                    c
                } else if u < -c {
                    -c
                } else {
                    u
                };
                *g = silu(g_c) * u_c;
            }),
        }
    }
}

/// `e^x` to within a few ulp for normal results: `x = n ln2 + r`, `|r| <= ln2 / 2`,
/// `e^r` by Cephes' `expf` polynomial, times `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let clamped = x.clamp(EXP_MIN, EXP_MAX);
    // Round x log2(e) to the nearest integer by adding 1.5 * 2^23 (no libm `floor` call):
    // the integer then sits in the low mantissa bits of `shifted`.
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = clamped * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let e_r = p * r * r + r + 1.0;
    // n lies in [-126, 128]; at 128 build 2^127 and double, so the bits never overflow.
    let n = shifted.to_bits() as i32 - ROUNDER.to_bits() as i32;
    let half = n >> 1;
    let scale_a = f32::from_bits(((half + 127) as u32) << 23);
    let scale_b = f32::from_bits(((n - half + 127) as u32) << 23);
    let y = e_r * scale_a * scale_b;
    if x < EXP_MIN {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        y
    }
}

/// [`max`], [`scale`] and [`exp_scaled_sum`] on AVX-512F, 16 lanes at a time, the tail
/// masked.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;

    /// The lanes of the 16 elements from `at` that lie below `len`.
    #[inline(always)]
    fn live(len: usize, at: usize) -> __mmask16 {
        match len - at {
            n if n >= 16 => u16::MAX,
            n => (1u16 << n) - 1,
        }
    }

    /// See [`super::max`].
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max(xs: &[f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for at in (0..xs.len()).step_by(16) {
            let mask = live(xs.len(), at);
            // SAFETY: only the lanes below xs.len() are read.
            let x = _mm512_maskz_loadu_ps(mask, xs.as_ptr().add(at));
            // VMAXPS returns its second operand where either is NaN: a NaN x keeps m.
            m = _mm512_mask_max_ps(m, mask, x, m);
        }
        _mm512_reduce_max_ps(m)
    }

    /// See [`super::scale`].
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scale(xs: &mut [f32], by: f32) {
        let by = _mm512_set1_ps(by);
        for at in (0..xs.len()).step_by(16) {
            let (mask, p) = (live(xs.len(), at), xs.as_mut_ptr().add(at));
            // SAFETY: only the lanes below xs.len() are read and written.
            _mm512_mask_storeu_ps(p, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p), by));
        }
    }

    /// See [`super::exp_scaled_sum`].
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_scaled_sum(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
        let (scale, shift) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
        let (lo, hi) = (_mm512_set1_ps(EXP_MIN), _mm512_set1_ps(EXP_MAX));
        let c = |v: f32| _mm512_set1_ps(v);
        let mut sum = _mm512_setzero_ps();
        for at in (0..xs.len()).step_by(16) {
            let mask = live(xs.len(), at);
            let p = xs.as_mut_ptr().add(at);
            // SAFETY: only the lanes below xs.len() are read and written.
            let x = _mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p), scale), shift);
            // Clamped (a NaN stays: VMAXPS/VMINPS return their second operand).
            let t = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
            // n = round(t log2 e), r = t - n ln 2 in two parts.
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(t, c(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, c(LN2_LO), _mm512_fnmadd_ps(n, c(LN2_HI), t));
            let mut q = c(EXP_POLY[0]);
            for k in &EXP_POLY[1..] {
                q = _mm512_fmadd_ps(q, r, c(*k));
            }
            let e_r = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(q, r), r, r), c(1.0));
            let y = _mm512_scalef_ps(e_r, n);
            // Below EXP_MIN exactly 0, above EXP_MAX +inf, as `exp`.
            let y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo), y, c(0.0));
            let y =
                _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, hi), y, c(f32::INFINITY));
            _mm512_mask_storeu_ps(p, mask, y);
            sum = _mm512_mask_add_ps(sum, mask, sum, y);
        }
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_f64_exp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_3;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn swiglu_matches_its_definition_and_the_clamp_bites_both_ways() {
        // 37 values: two vectors of 16 and a tail; gates from -90 (exp(-x) overflows) to
        // 90, ups of both signs.
        let gate: Vec<f32> = (0..37).map(|i| i as f32 * 5.0 - 90.0).collect();
        let up: Vec<f32> = (0..37).map(|i| (i % 7) as f32 * 6.5 - 20.0).collect();
        let silu64 = |x: f64| x / (1.0 + (-x).exp());
        // Relative, but for the gate of -90, past -88.7 where exp(-x) overflows: there
        // silu's true value (7e-38, times |up| <= 20) comes out as 0, as with libm's
        // expf. The gate of -85 (1e-35 times |up| >= 0.5) is still checked.
        let close = |got: f32, want: f64| {
            (got as f64 - want).abs() <= 8.0 * f32::EPSILON as f64 * want.abs() + 2e-36
        };
        let mut g = gate.clone();
        swiglu(&mut g, &up, None);
        for (j, &got) in g.iter().enumerate() {
            let want = silu64(gate[j] as f64) * up[j] as f64;
            assert!(close(got, want), "[{j}] {got} vs {want}");
        }
        let c = 10.0f32;
        let mut g = gate.clone();
        swiglu(&mut g, &up, Some(c));
        for (j, &got) in g.iter().enumerate() {
            let (gc, uc) = (gate[j].min(c), up[j].clamp(-c, c));
            let want = silu64(gc as f64) * uc as f64;
            assert!(close(got, want), "clamped [{j}] {got} vs {want}");
        }
        // A NaN gate or up stays NaN, clamped or not.
        for limit in [None, Some(c)] {
            let mut g = [f32::NAN, 1.0];
            swiglu(&mut g, &[1.0, f32::NAN], limit);
            assert!(g[0].is_nan() && g[1].is_nan(), "{limit:?}");
        }
    }

    #[test]
    fn softmax_helpers_match_plain_loops() {
        let xs: Vec<f32> = (0..37)
            .map(|i| ((i * 7) % 13) as f32 * 0.25 - 1.0)
            .collect();
        assert_eq!(max(&xs), 2.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut ys = xs.clone();
        let sum = exp_scaled_sum(&mut ys, 0.5, 1.0);
        let mut want_sum = 0.0f64;
        for (y, x) in ys.iter().zip(&xs) {
            let want = (*x as f64 * 0.5 - 1.0).exp();
            want_sum += want;
            assert!((*y as f64 - want).abs() <= 4e-7 * want, "{y} vs {want}");
        }
        assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum);
        // Across exp's range, ends included (2^n up to 2^128), as close to f64's as `exp`
        // is (every lane and a tail).
        let steps = 136_000;
        let xs: Vec<f32> = (0..=steps)
            .map(|i| EXP_MIN + (EXP_MAX - EXP_MIN) * i as f32 / steps as f32)
            .collect();
        let mut ys = xs.clone();
        exp_scaled_sum(&mut ys, 1.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            if want > f32::MAX as f64 {
                // The last steps below EXP_MAX: past f32's largest value.
                assert_eq!(y, f32::INFINITY, "exp({x})");
                continue;
            }
            let rel = ((y as f64 - want) / want).abs();
            assert!(rel < 4.0 * f32::EPSILON as f64, "exp({x}): {y} vs {want}");
        }
        // 0 below exp's range, +inf above it, NaN kept (and summed); max skips NaN.
        let mut ys = vec![-200.0, 0.0, 200.0, f32::NAN, 1.0];
        let sum = exp_scaled_sum(&mut ys, 1.0, 0.0);
        assert_eq!(&ys[..3], &[0.0, 1.0, f32::INFINITY]);
        assert!(ys[3].is_nan() && sum.is_nan());
        assert!((ys[4] as f64 - 1f64.exp()).abs() <= 4e-7 * 1f64.exp());
        assert_eq!(max(&[f32::NAN, -3.0, f32::NAN]), -3.0);
        assert_eq!(max(&[f32::NAN]), f32::NEG_INFINITY);
        // Scaled: whole vectors and a tail, nothing past the slice.
        let mut zs: Vec<f32> = (0..40).map(|i| i as f32 - 7.5).collect();
        scale(&mut zs[..37], 0.25);
        for (i, z) in zs.iter().enumerate() {
            let x = i as f32 - 7.5;
            assert_eq!(*z, if i < 37 { x * 0.25 } else { x }, "[{i}]");
        }
    }
}
