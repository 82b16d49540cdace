//! f32 matrices transposed: in 16 x 16 blocks in registers where the CPU has AVX-512F
//! (the blocks at the edges through masked loads and stores), element by element
//! elsewhere.

/// `out[j * r + i] = t[i * c + j]` for `t` [r, c] into `out` [c, r]. Lengths other than
/// `r * c` write nothing (the callers checked them).
pub fn matrix(t: &[f32], (r, c): (usize, usize), out: &mut [f32]) {
    if Some(t.len()) != r.checked_mul(c) || out.len() != t.len() {
        return;
    }
    strided(t, c, (r, c), out, r);
}

/// `dst[j * ldd + i] = src[i * lds + j]` for `i < r`, `j < c`: the `r x c` matrix at the
/// start of `src` (rows `lds` apart) transposed into `dst` (rows `ldd` apart).
///
/// # Panics
/// Where the rows of either matrix overlap or one lies outside its slice (`c > lds`,
/// `r > ldd`, or a slice too short: a caller's bug).
pub fn strided(src: &[f32], lds: usize, (r, c): (usize, usize), dst: &mut [f32], ldd: usize) {
    if r == 0 || c == 0 {
        return;
    }
    // One past the last element of each matrix: row r - 1 (c - 1), column c - 1 (r - 1).
    let end = |rows: usize, cols: usize, ld: usize| {
        (rows - 1).checked_mul(ld).and_then(|x| x.checked_add(cols))
    };
    assert!(
        c <= lds && r <= ldd,
        "{r} x {c} rows {lds} and {ldd} apart overlap"
    );
    assert!(
        end(r, c, lds).is_some_and(|e| e <= src.len())
            && end(c, r, ldd).is_some_and(|e| e <= dst.len()),
        "{r} x {c} matrix outside its slices ({} and {})",
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time; the asserts above keep every element
        // (i, j), i < r, j < c, of both matrices inside their slices with those strides.
        unsafe { x86::blocks(src.as_ptr(), lds, (r, c), dst.as_mut_ptr(), ldd) };
        return;
    }
    for i in 0..r {
        for j in 0..c {
            dst[j * ldd + i] = src[i * lds + j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::lanes::first16;
    use std::arch::x86_64::*;

    /// [`super::strided`] in 16 x 16 blocks, those at the right and bottom edges masked.
    ///
    /// # Safety
    /// AVX-512F must be available; elements (i, j), i < r, j < c, are readable at
    /// `src + i * lds + j` and writable at `dst + j * ldd + i`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn blocks(
        src: *const f32,
        lds: usize,
        (r, c): (usize, usize),
        dst: *mut f32,
        ldd: usize,
    ) {
        for i in (0..r).step_by(16) {
            for j in (0..c).step_by(16) {
                let (s, d) = (src.add(i * lds + j), dst.add(j * ldd + i));
                match (r - i >= 16, c - j >= 16) {
                    (true, true) => block::<true>(s, lds, (16, 16), d, ldd),
                    _ => block::<false>(s, lds, ((r - i).min(16), (c - j).min(16)), d, ldd),
                }
            }
        }
    }

    /// The `rows x cols` (at most 16 x 16; with `FULL`, 16 x 16) block at `src` (row
    /// stride `lds`) transposed into `dst` (row stride `ldd`): `dst[j * ldd + i] = src[i *
    /// lds + j]`, in four rounds of shuffles; without `FULL`, the rows past `rows` read as
    /// zero and the elements past `cols` neither read nor written.
    ///
    /// # Safety
    /// AVX-512F must be available; elements (i, j), i < rows, j < cols, are readable at
    /// `src + i * lds + j` and writable at `dst + j * ldd + i`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const FULL: bool>(
        src: *const f32,
        lds: usize,
        (rows, cols): (usize, usize),
        dst: *mut f32,
        ldd: usize,
    ) {
        let r: [__m512; 16] = std::array::from_fn(|i| match (FULL, i < rows) {
            (true, _) => _mm512_loadu_ps(src.add(i * lds)),
            (false, true) => _mm512_maskz_loadu_ps(first16(cols), src.add(i * lds)),
            (false, false) => _mm512_setzero_ps(),
        });
        // Per 128-bit lane, rows 2p and 2p + 1 interleaved: low pairs, then high pairs.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // Per 128-bit lane L, u[4q + e] holds column 4L + e of rows 4q..4q + 4.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (q, e) = (i / 4, i % 4);
            let (a, b) = (t[4 * q + e / 2], t[4 * q + 2 + e / 2]);
            if e % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        let store = |j: usize, v: __m512| match (FULL, j < cols) {
            (true, _) => _mm512_storeu_ps(dst.add(j * ldd), v),
            (false, true) => _mm512_mask_storeu_ps(dst.add(j * ldd), first16(rows), v),
            (false, false) => {}
        };
        for e in 0..4 {
            // Lanes [L0, L2] then [L1, L3] of rows 0-7 and of rows 8-15.
            let lo = |x: __m512, y: __m512| _mm512_shuffle_f32x4::<0x88>(x, y);
            let hi = |x: __m512, y: __m512| _mm512_shuffle_f32x4::<0xDD>(x, y);
            let (a0, a1) = (lo(u[e], u[4 + e]), hi(u[e], u[4 + e]));
            let (b0, b1) = (lo(u[8 + e], u[12 + e]), hi(u[8 + e], u[12 + e]));
            // Columns e, e + 8, e + 4 and e + 12, each of all 16 rows.
            store(e, lo(a0, b0));
            store(e + 8, hi(a0, b0));
            store(e + 4, lo(a1, b1));
            store(e + 12, hi(a1, b1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_match_the_definition_at_block_and_edge_shapes() {
        for (r, c) in [
            (1, 1),
            (5, 3),
            (16, 16),
            (17, 33),
            (32, 48),
            (15, 40),
            (40, 15),
        ] {
            let t: Vec<f32> = (0..r * c).map(|x| x as f32).collect();
            let mut out = vec![f32::NAN; r * c];
            matrix(&t, (r, c), &mut out);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(out[j * r + i], t[i * c + j], "{r} x {c} [{i},{j}]");
                }
            }
        }
    }

    /// Blocks inside wider rows: only the block's elements are read (the rest of each row
    /// is NaN and never reaches `dst`) and only its transpose's are written (the rest of
    /// `dst` keeps its sentinel).
    #[test]
    fn strided_blocks_touch_only_their_elements() {
        for (r, c, lds, ldd) in [
            (3, 2, 7, 5),
            (16, 16, 20, 18),
            (19, 17, 40, 19),
            (64, 9, 24, 64),
        ] {
            let src: Vec<f32> = (0..r * lds)
                .map(|x| if x % lds < c { x as f32 } else { f32::NAN })
                .collect();
            let mut dst = vec![-1.0; c * ldd];
            strided(&src, lds, (r, c), &mut dst, ldd);
            for j in 0..c {
                for i in 0..ldd {
                    let want = if i < r { src[i * lds + j] } else { -1.0 };
                    assert_eq!(dst[j * ldd + i], want, "{r} x {c} ({lds}, {ldd}) [{i},{j}]");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside its slices")]
    fn a_matrix_past_its_slice_is_a_callers_bug() {
        let mut dst = vec![0.0; 6];
        strided(&[0.0; 5], 3, (2, 3), &mut dst, 2);
    }
}
