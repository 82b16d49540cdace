//! Register-resident peak loops of one CPU core: the f32 FMA loop in the widest ISA the
//! CPU has at run time (AVX-512F, AVX2+FMA, NEON, else a portable loop) and the native
//! bf16 dot loops where it has them (AVX512-BF16 `VDPBF16PS`; AMX-BF16 `TDPBF16PS` on
//! tiles where this process may use them: [`crate::amx`]). Each loop's FLOP count is
//! known, so its time gives a rate no op on that core can exceed. The bench's host
//! ceilings run them on every thread; the CPU backend compares the f32 FMA and
//! `VDPBF16PS` loops on one core to choose its bf16 kernels.

use std::hint::black_box;

/// A register-resident loop: `run(iters)` performs `flops_per_iter * iters` FLOPs.
#[derive(Clone, Copy, Debug)]
pub struct PeakLoop {
    /// The instructions it runs ("AVX-512F", "AVX512-BF16 VDPBF16PS", ...).
    pub isa: &'static str,
    /// Independent accumulator registers (at least latency x pipes of current cores, so
    /// the loop is bound by throughput, not latency).
    pub accumulators: usize,
    /// FLOPs of one iteration (a multiply and its addition count 2).
    pub flops_per_iter: f64,
    /// Runs `iters` iterations; the result only keeps the work from being optimised away.
    pub run: fn(u64) -> f32,
}

/// The widest FMA loop this CPU runs.
pub fn fma_loop() -> PeakLoop {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return PeakLoop {
                isa: "AVX-512F",
                accumulators: x86::ACC,
                flops_per_iter: (x86::ACC * 16 * 2) as f64,
                // SAFETY: AVX-512F was detected at run time just above.
                run: |n| unsafe { x86::fma_avx512(n) },
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return PeakLoop {
                isa: "AVX2+FMA",
                accumulators: x86::ACC_256,
                flops_per_iter: (x86::ACC_256 * 8 * 2) as f64,
                // SAFETY: AVX2 and FMA were detected at run time just above.
                run: |n| unsafe { x86::fma_avx2(n) },
            };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return PeakLoop {
                isa: "NEON",
                accumulators: arm::ACC,
                flops_per_iter: (arm::ACC * 4 * 2) as f64,
                // SAFETY: NEON was detected at run time just above.
                run: |n| unsafe { arm::fma_neon(n) },
            };
        }
    }
    PeakLoop {
        isa: "portable",
        accumulators: PORTABLE_ACC,
        flops_per_iter: (PORTABLE_ACC * 2) as f64,
        run: fma_portable,
    }
}

/// The native bf16 dot loop, where the CPU has one.
pub fn bf16_dot_loop() -> Option<PeakLoop> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            return Some(PeakLoop {
                isa: "AVX512-BF16 VDPBF16PS",
                accumulators: x86::ACC,
                // 16 lanes, each adding two bf16 products: 4 FLOPs.
                flops_per_iter: (x86::ACC * 16 * 4) as f64,
                // SAFETY: AVX512-BF16 and AVX-512F were detected at run time just above.
                run: |n| unsafe { x86::dot_bf16_avx512(n) },
            });
        }
    }
    None
}

/// The native bf16 dot loop on AMX tiles, where this process may use them
/// ([`crate::amx::enabled`]).
pub fn bf16_tile_loop() -> Option<PeakLoop> {
    #[cfg(target_arch = "x86_64")]
    if crate::amx::enabled() {
        return Some(PeakLoop {
            isa: "AMX-BF16 TDPBF16PS",
            accumulators: tiles::ACC,
            // Each accumulator tile: 16 x 16 f32 outputs, each adding 32 bf16 products.
            flops_per_iter: (tiles::ACC * 16 * 16 * 32 * 2) as f64,
            // SAFETY: `amx::enabled` returned true just above.
            run: |n| unsafe { tiles::dot_bf16(n) },
        });
    }
    None
}

/// Independent accumulators of the portable loop (the compiler vectorises them to whatever
/// the build's baseline ISA has).
const PORTABLE_ACC: usize = 64;

/// `acc = acc * a + b` on [`PORTABLE_ACC`] independent lanes, `n` times (a multiply and an
/// add: 2 FLOPs each).
fn fma_portable(n: u64) -> f32 {
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    let mut acc = [1.0f32; PORTABLE_ACC];
    for _ in 0..n {
        for x in acc.iter_mut() {
            *x = *x * a + b;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Independent 512-bit accumulators: enough to cover FMA latency x throughput (4 x 2
    /// on current cores, 6 x 2 for VDPBF16PS) with room to spare, within 32 registers.
    pub const ACC: usize = 24;
    /// Independent 256-bit accumulators (16 registers, two hold the constants).
    pub const ACC_256: usize = 12;

    /// `n` rounds of an FMA on each of [`ACC`] 16-lane f32 accumulators.
    #[target_feature(enable = "avx512f")]
    pub fn fma_avx512(n: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        sum(&acc)
    }

    /// The sum of every lane of the [`ACC`] accumulators (outside the timed loops: it only
    /// keeps their work from being optimised away).
    #[target_feature(enable = "avx512f")]
    fn sum(acc: &[__m512; ACC]) -> f32 {
        let total = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(total)
    }

    /// `n` rounds of an FMA on each of [`ACC_256`] 8-lane f32 accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub fn fma_avx2(n: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); ACC_256];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        for x in acc {
            let mut v = [0.0f32; 8];
            // SAFETY: `v` is 8 f32s, the unaligned store writes exactly those.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), x) };
            for (l, e) in lanes.iter_mut().zip(v) {
                *l += e;
            }
        }
        lanes.iter().sum()
    }

    /// `n` rounds of `VDPBF16PS` on each of [`ACC`] accumulators (16 lanes, two bf16
    /// products each). The inputs are 2^-10: every accumulator grows by 2^-19 a round and
    /// stays normal and finite.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub fn dot_bf16_avx512(n: u64) -> f32 {
        let x = _mm512_set1_ps(1.0 / 1024.0);
        let (a, b) = (_mm512_cvtne2ps_pbh(x, x), _mm512_cvtne2ps_pbh(x, x));
        let mut acc = [_mm512_setzero_ps(); ACC];
        for _ in 0..n {
            for s in acc.iter_mut() {
                *s = _mm512_dpbf16_ps(*s, a, b);
            }
        }
        sum(&acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use crate::amx::{self, TileConfig};

    /// Accumulator tiles (0 to 3), each fed by one of two `a` tiles (4, 5) and one of two
    /// `b` tiles (6, 7): 4 independent `TDPBF16PS` chains, enough to keep the tile unit
    /// busy (Intel's optimization manual, "Intel AMX": 16-cycle throughput).
    pub const ACC: usize = 4;

    /// `n` rounds of `TDPBF16PS` on each of [`ACC`] accumulator tiles; every input is
    /// 2^-10, so each round adds 32 * 2^-20 = 2^-15 to each of the 256 outputs of a tile,
    /// which stay exact and finite. Returns the sum of every output.
    ///
    /// # Safety
    /// [`amx::enabled`] must have returned true.
    pub unsafe fn dot_bf16(n: u64) -> f32 {
        // 2^-10 as bf16: exponent 117, no mantissa.
        let inputs = [0x3A80u16; 16 * 32];
        let mut outputs = [0.0f32; ACC * 256];
        let config = TileConfig::new(&[(16, 64); 8]).expect("palette 1 shapes");
        let (p, o) = (inputs.as_ptr().cast(), outputs.as_mut_ptr());
        // SAFETY: tiles are enabled (the caller's promise); every tile is 16 rows of 64
        // bytes, loaded from the 1 KiB `inputs` and stored to 1 KiB of `outputs` each,
        // with a 64-byte stride.
        unsafe {
            config.load();
            amx::load::<4>(p, 64);
            amx::load::<5>(p, 64);
            amx::load::<6>(p, 64);
            amx::load::<7>(p, 64);
            for _ in 0..n {
                amx::dot_bf16::<0, 4, 6>();
                amx::dot_bf16::<1, 4, 7>();
                amx::dot_bf16::<2, 5, 6>();
                amx::dot_bf16::<3, 5, 7>();
            }
            amx::store::<0>(o.cast(), 64);
            amx::store::<1>(o.add(256).cast(), 64);
            amx::store::<2>(o.add(512).cast(), 64);
            amx::store::<3>(o.add(768).cast(), 64);
            amx::release();
        }
        outputs.iter().sum()
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    /// Independent 128-bit accumulators (32 registers, two hold the constants).
    pub const ACC: usize = 24;

    /// `n` rounds of an FMA on each of [`ACC`] 4-lane f32 accumulators.
    #[target_feature(enable = "neon")]
    pub fn fma_neon(n: u64) -> f32 {
        let (a, b) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
        let mut acc = [vdupq_n_f32(1.0); ACC];
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = vfmaq_f32(b, *x, a);
            }
        }
        acc.iter().map(|&x| vaddvq_f32(x)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_compute_what_they_claim() {
        // acc -> acc * a + b converges to b / (1 - a) = 0.1 from 1.0; after n steps every
        // lane is 0.1 + 0.9 * a^n (f32 rounding aside).
        let lane = |n: i32| 0.1 + 0.9 * 0.999_999f64.powi(n);
        let k = fma_loop();
        let lanes = k.flops_per_iter / 2.0;
        let got = (k.run)(1000) as f64;
        assert!(
            (got - lanes * lane(1000)).abs() < 1e-3 * got,
            "{} {got}",
            k.isa
        );
        if let Some(k) = bf16_dot_loop() {
            // Each round adds 2 * 2^-20 per lane.
            let lanes = k.flops_per_iter / 4.0;
            let got = (k.run)(1000) as f64;
            assert_eq!(got, lanes * 1000.0 * 2.0 / (1 << 20) as f64);
        }
        if let Some(k) = bf16_tile_loop() {
            // Each round adds 32 * 2^-20 per output; 256 outputs per accumulator tile.
            let outputs = k.flops_per_iter / 64.0;
            assert_eq!(outputs, (k.accumulators * 256) as f64);
            let got = (k.run)(1000) as f64;
            assert_eq!(got, outputs * 1000.0 * 32.0 / (1 << 20) as f64);
        }
    }
}
