//! Physical limits of the host CPU, measured directly: the f32 FMA peak (a register-resident
//! FMA loop on every hardware thread, the widest ISA the CPU has at run time), the native
//! bf16 dot-product rate where the CPU has one (AVX512-BF16 `VDPBF16PS`, or AMX-BF16 tiles
//! where this process may use them, whichever is faster), and the read
//! bandwidth (a parallel read-only reduction over a buffer at least 8x the last-level
//! cache); for data that stays in cache, the read bandwidth of a buffer in each core's own
//! cache and of buffers of growing size that fit the last-level cache ([`CacheStep`]). No
//! op can exceed them: they are the limits CPU rows are measured against.

mod read;

use crate::timing::Budget;
use moemla_core::peak::{bf16_dot_loop, bf16_tile_loop, fma_loop, PeakLoop};
use moemla_core::{Error, Result};
use serde::Serialize;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// The measured physical limits of this host.
#[derive(Clone, Debug, Serialize)]
pub struct HostLimits {
    /// Hardware threads every measurement ran on.
    pub threads: usize,
    /// f32 FMA peak, FLOP/s (a fused multiply-add counts 2).
    pub fma_flops: f64,
    /// The instructions of the FMA loop ("AVX-512F", "AVX2+FMA", "NEON", "portable").
    pub fma_isa: &'static str,
    /// Independent accumulator registers of the FMA and bf16 dot loops (at least latency x
    /// pipes of the cores measured: 4 x 2 for an FMA, 6 x 2 for VDPBF16PS, on current
    /// cores), so the loops are bound by throughput, not by latency.
    pub fma_accumulators: usize,
    /// Native bf16 dot-product peak, FLOP/s (each bf16 product and its addition count 2),
    /// `None` where the CPU has no native bf16 dot instruction.
    pub bf16_flops: Option<f64>,
    /// The bf16 dot instruction measured ("AVX512-BF16 VDPBF16PS", "AMX-BF16 TDPBF16PS"):
    /// the faster where the CPU has both.
    pub bf16_isa: Option<&'static str>,
    /// Independent accumulators of that bf16 loop (registers, or tiles for AMX).
    pub bf16_accumulators: Option<usize>,
    /// Read bandwidth, bytes/s (each byte read once).
    pub read_bandwidth: f64,
    /// Bytes of the buffer the read bandwidth was measured on.
    pub read_bytes: usize,
    /// Passes over that buffer (the best one counts).
    pub read_passes: usize,
    /// Whether the buffer was backed by huge pages on request (`MADV_HUGEPAGE`).
    pub read_huge_pages: bool,
    /// The last-level cache size the buffer was sized from, bytes (`None`: unknown, 32 MiB
    /// assumed).
    pub llc_bytes: Option<usize>,
    /// Cache read bandwidth, bytes/s: every thread re-reading a
    /// [`CACHE_READ_BYTES`] buffer (larger than any L1, held in L2), the widest loads the
    /// CPU has. The memory limit of rows whose data fits in the last-level cache (the
    /// benchmark re-reads the same inputs, so they come from cache, not from memory)
    /// when that data is smaller than the first of `cache_steps`.
    pub cache_read_bandwidth: f64,
    /// The read bandwidth of shared buffers from [`FIRST_CACHE_STEP`] up to the last-level
    /// cache, smallest first ([`cache_step_sizes`]).
    pub cache_steps: Vec<CacheStep>,
}

/// The read bandwidth of one buffer that fits the last-level cache, re-read as the
/// benchmark re-reads a row's inputs: every thread summing its own part of it (the part
/// it wrote first), the whole buffer many times per pass, the best pass. A row that reads
/// at least `bytes` cannot read them faster than this (a larger working set only misses
/// the caches more), so it is the memory limit of rows from `bytes` up to the next step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CacheStep {
    /// Bytes of the buffer.
    pub bytes: usize,
    /// Read bandwidth, bytes/s.
    pub bandwidth: f64,
}

/// The smallest [`CacheStep`] buffer; each next one is 4 times larger, up to the
/// last-level cache.
pub const FIRST_CACHE_STEP: usize = 4 << 20;

/// Bytes each thread reads at least in a [`CacheStep`] pass (the buffer re-read as many
/// times), so that a pass lasts long beside the barrier that starts it, whatever the
/// thread count.
const CACHE_STEP_THREAD_BYTES: usize = 128 << 20;

/// The buffer sizes of the [`CacheStep`]s for a last-level cache of `llc` bytes:
/// [`FIRST_CACHE_STEP`], then 4 times larger each, as long as they fit it; none where the
/// cache size is unknown.
pub fn cache_step_sizes(llc: Option<usize>) -> Vec<usize> {
    let llc = llc.unwrap_or(0);
    std::iter::successors(Some(FIRST_CACHE_STEP), |&b| b.checked_mul(4))
        .take_while(|&b| b <= llc)
        .collect()
}

/// Bytes each thread re-reads for the cache read bandwidth.
pub const CACHE_READ_BYTES: usize = 256 << 10;

/// The read buffer is at least this many times the last-level cache, so that it streams
/// from memory, not from cache.
pub const READ_LLC_FACTOR: usize = 8;
/// Last-level cache assumed where the OS does not say.
const ASSUMED_LLC: usize = 32 << 20;
/// Smallest read buffer: 64 MiB.
const MIN_READ_BYTES: usize = 64 << 20;

/// Measures every limit on all hardware threads. `budget` sets how long each loop runs
/// (a few milliseconds under [`Budget::QUICK`]). The read buffer is sized by
/// [`read_buffer_bytes`]; one the host cannot hold is [`Error::OutOfMemory`].
pub fn measure(budget: Budget) -> Result<HostLimits> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let target = budget
        .target
        .clamp(Duration::from_millis(5), Duration::from_millis(100));
    let reps = budget.min_reps.max(3);
    let fma = best_rate(threads, reps, target, fma_loop());
    let bf16 = [bf16_dot_loop(), bf16_tile_loop()]
        .into_iter()
        .flatten()
        .map(|k| (best_rate(threads, reps, target, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let llc_bytes = last_level_cache();
    let read_bytes = read_buffer_bytes(llc_bytes, available_memory())?;
    let read_passes = budget.max_reps.clamp(3, 20);
    let read = read::read_bandwidth(read_bytes, threads, read_passes, 1)?;
    let cache_read_bandwidth = cache_read_bandwidth(threads, reps, target);
    let cache_steps = (cache_step_sizes(llc_bytes).into_iter())
        .map(|bytes| {
            let repeats = CACHE_STEP_THREAD_BYTES
                .saturating_mul(threads)
                .div_ceil(bytes);
            let rate = read::read_bandwidth(bytes, threads, reps, repeats)?;
            Ok(CacheStep {
                bytes,
                bandwidth: rate.bytes_per_s,
            })
        })
        .collect::<Result<_>>()?;
    Ok(HostLimits {
        threads,
        fma_flops: fma,
        fma_isa: fma_loop().isa,
        fma_accumulators: fma_loop().accumulators,
        bf16_flops: bf16.map(|b| b.0),
        bf16_isa: bf16.map(|b| b.1.isa),
        bf16_accumulators: bf16.map(|b| b.1.accumulators),
        read_bandwidth: read.bytes_per_s,
        read_bytes,
        read_passes,
        read_huge_pages: read.huge_pages,
        llc_bytes,
        cache_read_bandwidth,
        cache_steps,
    })
}

impl HostLimits {
    /// The best of several measurements of this host (before and after the rows): each
    /// rate the largest measured, since every measurement is a lower bound of the same
    /// physical limit (a shared machine only ever makes a measurement lower). `None` for
    /// no measurement.
    pub fn best(all: &[HostLimits]) -> Option<HostLimits> {
        let (first, rest) = all.split_first()?;
        let mut best = first.clone();
        for h in rest {
            best.fma_flops = best.fma_flops.max(h.fma_flops);
            best.bf16_flops = best.bf16_flops.zip(h.bf16_flops).map(|(a, b)| a.max(b));
            best.read_bandwidth = best.read_bandwidth.max(h.read_bandwidth);
            best.cache_read_bandwidth = best.cache_read_bandwidth.max(h.cache_read_bandwidth);
            for s in &h.cache_steps {
                match best.cache_steps.iter_mut().find(|b| b.bytes == s.bytes) {
                    Some(b) => b.bandwidth = b.bandwidth.max(s.bandwidth),
                    None => {
                        best.cache_steps.push(*s);
                        best.cache_steps.sort_by_key(|b| b.bytes);
                    }
                }
            }
        }
        Some(best)
    }
}

/// The best FLOP/s of `reps` runs of `kernel` on `threads` threads started together, each
/// running about `target` long.
fn best_rate(threads: usize, reps: usize, target: Duration, kernel: PeakLoop) -> f64 {
    // Calibrate on one thread: iterations that take about `target`.
    let mut iters: u64 = 1 << 12;
    loop {
        let t0 = Instant::now();
        black_box((kernel.run)(black_box(iters)));
        let t = t0.elapsed();
        if t >= target / 8 || iters >= 1 << 40 {
            let scale = target.as_secs_f64() / t.as_secs_f64().max(1e-9);
            iters = ((iters as f64 * scale) as u64).clamp(1 << 12, 1 << 40);
            break;
        }
        iters *= 4;
    }
    let flops = kernel.flops_per_iter * iters as f64 * threads as f64;
    (0..reps)
        .map(|_| flops / on_every_thread(threads, || black_box((kernel.run)(black_box(iters)))))
        .fold(0.0, f64::max)
}

/// Wall time, seconds, from the moment `threads` threads are released together until the
/// last has run `work` once.
fn on_every_thread<T>(threads: usize, work: impl Fn() -> T + Sync) -> f64 {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let t0 = Instant::now();
                    black_box(work());
                    (t0, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("limit loops do not panic"))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min();
    let end = spans.iter().map(|s| s.1).max();
    match (start, end) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
        _ => 1e-9,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::sum_words`] in 512-bit loads (4 independent accumulators).
    #[target_feature(enable = "avx512f")]
    pub fn sum_words_avx512(words: &[u64]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut chunks = words.chunks_exact(32);
        for c in &mut chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 32 words; words 8j..8j + 8 lie inside it.
                let v = unsafe { _mm512_loadu_si512(c.as_ptr().add(8 * j).cast()) };
                *a = _mm512_add_epi64(*a, v);
            }
        }
        let tail = (chunks.remainder().iter()).fold(0u64, |s, &w| s.wrapping_add(w));
        acc.iter().fold(tail, |s, &a| {
            s.wrapping_add(_mm512_reduce_add_epi64(a) as u64)
        })
    }

    /// [`super::sum_words`] in 256-bit loads (4 independent accumulators).
    #[target_feature(enable = "avx2")]
    pub fn sum_words_avx2(words: &[u64]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut chunks = words.chunks_exact(16);
        for c in &mut chunks {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 16 words; words 4j..4j + 4 lie inside it.
                let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(4 * j).cast()) };
                *a = _mm256_add_epi64(*a, v);
            }
        }
        let mut sum = (chunks.remainder().iter()).fold(0u64, |s, &w| s.wrapping_add(w));
        for a in acc {
            let mut lanes = [0u64; 4];
            // SAFETY: `lanes` is 4 words, the unaligned store writes exactly those.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), a) };
            sum = lanes.iter().fold(sum, |s, &w| s.wrapping_add(w));
        }
        sum
    }
}

/// Size of the read-bandwidth buffer: [`READ_LLC_FACTOR`] x the last-level cache (32 MiB
/// assumed where unknown), at least 64 MiB. A size whose byte count overflows, or that is
/// more than half of `available` memory (where known), is [`Error::OutOfMemory`].
pub fn read_buffer_bytes(llc: Option<usize>, available: Option<u64>) -> Result<usize> {
    let llc = llc.unwrap_or(ASSUMED_LLC);
    let bytes = llc.checked_mul(READ_LLC_FACTOR).ok_or(Error::OutOfMemory {
        what: format!("read bandwidth buffer: {READ_LLC_FACTOR} x a {llc}-byte cache overflows"),
        bytes: usize::MAX,
    })?;
    let bytes = bytes.max(MIN_READ_BYTES);
    if let Some(avail) = available.filter(|&a| bytes as u64 > a / 2) {
        return Err(Error::OutOfMemory {
            what: format!(
                "read bandwidth buffer of {bytes} bytes ({READ_LLC_FACTOR} x the last-level \
                 cache): more than half of the host's {avail} available bytes"
            ),
            bytes,
        });
    }
    Ok(bytes)
}

/// Best cache read bandwidth of `reps` runs, bytes/s: every thread sums one shared
/// read-only [`CACHE_READ_BYTES`] buffer (a copy in each core's cache) over and over for
/// about `target`.
fn cache_read_bandwidth(threads: usize, reps: usize, target: Duration) -> f64 {
    let buf: Vec<u64> = (0..CACHE_READ_BYTES / 8).map(|i| i as u64).collect();
    let sum = read_kernel();
    let passes_in = |n: u64| {
        let t0 = Instant::now();
        for _ in 0..n {
            black_box(sum(black_box(&buf)));
        }
        t0.elapsed().as_secs_f64().max(1e-9)
    };
    passes_in(4);
    let passes = ((target.as_secs_f64() / (passes_in(16) / 16.0)) as u64).clamp(16, 1 << 20);
    let bytes = (passes as usize * CACHE_READ_BYTES * threads) as f64;
    (0..reps)
        .map(|_| {
            bytes
                / on_every_thread(threads, || {
                    for _ in 0..passes {
                        black_box(sum(black_box(&buf)));
                    }
                })
        })
        .fold(0.0, f64::max)
}

/// A wrapping sum of words in the widest loads this CPU has.
fn read_kernel() -> fn(&[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected at run time just above.
            return |w| unsafe { x86::sum_words_avx512(w) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected at run time just above.
            return |w| unsafe { x86::sum_words_avx2(w) };
        }
    }
    sum_words
}

/// Wrapping sum of `words` on 8 independent lanes (vectorised by the compiler for the
/// build's baseline ISA).
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |s, &w| s.wrapping_add(w));
    acc.iter().fold(tail, |s, &a| s.wrapping_add(a))
}

/// The largest cache of cpu0 from sysfs, bytes (`None` where the OS does not say).
fn last_level_cache() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("size")).ok())
        .filter_map(|s| parse_cache_size(s.trim()))
        .max()
}

/// "32768K" / "2M" / "512" (bytes) as bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1usize << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// `MemAvailable` from `/proc/meminfo`, bytes (`None` where unknown).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(fma: f64, bf16: Option<f64>, read: f64, cache: f64) -> HostLimits {
        HostLimits {
            threads: 2,
            fma_flops: fma,
            fma_isa: "test",
            fma_accumulators: 24,
            bf16_flops: bf16,
            bf16_isa: bf16.map(|_| "test"),
            bf16_accumulators: bf16.map(|_| 4),
            read_bandwidth: read,
            read_bytes: 256 << 20,
            read_passes: 20,
            read_huge_pages: true,
            llc_bytes: Some(32 << 20),
            cache_read_bandwidth: cache,
            cache_steps: vec![
                CacheStep {
                    bytes: 4 << 20,
                    bandwidth: cache / 2.0,
                },
                CacheStep {
                    bytes: 16 << 20,
                    bandwidth: cache / 4.0,
                },
            ],
        }
    }

    #[test]
    fn best_takes_each_rate_from_its_best_measurement() {
        assert!(HostLimits::best(&[]).is_none());
        let all = [
            limits(230e9, Some(450e9), 29e9, 200e9),
            limits(220e9, Some(460e9), 45e9, 190e9),
            limits(225e9, Some(455e9), 40e9, 212e9),
        ];
        let best = HostLimits::best(&all).unwrap();
        assert_eq!(best.fma_flops, 230e9);
        assert_eq!(best.bf16_flops, Some(460e9));
        assert_eq!(best.read_bandwidth, 45e9);
        assert_eq!(best.cache_read_bandwidth, 212e9);
        let steps: Vec<(usize, f64)> = (best.cache_steps.iter())
            .map(|s| (s.bytes, s.bandwidth))
            .collect();
        assert_eq!(steps, [(4 << 20, 106e9), (16 << 20, 53e9)]);
        let none = [limits(1.0, None, 1.0, 1.0), limits(2.0, None, 2.0, 2.0)];
        assert_eq!(HostLimits::best(&none).unwrap().bf16_flops, None);
    }

    #[test]
    fn cache_steps_grow_by_four_up_to_the_last_level_cache() {
        assert_eq!(cache_step_sizes(Some(32 << 20)), [4 << 20, 16 << 20]);
        assert_eq!(
            cache_step_sizes(Some(64 << 20)),
            [4 << 20, 16 << 20, 64 << 20]
        );
        assert_eq!(
            cache_step_sizes(Some(480 << 20)),
            [4 << 20, 16 << 20, 64 << 20, 256 << 20]
        );
        assert!(cache_step_sizes(Some(2 << 20)).is_empty());
        assert!(cache_step_sizes(None).is_empty());
        assert_eq!(cache_step_sizes(Some(usize::MAX)).len(), 21);
    }

    #[test]
    fn cache_sizes_parse_with_their_units() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("x"), None);
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("99999999999999999999G"), None);
    }

    #[test]
    fn read_buffer_is_eight_caches_checked_and_bounded_by_memory() {
        assert_eq!(read_buffer_bytes(Some(32 << 20), None).unwrap(), 256 << 20);
        // Small caches still stream: at least 64 MiB.
        assert_eq!(read_buffer_bytes(Some(1 << 20), None).unwrap(), 64 << 20);
        assert_eq!(read_buffer_bytes(None, None).unwrap(), 256 << 20);
        let err = read_buffer_bytes(Some(usize::MAX / 4), None).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        let err = read_buffer_bytes(Some(32 << 20), Some(100 << 20)).unwrap_err();
        assert!(err.to_string().contains("available"), "{err}");
    }

    #[test]
    fn word_sum_matches_a_plain_sum_including_the_tail() {
        let words: Vec<u64> = (0..1003).map(|i| i * 3 + 1).collect();
        assert_eq!(sum_words(&words), words.iter().sum::<u64>());
        assert_eq!(read_kernel()(&words), words.iter().sum::<u64>());
        assert_eq!(sum_words(&[]), 0);
    }
}
