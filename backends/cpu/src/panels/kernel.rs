//! The products of weight panels with column panels of tokens on AVX-512F: each weight
//! vector (16 rows of one column) meets every token of a block broadcast from memory, so
//! every lane of every FMA holds a real output, whatever the block's token count.

use super::{LANES, MAX_BLOCK_PANELS, MAX_BLOCK_TOKENS};

/// How one block meets its stretch of columns.
#[derive(Clone, Copy)]
pub struct Pass {
    /// Add the products to the outputs (else overwrite them).
    pub accumulate: bool,
    /// Request each panel ahead as it is read: 4 KiB ahead into L1, and one
    /// [`CHUNK`](super::CHUNK) of columns ahead into L2 (the same column of the next chunk,
    /// for a caller that walks its panels chunk by chunk).
    pub prefetch: bool,
}

/// `out[j][t * 16 + l] = (pass.accumulate ? out[j][t * 16 + l] : 0) + sum_{kk < k}
/// x(t, kk) * w[j][kk * 16 + l]` for the weight panels `w[j]` (columns of 16 rows,
/// `[k, 16]`), the block's `tokens` tokens and `l < 16`, where token `t`'s value at column
/// `kk` is `x[(kk / 16) * stride + t * 16 + kk % 16]` (column panels `stride` apart, the
/// block's first token first). Returns false, writing nothing, where the CPU lacks
/// AVX-512F.
///
/// # Panics
/// Where the panels, tokens or outputs do not fit their slices, or `w` and `out` hold
/// more than [`MAX_BLOCK_PANELS`] panels or `tokens` exceeds [`MAX_BLOCK_TOKENS`] (a
/// caller's bug).
pub fn products(
    w: &[&[f32]],
    (x, stride, tokens): (&[f32], usize, usize),
    k: usize,
    out: &mut [&mut [f32]],
    pass: Pass,
) -> bool {
    let panels = w.len();
    assert!(
        panels == out.len() && panels <= MAX_BLOCK_PANELS && tokens <= MAX_BLOCK_TOKENS,
        "{panels} panels with {} outputs, {tokens} tokens",
        out.len()
    );
    if panels == 0 || tokens == 0 {
        return true;
    }
    let weights_fit = k
        .checked_mul(LANES)
        .is_some_and(|n| w.iter().all(|p| p.len() >= n));
    let outputs_fit = out.iter().all(|o| o.len() >= tokens * LANES);
    // Last column panel read: (k - 1) / 16, up to its 16th value of the last token.
    let x_fits = k == 0
        || ((k - 1) / LANES)
            .checked_mul(stride)
            .and_then(|s| s.checked_add(tokens * LANES))
            .is_some_and(|end| end <= x.len() && tokens * LANES <= stride);
    assert!(
        weights_fit && outputs_fit && x_fits,
        "{panels} panels x {tokens} tokens x {k} columns outside their slices"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let wp: [*const f32; MAX_BLOCK_PANELS] = std::array::from_fn(|j| match w.get(j) {
            Some(p) => p.as_ptr(),
            None => std::ptr::null(),
        });
        let mut op: [*mut f32; MAX_BLOCK_PANELS] = [std::ptr::null_mut(); MAX_BLOCK_PANELS];
        for (o, slot) in out.iter_mut().zip(&mut op) {
            *slot = o.as_mut_ptr();
        }
        let args = x86::Block {
            w: wp,
            x: x.as_ptr(),
            stride,
            k,
            out: op,
            pass,
        };
        // SAFETY: AVX-512F was detected at run time; the asserts above keep every weight
        // (k x 16 per panel), token value and output (tokens x 16 per panel) the kernel
        // reads or writes inside its slice (its prefetch hints may point past it, which
        // never faults), and the panel count within the arrays' first entries.
        unsafe { x86::dispatch(panels, tokens, &args) };
        return true;
    }
    let _ = (x, pass);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Pass, LANES, MAX_BLOCK_PANELS};
    use crate::panels::CHUNK;
    use std::arch::x86_64::*;

    /// The operands of one block (see [`super::products`]); `w` and `out` hold the
    /// block's panels first.
    pub struct Block {
        pub w: [*const f32; MAX_BLOCK_PANELS],
        pub x: *const f32,
        pub stride: usize,
        pub k: usize,
        pub out: [*mut f32; MAX_BLOCK_PANELS],
        pub pass: Pass,
    }

    /// [`block`] instantiated for `panels` (1 or 2) and `tokens` (1..=12).
    ///
    /// # Safety
    /// As [`block`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dispatch(panels: usize, tokens: usize, b: &Block) {
        macro_rules! by_tokens {
            ($p:literal) => {
                match tokens {
                    1 => block::<$p, 1>(b),
                    2 => block::<$p, 2>(b),
                    3 => block::<$p, 3>(b),
                    4 => block::<$p, 4>(b),
                    5 => block::<$p, 5>(b),
                    6 => block::<$p, 6>(b),
                    7 => block::<$p, 7>(b),
                    8 => block::<$p, 8>(b),
                    9 => block::<$p, 9>(b),
                    10 => block::<$p, 10>(b),
                    11 => block::<$p, 11>(b),
                    _ => block::<$p, 12>(b),
                }
            };
        }
        match panels {
            1 => by_tokens!(1),
            _ => by_tokens!(2),
        }
    }

    /// How far ahead (floats, 4 KiB) a prefetching block requests each panel into L1 as
    /// it reads it. In the op on the 2-core Zen 5 dev machine (V2-Lite T = 256 f32, weights
    /// on huge pages, A/B in one process, every block prefetching): none 83 ms, 4 KiB into
    /// L1 65 ms, 32 KiB into L2 alone 73 ms; the matrix-vector kernels' 8 KiB (two streams
    /// of 4 KiB here) agrees. BENCHMARKS.md has the rest.
    const AHEAD_L1: usize = 1024;

    /// How far ahead (floats) a prefetching block requests each panel into L2: the same
    /// column of the next chunk, so that the chunk streams in while the block's followers
    /// compute. In the op on a 2-core Zen 4 (A/B in one process, min ms of three rounds):
    /// V2-Lite T = 256 f32 139-145 against 145-159 with the L1 prefetch alone, H = 7168
    /// T = 64 223-227 against 230-237; BENCHMARKS.md has the rest.
    const AHEAD_L2: usize = CHUNK * LANES;

    /// [`super::products`] for `P` panels and `T` tokens: `P * T` accumulators in
    /// registers, each column's `P` weight vectors loaded once and each token's value
    /// broadcast once.
    ///
    /// # Safety
    /// AVX-512F must be available; the first `P` panels hold `k * 16` readable floats,
    /// the first `P` outputs `T * 16` writable ones, and every token value
    /// `x + (kk / 16) * stride + t * 16 + kk % 16` (`kk < k`, `t < T`) is readable.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const P: usize, const T: usize>(b: &Block) {
        let mut acc = [[_mm512_setzero_ps(); T]; P];
        if b.pass.accumulate {
            for (j, row) in acc.iter_mut().enumerate() {
                for (t, a) in row.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(b.out[j].add(t * LANES));
                }
            }
        }
        let mut first = 0;
        while first < b.k {
            let live = (b.k - first).min(LANES);
            let xc = b.x.add(first / LANES * b.stride);
            for l in 0..live {
                let col = (first + l) * LANES;
                let wv: [__m512; P] = std::array::from_fn(|j| _mm512_loadu_ps(b.w[j].add(col)));
                if b.pass.prefetch {
                    for w in &b.w[..P] {
                        // Hints (they never fault): past the panel's end they land on the
                        // next panel in memory or are wasted.
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(col + AHEAD_L1).cast::<i8>());
                        _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(col + AHEAD_L2).cast::<i8>());
                    }
                }
                // `t` and `j` index the register tile `acc[j][t]` across the two loops.
                #[allow(clippy::needless_range_loop)]
                for t in 0..T {
                    let v = _mm512_set1_ps(*xc.add(t * LANES + l));
                    for j in 0..P {
                        acc[j][t] = _mm512_fmadd_ps(wv[j], v, acc[j][t]);
                    }
                }
            }
            first += LANES;
        }
        for (j, row) in acc.iter().enumerate() {
            for (t, a) in row.iter().enumerate() {
                _mm512_storeu_ps(b.out[j].add(t * LANES), *a);
            }
        }
    }
}
