//! `fp8_ds_v32` cache rows dequantized straight to bf16 on a CPU with AVX-512BW: a code
//! times a power-of-two scale is a bf16 value, so the decode is a table lookup (32 codes
//! per step) in a table whose exponents the tile's scale raised, the same values as the
//! f32 dequantization ([`super::KvRows::read`]). A row whose scale is not a power of two
//! in [2^-117, 2^119] (where every nonzero result is a normal bf16) is declined; its
//! caller takes the f32 path.

use crate::aligned::Aligned;
use crate::ops::moe_experts::fp8::{pow2_exponent, MAGNITUDES};
use half::bf16;
use moemla_core::fp8::{DS_V32_DIM, DS_V32_LATENT, DS_V32_ROW_BYTES, DS_V32_TILE};

/// Rows prefetched ahead of the one dequantized (listed or paged rows lie anywhere in the
/// cache: every first touch would wait on memory).
const AHEAD: usize = 8;

/// Dequantizes `n` cache rows into `out` as bf16 [n, 576]: row `j` is slot `slot(j)` of
/// `bytes` (`None` past the rows there are), prefetching [`AHEAD`] rows on (past `n` too,
/// where `slot` has them: the caller's next rows). False (and `out` unusable) when a slot
/// lies outside `bytes`, a row's scales are not all powers of two in [2^-117, 2^119], or
/// the memory for `out` is not there (the caller's other path then reports it).
/// Callers check [`crate::bf16dot::native`] first.
pub fn rows(
    bytes: &[u8],
    slot: impl Fn(usize) -> Option<usize>,
    n: usize,
    out: &mut Aligned<bf16>,
) -> bool {
    let row_at = |j: usize| row_of(bytes, slot(j)?);
    let fetch = |j: usize| {
        if let Some(row) = row_at(j) {
            // SAFETY: SSE is part of x86_64; the row is 656 readable bytes.
            unsafe { x86::prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(row) };
        }
    };
    (0..AHEAD.min(n)).for_each(fetch);
    if out
        .try_resize(n * DS_V32_DIM, bf16::ZERO, "cpu fp8 cache rows as bf16")
        .is_err()
    {
        return false;
    }
    for (j, dst) in out.chunks_exact_mut(DS_V32_DIM).enumerate() {
        fetch(j + AHEAD);
        let Some(row) = row_at(j) else {
            return false;
        };
        let Some(shifts) = exponent_shifts(row) else {
            return false;
        };
        // SAFETY: callers checked `bf16dot::native()` (AVX-512F, AVX-512BW); `row` is
        // 656 bytes and `dst` 576 bf16, all the kernel reads and writes.
        unsafe { x86::row(row, shifts, dst) };
    }
    true
}

/// Starts bringing the rows `slot(j)` for `j < n` (those inside `bytes`) into L2, every
/// line of each, without waiting for them: the rows a caller will pass to [`rows`] after
/// work that does not need them.
pub fn fetch_into_l2(bytes: &[u8], slot: impl Fn(usize) -> Option<usize>, n: usize) {
    for j in 0..n {
        if let Some(row) = slot(j).and_then(|s| row_of(bytes, s)) {
            // SAFETY: SSE is part of x86_64; the row is 656 readable bytes.
            unsafe { x86::prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(row) };
        }
    }
}

/// Row `slot` of `bytes`, if it lies there.
fn row_of(bytes: &[u8], slot: usize) -> Option<&[u8; DS_V32_ROW_BYTES]> {
    let at = slot.checked_mul(DS_V32_ROW_BYTES)?;
    bytes.get(at..)?.first_chunk::<DS_V32_ROW_BYTES>()
}

/// Per scale of `row`, `log2(scale) << 7` (what adding to a bf16's bits multiplies it
/// by), when every scale is a power of two that [`pow2_exponent`] takes: then a nonzero
/// code times the scale is a normal bf16.
fn exponent_shifts(row: &[u8; DS_V32_ROW_BYTES]) -> Option<[i16; 4]> {
    let mut shifts = [0i16; 4];
    for (t, s) in shifts.iter_mut().enumerate() {
        let at = DS_V32_LATENT + 4 * t;
        let scale = f32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
        *s = (pow2_exponent(scale)? << 7) as i16;
    }
    Some(shifts)
}

mod x86 {
    use super::{DS_V32_DIM, DS_V32_LATENT, DS_V32_ROW_BYTES, DS_V32_TILE, MAGNITUDES};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Prefetches the 11 cache lines of `row` with hint `H` (`_MM_HINT_T0`: into L1).
    ///
    /// # Safety
    /// None beyond x86_64 (prefetches never fault; the addresses lie inside `row`).
    #[inline]
    pub unsafe fn prefetch<const H: i32>(row: &[u8; DS_V32_ROW_BYTES]) {
        for at in (0..DS_V32_ROW_BYTES).step_by(64) {
            _mm_prefetch::<H>(row.as_ptr().add(at).cast());
        }
    }

    /// Dequantizes one 656-byte row into `out` (576 bf16): per tile, [`MAGNITUDES`] with
    /// the tile's shift added to every entry but zero and NaN (entries 0 and 0x7F), then
    /// each code's magnitude looked up there and its sign bit ORed in; the 64 rope values
    /// copied.
    ///
    /// # Safety
    /// AVX-512F and AVX-512BW must be available.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn row(row: &[u8; DS_V32_ROW_BYTES], shifts: [i16; 4], out: &mut [bf16]) {
        assert!(out.len() == DS_V32_DIM, "576 values per row");
        let t = MAGNITUDES.as_ptr().cast::<__m512i>();
        // SAFETY (all unaligned loads and stores): MAGNITUDES is 4 x 32 u16; the row's
        // latent codes are bytes 0..512, its rope bf16 bytes 528..656; `out` holds 576
        // u16.
        let base = [
            _mm512_loadu_si512(t),
            _mm512_loadu_si512(t.add(1)),
            _mm512_loadu_si512(t.add(2)),
            _mm512_loadu_si512(t.add(3)),
        ];
        // Which entries of each quarter are scaled: all but magnitude 0 (first quarter's
        // first) and 0x7F (last quarter's last).
        let scaled: [__mmask32; 4] = [!1, !0, !0, !(1 << 31)];
        let (src, dst) = (row.as_ptr(), out.as_mut_ptr().cast::<u16>());
        let (bit6, sign) = (_mm512_set1_epi16(0x40), _mm512_set1_epi16(0x8000u16 as i16));
        for (tile, &shift) in shifts.iter().enumerate() {
            let add = _mm512_set1_epi16(shift);
            let [t0, t1, t2, t3] =
                std::array::from_fn(|q| _mm512_mask_add_epi16(base[q], scaled[q], base[q], add));
            for step in 0..DS_V32_TILE / 32 {
                let at = tile * DS_V32_TILE + 32 * step;
                let c = _mm512_cvtepu8_epi16(_mm256_loadu_si256(src.add(at).cast()));
                // VPERMT2W reads the low 6 bits (magnitudes 0..64 of one table pair); bit 6
                // picks the pair.
                let low = _mm512_permutex2var_epi16(t0, c, t1);
                let high = _mm512_permutex2var_epi16(t2, c, t3);
                let v = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(c, bit6), low, high);
                // v | (c << 8 & 0x8000): the sign.
                let v = _mm512_ternarylogic_epi32::<0xF8>(v, _mm512_slli_epi16::<8>(c), sign);
                _mm512_storeu_si512(dst.add(at).cast(), v);
            }
        }
        let rope = src.add(DS_V32_LATENT + 16);
        for half in 0..2 {
            let v = _mm512_loadu_si512(rope.add(64 * half).cast());
            _mm512_storeu_si512(dst.add(DS_V32_LATENT + 32 * half).cast(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::{dequantize_ds_v32_row, e4m3_decode};

    #[test]
    fn the_table_holds_every_magnitude_as_bf16() {
        for m in 0..128u8 {
            let want = e4m3_decode(m);
            let got = bf16::from_bits(MAGNITUDES[m as usize]).to_f32();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "magnitude {m:#04x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn fetching_ahead_skips_rows_outside_the_cache() {
        // Two rows; slots past them, one whose offset overflows, and none at all.
        let bytes = vec![0u8; 2 * DS_V32_ROW_BYTES];
        let slots = [Some(1), Some(2), Some(usize::MAX), None, Some(0)];
        fetch_into_l2(&bytes, |j| slots.get(j).copied().flatten(), 7);
        fetch_into_l2(&bytes[..DS_V32_ROW_BYTES + 5], Some, 3);
    }

    /// A row with every code at each tile position and `scales`.
    fn row_with(scales: [f32; 4]) -> [u8; DS_V32_ROW_BYTES] {
        let mut row = [0u8; DS_V32_ROW_BYTES];
        for (i, b) in row.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        for (t, sc) in scales.iter().enumerate() {
            let at = DS_V32_LATENT + 4 * t;
            row[at..at + 4].copy_from_slice(&sc.to_le_bytes());
        }
        row
    }

    #[test]
    fn rows_decode_to_the_f32_dequantization_or_fall_back() {
        if !crate::bf16dot::native() {
            return;
        }
        // Every code (0x00, 0x80, NaN 0x7F / 0xFF, subnormals, 448) at the extreme and
        // middle scales that qualify; then scales that do not.
        let (lo, hi) = (2f32.powi(-117), 2f32.powi(119));
        for scales in [[1.0, 0.5, 2.0, 1024.0], [lo, hi, 1.0 / 64.0, 0.125]] {
            let row = row_with(scales);
            let mut want = [0.0f32; DS_V32_DIM];
            dequantize_ds_v32_row(&row, &mut want);
            let mut bytes = vec![0xFFu8; DS_V32_ROW_BYTES];
            bytes.extend_from_slice(&row);
            let mut out = Aligned::default();
            // Rows 1, 1 (row 0 past them, prefetched only).
            let listed = [1, 1, 0];
            assert!(
                rows(&bytes, |j| listed.get(j).copied(), 2, &mut out),
                "{scales:?}"
            );
            assert_eq!(out.len(), 2 * DS_V32_DIM);
            for (i, (&g, &w)) in out.iter().zip(want.iter().cycle()).enumerate() {
                let g = g.to_f32();
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{scales:?} [{i}]: {g} vs {w}"
                );
            }
        }
        for bad in [
            0.3,
            2f32.powi(-118),
            2f32.powi(120),
            -1.0,
            0.0,
            f32::NAN,
            f32::INFINITY,
        ] {
            let row = row_with([1.0, 1.0, bad, 1.0]);
            assert!(
                !rows(&row, |j| (j == 0).then_some(0), 1, &mut Aligned::default()),
                "scale {bad}"
            );
        }
        // A slot past the cache, or one whose byte offset overflows, is declined.
        let row = row_with([1.0; 4]);
        for slot in [1, usize::MAX / 2] {
            assert!(
                !rows(&row, |_| Some(slot), 1, &mut Aligned::default()),
                "slot {slot}"
            );
        }
    }
}
