//! Activation vectors prepared for the native bf16 dot kernels of [`super`]: per
//! 128-column group a vector goes as its own bf16 values (scale 1) when they all are
//! normal bf16 values (bf16 tokens, UE8M0-quantized activations), or as `q = bf16(v / sc)`
//! with `sc = max|v| / 448` when every `q * sc` is within `|v| * 2^-20` of `v` (a relative
//! bound; activations quantized with f32 scales: `q` is the e4m3 code's value); any other
//! group, or a non-finite value, declines them and the caller takes the f32 path.

use super::quads::QuadForm;
use super::tiles::TileForm;
use super::{available, STEP};
use crate::aligned::Aligned;
use crate::kept::with_buffer;
use moemla_core::fp8::BLOCK;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Largest prepared activation buffer (bf16 words; 4 MiB) a thread keeps for its next
/// call (and of their scales: at most one per [`STEP`] padded words).
const PREPARED_KEEP: usize = 2 << 20;

thread_local! {
    /// Per-thread buffer of the prepared bf16 activations.
    static PREPARED: Cell<Aligned<u16>> = const { Cell::new(Aligned::new()) };
    /// Per-thread buffer of the activations' per-group scales.
    static ACT_SCALES: Cell<Aligned<f32>> = const { Cell::new(Aligned::new()) };
}

/// Activation vectors prepared for the prefill kernels of [`super`] (see [`prepare`]),
/// as the kernel that will take them reads them ([`Layout`]). An expert's tokens are
/// prepared once for all its weight tiles.
#[derive(Debug)]
pub struct Prepared {
    n: usize,
    k: usize,
    form: Form,
}

/// [`Prepared`]'s vectors, held once.
#[derive(Debug)]
enum Form {
    /// For the grid ([`super::many`]): bf16 words per 64 columns, vector after vector
    /// (`[ceil(k / 64)][n][64]`), and per-128-column scales (`[ceil(k / 128)][n]`), so
    /// that the vectors of a step lie at constant offsets from one pointer; `unit`: every
    /// scale is 1.
    Grid {
        words: Aligned<u16>,
        scales: Aligned<f32>,
        unit: bool,
    },
    /// For the quad kernel ([`super::quads`]), from [`super::quads::MIN_VECTORS`]
    /// vectors: in parts.
    Quads(Vec<QuadForm>),
    /// For AMX tiles ([`super::tiles`]), wherever this process may use them.
    Tiles(TileForm),
}

/// What a prefill kernel reads of [`Prepared`] vectors.
pub(super) enum Layout<'a> {
    /// The grid's view.
    Grid(View),
    /// The quad kernel's parts.
    Quads(&'a [QuadForm]),
    /// The tiles' pairs.
    Tiles(&'a TileForm),
}

impl Prepared {
    /// The vectors of `act` (`act.len() / k` of `k` values each) prepared, for AMX tiles
    /// wherever this process may use them ([`moemla_core::amx::enabled`]); `None` where
    /// the CPU lacks this path ([`available`]), `act` is not whole vectors, a vector is
    /// declined (see the module) or the memory is not there.
    pub fn new(act: &[f32], k: usize) -> Option<Self> {
        Self::build(act, k, true)
    }

    /// [`Prepared::new`], for tiles only where `tiles` allows them (as well as the
    /// process): off them, the grid or the quad kernel takes the vectors.
    pub(crate) fn build(act: &[f32], k: usize, tiles: bool) -> Option<Self> {
        if !available() || k == 0 || act.is_empty() || !act.len().is_multiple_of(k) {
            return None;
        }
        let (mut words, mut scales) = (Aligned::new(), Aligned::new());
        let n = act.len() / k;
        // SAFETY: `available` (checked above) includes AVX-512F/BW; `act` holds n * k values.
        if !unsafe { fill(&mut words, &mut scales, act, k, n) } {
            return None;
        }
        let unit = all_one(&scales);
        let view = View {
            words: words.as_ptr(),
            scales: scales.as_ptr(),
            n,
            unit,
        };
        if tiles && moemla_core::amx::enabled() {
            // SAFETY: the view points at the n vectors of k columns just prepared; the
            // tile form copies them (the grid's words are dropped then).
            let tiles = unsafe { TileForm::new(view, k) }?;
            let form = Form::Tiles(tiles);
            return Some(Prepared { n, k, form });
        }
        // SAFETY: the view points at the n vectors of k columns just prepared; the quad
        // form copies them (the grid's words are dropped then).
        let form = match unsafe { QuadForm::parts(view, k) } {
            Some(parts) => Form::Quads(parts),
            None if n >= super::quads::MIN_VECTORS => return None,
            None => Form::Grid {
                words,
                scales,
                unit,
            },
        };
        Some(Prepared { n, k, form })
    }

    /// How many vectors.
    pub fn vectors(&self) -> usize {
        self.n
    }

    /// Their length (columns).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The vectors as the kernel that takes them reads them.
    pub(super) fn layout(&self) -> Layout<'_> {
        match &self.form {
            Form::Grid {
                words,
                scales,
                unit,
            } => Layout::Grid(View {
                words: words.as_ptr(),
                scales: scales.as_ptr(),
                n: self.n,
                unit: *unit,
            }),
            Form::Quads(parts) => Layout::Quads(parts),
            Form::Tiles(tiles) => Layout::Tiles(tiles),
        }
    }

    /// Whether the quad kernel takes these vectors.
    #[cfg(test)]
    pub(crate) fn on_quads(&self) -> bool {
        matches!(self.form, Form::Quads(_))
    }
}

/// Prepared vectors as the kernels read them: `n` vectors, words `[steps][n][64]` and
/// scales `[blocks][n]` (see [`Prepared`]).
#[derive(Clone, Copy)]
pub(super) struct View {
    pub(super) words: *const u16,
    pub(super) scales: *const f32,
    pub(super) n: usize,
    /// Every scale is 1 (the vectors are their own bf16 values: bf16 tokens, and the
    /// SwiGLU activations of a BF16 run), so the kernels may leave them out.
    pub(super) unit: bool,
}

/// Whether every scale is exactly 1.
fn all_one(scales: &[f32]) -> bool {
    scales.iter().all(|&s| s == 1.0)
}

/// Prepares the `n` vectors of `act` (`k` long each; see [`prepare`]) into this thread's
/// buffers and runs `f` on them; false (`f` not run) when a vector is declined or the
/// memory is not there.
///
/// # Safety
/// AVX-512F/BW must be available; `act` must hold `n * k` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn with_prepared(k: usize, n: usize, act: &[f32], f: impl FnOnce(View)) -> bool {
    with_buffer(&PREPARED, PREPARED_KEEP, |words| {
        with_buffer(&ACT_SCALES, PREPARED_KEEP / STEP, |scales| {
            // SAFETY: as this function's contract.
            let ok = unsafe { fill(words, scales, act, k, n) };
            if ok {
                f(View {
                    words: words.as_ptr(),
                    scales: scales.as_ptr(),
                    n,
                    unit: all_one(scales),
                });
            }
            ok
        })
    })
}

/// Fills `words` and `scales` (their contents replaced; grown fallibly) with the `n`
/// vectors of `act` in [`Prepared`]'s layout; false when a vector is declined or the memory
/// is not there.
///
/// # Safety
/// AVX-512F/BW must be available; `act` must hold `n * k` values.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fill(
    words: &mut Aligned<u16>,
    scales: &mut Aligned<f32>,
    act: &[f32],
    k: usize,
    n: usize,
) -> bool {
    let len_words = k
        .div_ceil(STEP)
        .checked_mul(STEP)
        .and_then(|w| w.checked_mul(n));
    let len_scales = k.div_ceil(BLOCK).checked_mul(n);
    let Some((len_words, len_scales)) = len_words.zip(len_scales) else {
        return false;
    };
    words.clear();
    scales.clear();
    // Fallible: where the memory is not there, decline; the caller's dequantized path
    // then reports it as a typed error.
    const WHAT: &str = "fp8 prepared activations";
    if words.try_resize(len_words, 0, WHAT).is_err()
        || scales.try_resize(len_scales, 1.0, WHAT).is_err()
    {
        return false;
    }
    for (j, vector) in act.chunks_exact(k).take(n).enumerate() {
        // SAFETY: AVX-512F/BW are available; the buffers hold n vectors' words and scales.
        if !unsafe { prepare(vector, j, n, words, scales) } {
            return false;
        }
    }
    true
}

/// Writes `vector` (number `j` of `n`) as bf16 words into `words` and its per-128-group
/// scales into `scales`, in [`Prepared`]'s layout, as the module says; false (partly
/// written) when a group can be neither. Within each 64 columns the word order is the one
/// [`super::decode`] gives the codes: for each 16-column quarter q its first 8 at words
/// `8q..8q + 8`, its last 8 at `32 + 8q..`.
///
/// # Safety
/// AVX-512F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn prepare(
    vector: &[f32],
    j: usize,
    n: usize,
    words: &mut [u16],
    scales: &mut [f32],
) -> bool {
    assert!(
        j < n
            && words.len() >= vector.len().div_ceil(STEP) * STEP * n
            && scales.len() >= vector.len().div_ceil(BLOCK) * n
    );
    let top = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let magnitude = _mm512_set1_epi32(0x7FFF_FFFF);
    let exponent = _mm512_set1_epi32(0x7F80_0000);
    let zero = _mm512_setzero_si512();
    let d = words.as_mut_ptr();
    for (b, group) in vector.chunks(BLOCK).enumerate() {
        let mut v = [_mm512_setzero_ps(); BLOCK / 16];
        let (mut special, mut tiny) = (0u16, 0u16);
        let (mut low, mut amax) = (zero, _mm512_setzero_ps());
        for (i, vi) in v.iter_mut().enumerate() {
            let live = group.len().saturating_sub(16 * i).min(16);
            // SAFETY: only the group's `live` lanes are read (a hint-free masked load; the
            // address is not dereferenced past them).
            *vi = _mm512_maskz_loadu_ps(
                crate::lanes::first16(live),
                group.as_ptr().wrapping_add(16 * i),
            );
            let bits = _mm512_castps_si512(*vi);
            let e = _mm512_and_si512(bits, exponent);
            special |= _mm512_cmpeq_epi32_mask(e, exponent);
            tiny |= _mm512_cmpeq_epi32_mask(e, zero) & _mm512_test_epi32_mask(bits, magnitude);
            low = _mm512_or_si512(low, _mm512_andnot_si512(top, bits));
            amax = _mm512_max_ps(amax, _mm512_castsi512_ps(_mm512_and_si512(bits, magnitude)));
        }
        if special != 0 {
            return false;
        }
        let mut scale = 1.0;
        if _mm512_test_epi32_mask(low, low) != 0 || tiny != 0 {
            // Not all normal bf16 values: try q = bf16(v / sc), sc = max|v| / 448.
            scale = _mm512_reduce_max_ps(amax) / 448.0;
            let sc = _mm512_set1_ps(scale);
            let tolerance = _mm512_set1_ps(2f32.powi(-20));
            let mut bad = 0u16;
            for vi in v.iter_mut() {
                let q = _mm512_castps_si512(_mm512_div_ps(*vi, sc));
                // Round to nearest even at bit 16.
                let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(q), _mm512_set1_epi32(1));
                let r = _mm512_and_si512(
                    _mm512_add_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(0x7FFF)), odd),
                    top,
                );
                let back = _mm512_mul_ps(_mm512_castsi512_ps(r), sc);
                let err = _mm512_abs_ps(_mm512_sub_ps(back, *vi));
                let bound = _mm512_mul_ps(_mm512_abs_ps(*vi), tolerance);
                // Unordered (a NaN error: sc 0 or not finite) counts as bad.
                bad |= _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(err, bound);
                bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(r, exponent), zero)
                    & _mm512_test_epi32_mask(r, magnitude);
                *vi = _mm512_castsi512_ps(r);
            }
            if bad != 0 {
                return false;
            }
        }
        scales[b * n + j] = scale;
        for (i, vi) in v.iter().enumerate().take(group.len().div_ceil(16)) {
            let g = b * (BLOCK / 16) + i;
            let at = (g / 4 * n + j) * STEP + g % 4 * 8;
            let w16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(*vi)));
            // SAFETY: at + 40 <= the end of vector j's words of step g / 4, inside `words`
            // (asserted).
            _mm_storeu_si128(d.add(at).cast(), _mm256_castsi256_si128(w16));
            _mm_storeu_si128(d.add(at + 32).cast(), _mm256_extracti128_si256::<1>(w16));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prepares `v` (one vector); `None` when declined, else the bf16 values and scales.
    fn prepared(v: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
        let padded = v.len().div_ceil(STEP) * STEP;
        let mut words = vec![0u16; padded];
        let mut scales = vec![1.0f32; v.len().div_ceil(BLOCK)];
        // SAFETY: available() (checked by the caller) includes AVX-512F/BW.
        if !unsafe { prepare(v, 0, 1, &mut words, &mut scales) } {
            return None;
        }
        let values = (0..padded)
            .map(|c| {
                let at = c / 64 * 64 + (c % 16 / 8) * 32 + (c % 64 / 16) * 8 + c % 8;
                f32::from_bits(u32::from(words[at]) << 16)
            })
            .collect();
        Some((values, scales))
    }

    #[test]
    fn activations_go_as_bf16_values_or_as_quantized_codes_else_decline() {
        if !available() {
            return;
        }
        // 200 columns: a whole group and a partial one; padded to 256 with zeros.
        let bf16s: Vec<f32> = (0..200)
            .map(|i| f32::from_bits(((i as f32 * 0.7311).sin() * 3.0).to_bits() & 0xFFFF_0000))
            .collect();
        let (values, scales) = prepared(&bf16s).unwrap();
        assert_eq!(values[..200], bf16s[..]);
        assert!(values[200..].iter().all(|&v| v == 0.0));
        assert_eq!(scales, vec![1.0, 1.0]);
        // Quantized as fp8_block128 with f32 scales: q is each value's code, scaled back
        // within |v| * 2^-20.
        let raw: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).cos() * 0.013).collect();
        let mut quantized = raw.clone();
        moemla_core::fp8::quantize_activation_row(&mut quantized, moemla_core::fp8::ScaleMode::F32);
        let (values, scales) = prepared(&quantized).unwrap();
        for (c, &v) in quantized.iter().enumerate() {
            let q = values[c];
            assert_eq!(
                moemla_core::fp8::e4m3_decode(moemla_core::fp8::e4m3_encode(q)),
                q,
                "column {c}"
            );
            let back = q as f64 * scales[c / 128] as f64;
            assert!(
                (back - v as f64).abs() <= v.abs() as f64 * 2f64.powi(-20),
                "column {c}"
            );
        }
        // Plain f32 values, a bf16 subnormal, inf and NaN: declined.
        assert!(prepared(&raw).is_none());
        assert!(prepared(&[1.0, f32::INFINITY]).is_none());
        assert!(prepared(&[f32::NAN, 1.0]).is_none());
        // An exact bf16 that VDPBF16PS would read as 0 (a subnormal), in a group that
        // cannot be scaled either.
        let mut tiny = bf16s.clone();
        tiny[3] = f32::from_bits(0x0001_0000);
        assert!(prepared(&tiny).is_none());
    }

    #[test]
    fn vectors_lie_side_by_side_per_step_with_their_scales_per_block() {
        if !available() {
            return;
        }
        // Three vectors of 200 columns (four steps, the last partial): bf16 values, then
        // quantized ones, then bf16 values again.
        let (k, n) = (200, 3);
        let mut act: Vec<f32> = (0..n * k)
            .map(|i| f32::from_bits(((i as f32 * 0.37).sin() * 2.0).to_bits() & 0xFFFF_0000))
            .collect();
        let raw: Vec<f32> = (0..k).map(|i| (i as f32 * 0.11).cos() * 0.02).collect();
        let mut quantized = raw;
        moemla_core::fp8::quantize_activation_row(&mut quantized, moemla_core::fp8::ScaleMode::F32);
        act[k..2 * k].copy_from_slice(&quantized);
        let p = Prepared::build(&act, k, false).expect("bf16 and quantized vectors are taken");
        assert_eq!((p.vectors(), p.cols()), (n, k));
        let Layout::Grid(view) = p.layout() else {
            panic!("3 vectors take the grid");
        };
        let Form::Grid {
            words,
            scales: p_scales,
            ..
        } = &p.form
        else {
            panic!("3 vectors take the grid");
        };
        assert_eq!(words.len(), 4 * n * STEP);
        for j in 0..n {
            let (alone, scales) = prepared(&act[j * k..(j + 1) * k]).unwrap();
            for (c, want) in alone.iter().enumerate() {
                let at = (c / STEP * n + j) * STEP + (c % 16 / 8) * 32 + (c % 64 / 16) * 8 + c % 8;
                let got = f32::from_bits(u32::from(words[at]) << 16);
                assert_eq!(got.to_bits(), want.to_bits(), "vector {j} column {c}");
            }
            for (b, &s) in scales.iter().enumerate() {
                assert_eq!(p_scales[b * n + j], s, "vector {j} block {b}");
            }
        }
        assert_ne!(p_scales[n + 1], 1.0, "the quantized vector is scaled");
        assert!(!view.unit, "a scaled vector: the kernels apply the scales");
        // The bf16 vectors alone: every scale is 1, and the view says so.
        let mut both = act[..k].to_vec();
        both.extend_from_slice(&act[2 * k..]);
        let p = Prepared::build(&both, k, false).unwrap();
        let (Form::Grid { scales, .. }, Layout::Grid(view)) = (&p.form, p.layout()) else {
            panic!("2 vectors take the grid");
        };
        assert!(scales.iter().all(|&s| s == 1.0) && view.unit);
        let mut unit = None;
        // SAFETY: available() (checked above) includes AVX-512F/BW; `both` holds 2 * k values.
        assert!(unsafe { with_prepared(k, 2, &both, |v| unit = Some(v.unit)) });
        assert_eq!(unit, Some(true));
        // SAFETY: as above, `act` holds n * k values.
        assert!(unsafe { with_prepared(k, n, &act, |v| unit = Some(v.unit)) });
        assert_eq!(unit, Some(false));
    }
}
