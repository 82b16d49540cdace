//! What the AVX2 kernels share (for x86 CPUs without AVX-512): whether the CPU runs them,
//! and the sum of a register's lanes.

use std::arch::x86_64::*;

/// Whether this CPU runs the AVX2 kernels: AVX2, FMA and F16C (every x86 CPU since
/// Intel Haswell and AMD Zen).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The sum of the 8 lanes of `v` (halves, then pairs, then the last two).
///
/// # Safety
/// AVX must be available.
#[inline(always)]
pub unsafe fn sum_lanes(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
}
