//! Conversions between the storage float types and f32, the compute type.

use crate::storage::{row_range, CpuStorage, FloatSlice, FloatSliceMut};
use half::{bf16, f16};
use moemla_core::alloc::try_filled_vec;
use moemla_core::{DType, Result};

impl FloatSlice<'_> {
    /// Converts the elements `start..start + dst.len()` to f32 into `dst` (exact: every f16
    /// and bf16 value is an f32).
    pub fn read_f32(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            FloatSlice::F32(v) => dst.copy_from_slice(&v[start..end]),
            FloatSlice::F16(v) => f16_to_f32(&v[start..end], dst),
            FloatSlice::BF16(v) => bf16_to_f32(&v[start..end], dst),
        }
    }

    /// [`FloatSlice::read_f32`] without the run-time dispatch, for use inside kernels that
    /// are already compiled for the detected vector unit (inlined there).
    #[inline(always)]
    pub fn read_f32_inline(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            FloatSlice::F32(v) => dst.copy_from_slice(&v[start..end]),
            FloatSlice::F16(v) => {
                let bits: &[u16] = bytemuck::cast_slice(&v[start..end]);
                for (d, &h) in dst.iter_mut().zip(bits) {
                    *d = f16_bits_to_f32(h);
                }
            }
            FloatSlice::BF16(v) => {
                let bits: &[u16] = bytemuck::cast_slice(&v[start..end]);
                for (d, &b) in dst.iter_mut().zip(bits) {
                    *d = f32::from_bits(u32::from(b) << 16);
                }
            }
        }
    }

    /// Rows `first..first + rows` of a row-major matrix with `cols` columns, in place;
    /// `None` when they are not all inside the slice (checked arithmetic).
    pub fn rows(self, first: usize, rows: usize, cols: usize) -> Option<Self> {
        let range = row_range(first, rows, cols)?;
        Some(match self {
            FloatSlice::F32(v) => FloatSlice::F32(v.get(range)?),
            FloatSlice::F16(v) => FloatSlice::F16(v.get(range)?),
            FloatSlice::BF16(v) => FloatSlice::BF16(v.get(range)?),
        })
    }
}

/// bf16 to f32 is a 16-bit shift (NaN payloads kept as NaN); written as one branch-free
/// loop over the bits (half's slice conversion goes element by element), compiled for the
/// widest vector unit found at run time: wide loads keep enough cache misses in flight to
/// stream weights from memory at full bandwidth.
fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    let bits: &[u16] = bytemuck::cast_slice(src);
    pulp::Arch::new().dispatch(Map {
        src: bits,
        dst,
        convert: |b| f32::from_bits(u32::from(b) << 16),
    });
}

/// f16 to f32 in integer arithmetic, branch-free per element so that it vectorises (half's
/// slice conversion calls an F16C routine per 8 elements): normals re-bias the exponent,
/// subnormals are `mantissa * 2^-24` (exact), infinities and NaN keep their payload.
fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    let bits: &[u16] = bytemuck::cast_slice(src);
    pulp::Arch::new().dispatch(Map {
        src: bits,
        dst,
        convert: f16_bits_to_f32,
    });
}

/// An elementwise conversion as a pulp kernel: `with_simd` is inlined into the code
/// compiled for the detected vector unit (a closure would be compiled on its own, for the
/// baseline, and not vectorise).
struct Map<'a, S, D, F> {
    src: &'a [S],
    dst: &'a mut [D],
    convert: F,
}

impl<S: Copy, D, F: Fn(S) -> D> pulp::WithSimd for Map<'_, S, D, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<Simd: pulp::Simd>(self, _simd: Simd) {
        for (d, &x) in self.dst.iter_mut().zip(self.src) {
            *d = (self.convert)(x);
        }
    }
}

/// One f16 (as bits) to f32, exactly.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff;
    let normal = (magnitude << 13) + ((127 - 15) << 23);
    let special = 0x7f80_0000 | ((magnitude & 0x03ff) << 13);
    let subnormal = (magnitude as f32 * (1.0 / 16_777_216.0)).to_bits();
    let bits = if magnitude >= 0x7c00 {
        special
    } else if magnitude < 0x0400 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

/// Storage of `dtype` (F32 | F16 | BF16) holding `values`, rounded to nearest-even (the
/// 16-bit copy is allocated fallibly).
pub fn storage_from_f32(values: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    fn narrow<T: Clone + Default>(values: &[f32], f: impl Fn(f32) -> T) -> Result<Vec<T>> {
        let mut out: Vec<T> = try_filled_vec(values.len(), "cpu output")?;
        out.iter_mut().zip(values).for_each(|(o, &v)| *o = f(v));
        Ok(out)
    }
    Ok(match dtype {
        DType::F16 => CpuStorage::F16(narrow(&values, f16::from_f32)?),
        DType::BF16 => CpuStorage::BF16(narrow(&values, bf16::from_f32)?),
        _ => CpuStorage::F32(values),
    })
}

/// Writes `values[j] / divisor * factor` into the float output `dst` from element `at`,
/// rounded to nearest-even as [`storage_from_f32`] rounds: an attention row normalised by
/// its softmax denominator (and a sink's factor). F32 and BF16 outputs in one loop
/// compiled for the widest vector unit found at run time.
pub fn store_normalized(
    dst: &mut FloatSliceMut<'_>,
    at: usize,
    values: &[f32],
    (divisor, factor): (f32, f32),
) {
    let end = at + values.len();
    let normalized = move |a: f32| a / divisor * factor;
    match dst {
        FloatSliceMut::F32(v) => pulp::Arch::new().dispatch(Map {
            src: values,
            dst: &mut v[at..end],
            convert: normalized,
        }),
        FloatSliceMut::F16(v) => v[at..end]
            .iter_mut()
            .zip(values)
            .for_each(|(o, &x)| *o = f16::from_f32(normalized(x))),
        FloatSliceMut::BF16(v) => pulp::Arch::new().dispatch(Map {
            src: values,
            dst: bytemuck::cast_slice_mut::<bf16, u16>(&mut v[at..end]),
            convert: move |a| bf16_bits_nearest_even(normalized(a)),
        }),
    }
}

/// The bits of `x` rounded to bf16, nearest-even, as `bf16::from_f32` rounds (a NaN stays
/// a NaN, its quiet bit set), branch-free so that it vectorises: adding `0x7FFF` plus the
/// kept part's lowest bit carries into it exactly when the dropped half is above one half,
/// or one half with that bit odd.
#[inline(always)]
fn bf16_bits_nearest_even(x: f32) -> u16 {
    let b = x.to_bits();
    // Wrapping: only a NaN's bits (taken by the other branch) can carry past 32 bits.
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let nan = (b >> 16) | 0x40;
    (if x.is_nan() { nan } else { rounded }) as u16
}

/// The value of an e4m3fn code (bias 7; exponent field 0 subnormal, `0x7F` / `0xFF` NaN),
/// branch-free: a normal code's magnitude bits shifted into an f32's exponent and
/// mantissa (exponent rebased by 120), a subnormal's mantissa times 2^-9, then the sign.
#[inline(always)]
pub fn e4m3(code: u8) -> f32 {
    let mag = u32::from(code & 0x7F);
    let normal = f32::from_bits((mag << 20) + (120 << 23));
    let subnormal = mag as f32 * (1.0 / 512.0);
    let v = if mag < 8 { subnormal } else { normal };
    let v = if mag == 0x7F { f32::NAN } else { v };
    f32::from_bits(v.to_bits() | (u32::from(code & 0x80) << 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_rows_round_as_the_scalar_conversions() {
        // Ties both ways, values just off a tie, subnormals, the largest finite values (to
        // infinity), infinities, NaNs (a full payload would carry into the sign if rounded),
        // zeros of both signs, and a spread of ordinary values; 79 of them: whole vectors
        // and a tail.
        let mut values: Vec<f32> = vec![
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0xBF80_8000),
            f32::from_bits(0x3F80_8001),
            f32::from_bits(0x3F80_7FFF),
            f32::from_bits(0x0000_8000),
            f32::from_bits(0x0001_8000),
            f32::MIN_POSITIVE / 3.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7FFF_FFFF),
            f32::from_bits(0xFFFF_FFFF),
            0.0,
            -0.0,
        ];
        values.extend((0..61).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013_7));
        for (divisor, factor) in [(1.0, 1.0), (3.0, 1.0), (0.37, 0.625)] {
            let want = |x: f32| x / divisor * factor;
            let at = 2;
            let mut b = vec![bf16::ZERO; at + values.len()];
            store_normalized(
                &mut FloatSliceMut::BF16(&mut b),
                at,
                &values,
                (divisor, factor),
            );
            let mut h = vec![f16::ZERO; at + values.len()];
            store_normalized(
                &mut FloatSliceMut::F16(&mut h),
                at,
                &values,
                (divisor, factor),
            );
            // f16 and f32 as the scalar conversions of the same expression: they check the
            // placement, the bf16 comparison the rounding.
            let mut f = vec![0.0f32; at + values.len()];
            store_normalized(
                &mut FloatSliceMut::F32(&mut f),
                at,
                &values,
                (divisor, factor),
            );
            for (j, &x) in values.iter().enumerate() {
                let (wb, wh, wf) = (bf16::from_f32(want(x)), f16::from_f32(want(x)), want(x));
                let case = format!("{x:e} ({:#010x}) / {divisor} * {factor}", x.to_bits());
                assert_eq!(b[at + j].to_bits(), wb.to_bits(), "bf16 {case}");
                assert_eq!(h[at + j].to_bits(), wh.to_bits(), "f16 {case}");
                assert_eq!(f[at + j].to_bits(), wf.to_bits(), "f32 {case}");
            }
            assert!(b[..at].iter().all(|v| v.to_bits() == 0), "before `at`");
        }
    }

    #[test]
    fn read_f32_converts_the_requested_range() {
        let v = [
            bf16::from_f32(1.5),
            bf16::from_f32(-2.0),
            bf16::from_f32(0.25),
        ];
        let mut dst = [0.0; 2];
        FloatSlice::BF16(&v).read_f32(1, &mut dst);
        assert_eq!(dst, [-2.0, 0.25]);
        let h = [f16::from_f32(3.0), f16::from_f32(0.5)];
        let mut all = [0.0; 2];
        FloatSlice::F16(&h).read_f32(0, &mut all);
        assert_eq!(all, [3.0, 0.5]);
    }

    #[test]
    fn every_f16_converts_exactly() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = f16_bits_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn storing_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        let tie = 1.0 + 2f32.powi(-8);
        let above = 1.0 + 2f32.powi(-8) + 2f32.powi(-20);
        match storage_from_f32(vec![tie, above], DType::BF16).unwrap() {
            CpuStorage::BF16(v) => {
                assert_eq!(v[0].to_f32(), 1.0);
                assert_eq!(v[1].to_f32(), 1.0 + 2f32.powi(-7));
            }
            other => panic!("wrong storage {other:?}"),
        }
        match storage_from_f32(vec![0.1], DType::F32).unwrap() {
            CpuStorage::F32(v) => assert_eq!(v, vec![0.1]),
            other => panic!("wrong storage {other:?}"),
        }
    }

    #[test]
    fn e4m3_arithmetic_decode_matches_the_table_for_every_code() {
        for c in 0..=255u8 {
            let (got, want) = (e4m3(c), moemla_core::fp8::e4m3_decode(c));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "code {c:#04x}: {got} vs {want}"
            );
        }
    }
}
