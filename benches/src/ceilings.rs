//! The ceilings every ratio is taken against, measured in the same run.
//!
//! On a CPU device the floors use the host's physical limits ([`crate::host`]): the read
//! bandwidth for the memory term, the f32 FMA peak (f32, f16 rows) or the larger of it and
//! the native bf16 dot peak (bf16 rows) for the compute term. The backend's copy and its
//! dense GEMM are still measured, as reference rates: a copy moves each byte twice, and a
//! library GEMM is an achievable rate, not a limit. Elsewhere (GPUs) the floors use the device's read
//! bandwidth and f32 FMA peak measured by the backend's own kernels
//! ([`Backend::limits_bench`], OpenCL) where it has them; else the device copy and the
//! backend's GEMM, labelled achievable. On a CPU device with such kernels (PoCL) their
//! rates are shown beside the host's as "device read BW" and "device f32 FMA peak".

use crate::host::HostLimits;
use crate::timing::{median_time, Budget};
use moemla_core::alloc::try_filled_vec;
use moemla_core::{Backend, DType, Error, HostTensor, MeasuredLimits, Result, Shape};
use serde::Serialize;

/// One measured rate.
#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    /// Short name, as the table shows it ("read BW", "f32 FMA peak", "bf16 dot peak").
    pub name: String,
    /// The rate, in `unit`.
    pub rate: f64,
    /// "B/s" (a memory rate) or "FLOP/s" (a compute rate).
    pub unit: &'static str,
    /// True for a physical limit of the machine, which no op can exceed; false for an
    /// achievable rate (a device copy, a library's GEMM) that a well-made op may beat.
    pub physical: bool,
    /// How it was measured.
    pub how: String,
    /// Every rate measured for it in this run, in order (before the rows, then after):
    /// `rate` is the largest. A measurement on a shared machine is a lower bound of the
    /// limit, so the best of them is the tightest true limit the run knows.
    pub measured: Vec<f64>,
}

impl Limit {
    /// A limit measured once, at `rate`.
    pub fn new(name: &str, rate: f64, unit: &'static str, physical: bool, how: String) -> Limit {
        Limit {
            name: name.into(),
            rate,
            unit,
            physical,
            how,
            measured: vec![rate],
        }
    }

    /// Adds a later measurement of the same limit: its rates join `measured`, and `rate`
    /// becomes the best of all.
    pub fn merge(&mut self, later: &Limit) {
        self.measured.extend_from_slice(&later.measured);
        self.rate = self.measured.iter().copied().fold(self.rate, f64::max);
    }
}

/// The rates one backend's rows of one dtype are measured against.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// The dtype of the rows these ceilings are for.
    pub dtype: DType,
    /// The memory term of every floor: bytes / `memory.rate`...
    pub memory: Limit,
    /// ...except for rows that move at most `cache_bytes` (their data stays in the
    /// last-level cache from one repetition to the next): bytes / `memory_in_cache.rate`...
    pub memory_in_cache: Option<Limit>,
    /// ...or, for those of them that move at least a step's bytes, the rate of the largest
    /// such step (smallest first: [`crate::host::CacheStep`]).
    pub cache_steps: Vec<CacheLimit>,
    /// The last-level cache size, bytes (see `memory_in_cache`).
    pub cache_bytes: Option<usize>,
    /// The compute term of every floor: FLOPs / `compute.rate`.
    pub compute: Limit,
    /// Rates measured in the same run for reference; no floor uses them.
    pub reference: Vec<Limit>,
}

/// The memory limit of rows that move from `from_bytes` up to the next step's bytes (or
/// the last-level cache): the read bandwidth of a buffer of `from_bytes` that fits it.
#[derive(Clone, Debug, Serialize)]
pub struct CacheLimit {
    /// Bytes of the buffer measured.
    pub from_bytes: usize,
    /// Its read bandwidth.
    pub limit: Limit,
}

impl Ceilings {
    /// The memory limit of a row that moves `bytes`: for data that fits the last-level
    /// cache, the largest cache step at most `bytes` (else the cache read bandwidth),
    /// otherwise the read bandwidth from memory. Reading a larger buffer is never faster,
    /// so a rate measured on a larger one (a later step, memory's) is also a lower bound
    /// of the chosen one's limit: where one came out higher (the chosen measurement
    /// caught the machine busier), that one is the limit.
    pub fn memory_limit_for(&self, bytes: f64) -> &Limit {
        let (Some(in_cache), Some(fits)) = (&self.memory_in_cache, self.cache_bytes) else {
            return &self.memory;
        };
        if bytes > fits as f64 {
            return &self.memory;
        }
        let from = (self.cache_steps.iter())
            .rposition(|s| s.from_bytes as f64 <= bytes)
            .map_or(0, |i| i + 1);
        let chosen = match from {
            0 => in_cache,
            i => &self.cache_steps[i - 1].limit,
        };
        (self.cache_steps[from..].iter().map(|s| &s.limit))
            .chain([&self.memory])
            .fold(chosen, |best, l| if l.rate > best.rate { l } else { best })
    }

    /// Adds a later measurement of the same ceilings (the same backend and dtype, after
    /// its rows): every limit of `later` is merged into the one of the same name
    /// ([`Limit::merge`]); a limit only `later` has is added.
    pub fn merge(&mut self, later: &Ceilings) {
        for step in &later.cache_steps {
            match (self.cache_steps.iter_mut()).find(|s| s.from_bytes == step.from_bytes) {
                Some(mine) => mine.limit.merge(&step.limit),
                None => {
                    self.cache_steps.push(step.clone());
                    self.cache_steps.sort_by_key(|s| s.from_bytes);
                }
            }
        }
        let mut mine: Vec<&mut Limit> = vec![&mut self.memory, &mut self.compute];
        mine.extend(self.memory_in_cache.as_mut());
        mine.extend(self.reference.iter_mut());
        let theirs = [&later.memory, &later.compute]
            .into_iter()
            .chain(later.memory_in_cache.as_ref())
            .chain(&later.reference);
        let mut extra = Vec::new();
        for l in theirs {
            match mine.iter_mut().find(|m| m.name == l.name) {
                Some(m) => m.merge(l),
                None => extra.push(l.clone()),
            }
        }
        self.reference.extend(extra);
    }
}

/// The largest `--copy-mib` accepted: 16 TiB (no machine has more; anything larger is a
/// typing mistake, and `MiB << 20` must not overflow).
pub const MAX_COPY_MIB: u64 = 1 << 24;

/// The largest `--gemm-size` accepted: 2^24 (its square in F32 still fits a 64-bit byte
/// count; far beyond any memory, so the memory check below refuses it first).
pub const MAX_GEMM_SIZE: u64 = 1 << 24;

/// Checks up front that the ceilings of `measure(backend, dtype, copy_bytes, gemm_size, ..)`
/// fit this machine: the copy's two `copy_bytes` buffers and the GEMM's three
/// `gemm_size`^2 matrices in device memory, the GEMM's f32 values and their `dtype` copy in
/// host memory. A GEMM size whose matrix byte count overflows is [`Error::Size`]; a total
/// that overflows, or is larger than the device's or the host's memory (where known), is
/// [`Error::OutOfMemory`], naming the buffers and the memory. Nothing is allocated.
pub fn check_fits(
    backend: &dyn Backend,
    dtype: DType,
    copy_bytes: usize,
    gemm_size: usize,
) -> Result<()> {
    let name = backend.name();
    let matrix = Shape::new([gemm_size, gemm_size]);
    let (gemm_bytes, values_bytes) = (matrix.byte_len(dtype)?, matrix.byte_len(DType::F32)?);
    let (device, host) = (backend.info().memory_bytes, host_memory_bytes());
    let needs = [
        (
            copy_bytes.checked_mul(2),
            (device, "device"),
            format!("`{name}` copy ceiling: 2 device buffers of {copy_bytes} bytes"),
        ),
        (
            gemm_bytes.checked_mul(3),
            (device, "device"),
            format!("`{name}` GEMM ceiling: 3 {dtype} device matrices of {gemm_size}^2"),
        ),
        (
            gemm_bytes.checked_add(values_bytes),
            (host, "host"),
            format!("`{name}` GEMM ceiling: {gemm_size}^2 f32 values and their {dtype} copy on the host"),
        ),
    ];
    for (need, (memory, of), what) in needs {
        let over = match need {
            None => Some("the byte count overflows".to_string()),
            Some(n) => (memory.filter(|&m| n as u64 > m))
                .map(|m| format!("more than the {of}'s {m} bytes")),
        };
        if let Some(why) = over {
            return Err(Error::OutOfMemory {
                what: format!("{what} ({why})"),
                bytes: need.unwrap_or(usize::MAX),
            });
        }
    }
    Ok(())
}

/// Total host RAM from `/proc/meminfo` (`MemTotal`), `None` where unknown.
fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Measures the backend's copy bandwidth (a `copy_bytes`-byte buffer) and its dense GEMM
/// rate at `gemm_size`^3 in `dtype`, after [`check_fits`]: sizes the machine cannot hold
/// are a typed error, never an abort. With `host` (the backend runs on this host's CPU)
/// the floors use the host's physical limits and the two backend rates are reference only;
/// elsewhere the backend's own limit kernels ([`Backend::limits_bench`]) where it has them.
pub fn measure(
    backend: &dyn Backend,
    dtype: DType,
    copy_bytes: usize,
    gemm_size: usize,
    budget: Budget,
    host: Option<&HostLimits>,
) -> Result<Ceilings> {
    check_fits(backend, dtype, copy_bytes, gemm_size)?;
    let copy = backend.copy_bench(copy_bytes, budget.max_reps.min(10))?;
    let n = gemm_size;
    let matrix = Shape::new([n, n]);
    let count = matrix.checked_elem_count().ok_or(Error::Size {
        shape: matrix.clone(),
        dtype,
    })?;
    let mut values: Vec<f32> = try_filled_vec(count, "bench GEMM ceiling inputs")?;
    for (i, v) in values.iter_mut().enumerate() {
        *v = ((i % 7) as f32 - 3.0) / 8.0;
    }
    let a = backend.upload(&HostTensor::from_f32_as(matrix.clone(), &values, dtype)?)?;
    let b = backend.upload(&HostTensor::from_f32_as(matrix, &values, dtype)?)?;
    let gemm = median_time(backend, budget, || backend.dense_gemm(&a, &b).map(drop))?;
    let copy = Limit::new(
        "copy BW",
        2.0 * copy_bytes as f64 / copy.as_secs_f64(),
        "B/s",
        false,
        format!("{} MiB device copy, read+write counted", copy_bytes >> 20),
    );
    let gemm = Limit::new(
        "GEMM (achievable)",
        2.0 * (n as f64).powi(3) / gemm.as_secs_f64(),
        "FLOP/s",
        false,
        format!("{n}x{n}x{n}, {}", backend.dense_gemm_impl(dtype)),
    );
    // The device's own limit kernels, where the backend has them, over a buffer at least
    // as large as the host's read buffer (so it streams from memory there too).
    let read_bytes = copy_bytes.max(host.map_or(0, |h| h.read_bytes));
    let device = match backend.limits_bench(read_bytes, budget.max_reps.clamp(3, 10)) {
        Ok(m) => Some(device_limits(&m)),
        Err(Error::NotProvided { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(match (host, device) {
        (None, None) => Ceilings {
            dtype,
            memory: copy,
            memory_in_cache: None,
            cache_steps: Vec::new(),
            cache_bytes: None,
            compute: gemm,
            reference: Vec::new(),
        },
        (None, Some((read, fma))) => Ceilings {
            dtype,
            memory: read,
            memory_in_cache: None,
            cache_steps: Vec::new(),
            cache_bytes: None,
            compute: fma,
            reference: vec![copy, gemm],
        },
        (Some(h), device) => host_ceilings(dtype, h, [copy, gemm], device),
    })
}

/// The ceilings of a backend on this host's CPU: the host's limits are the floors, the
/// backend's `rates` (copy, GEMM) and its own `device` kernels' (read BW, FMA peak) are
/// shown beside them. The device's kernels measure the same limits of the same cores, so
/// each is also a lower bound of them: the floors take the best of the host's and theirs.
fn host_ceilings(
    dtype: DType,
    h: &HostLimits,
    rates: [Limit; 2],
    device: Option<(Limit, Limit)>,
) -> Ceilings {
    let (mut memory, mut compute) = (read_limit(h), compute_limit(h, dtype));
    if let Some((read, fma)) = &device {
        memory.merge(read);
        memory.how += "; also measured by the device's read kernel (below)";
        if compute.name == fma.name {
            compute.merge(fma);
            compute.how += "; also measured by the device's FMA kernel (below)";
        }
    }
    Ceilings {
        dtype,
        memory,
        memory_in_cache: Some(cache_read_limit(h)),
        cache_steps: cache_step_limits(h),
        cache_bytes: Some(h.llc_bytes.unwrap_or(0)),
        compute,
        reference: rates
            .into_iter()
            .chain(
                device
                    .into_iter()
                    .flat_map(|(read, fma)| [read, fma])
                    .map(|mut l| {
                        l.name = format!("device {}", l.name);
                        l
                    }),
            )
            .collect(),
    }
}

/// The read bandwidth and f32 FMA peak a backend's own kernels measured, as limits.
pub fn device_limits(m: &MeasuredLimits) -> (Limit, Limit) {
    (
        Limit::new(
            "read BW",
            m.read_bytes_per_s,
            "B/s",
            true,
            m.read_how.clone(),
        ),
        Limit::new(
            "f32 FMA peak",
            m.fma_flops_per_s,
            "FLOP/s",
            true,
            m.fma_how.clone(),
        ),
    )
}

/// The host's read bandwidth as a limit.
pub fn read_limit(h: &HostLimits) -> Limit {
    let llc = match h.llc_bytes {
        Some(b) => format!("{} MiB last-level cache", b >> 20),
        None => "last-level cache unknown, 32 MiB assumed".into(),
    };
    let pages = if h.read_huge_pages {
        "2 MiB pages requested (MADV_HUGEPAGE)"
    } else {
        "4 KiB pages"
    };
    Limit::new(
        "read BW",
        h.read_bandwidth,
        "B/s",
        true,
        format!(
            "parallel read-only reduction over {} MiB ({llc}), {} threads, {pages}, \
             best of {} passes",
            h.read_bytes >> 20,
            h.threads,
            h.read_passes
        ),
    )
}

/// The host's cache read bandwidth as a limit.
pub fn cache_read_limit(h: &HostLimits) -> Limit {
    Limit::new(
        "cache read BW",
        h.cache_read_bandwidth,
        "B/s",
        true,
        format!(
            "every thread re-reading a {} KiB buffer in its cache, widest loads, {} threads; \
             rows whose data fits in the last-level cache and is smaller than the first \
             cache step",
            crate::host::CACHE_READ_BYTES >> 10,
            h.threads
        ),
    )
}

/// The host's [`crate::host::CacheStep`]s as limits, named by their buffer ("read BW at
/// 16 MiB").
pub fn cache_step_limits(h: &HostLimits) -> Vec<CacheLimit> {
    (h.cache_steps.iter())
        .map(|s| CacheLimit {
            from_bytes: s.bytes,
            limit: Limit::new(
                &format!("read BW at {} MiB", s.bytes >> 20),
                s.bandwidth,
                "B/s",
                true,
                format!(
                    "parallel read-only reduction over a {} MiB buffer re-read in the \
                     last-level cache, {} threads; rows moving at least that much and at \
                     most the cache",
                    s.bytes >> 20,
                    h.threads
                ),
            ),
        })
        .collect()
}

/// The host's compute limit for rows of `dtype`: for BF16 the larger of the native bf16
/// dot peak (where the CPU has one) and the f32 FMA peak (a bf16 product is exact in f32,
/// so upcast + FMA is also a way to compute it: on some CPUs, e.g. Intel's with
/// AVX512-BF16, `VDPBF16PS` runs at half the FMA's FLOP rate); every other dtype is
/// computed in f32: the f32 FMA peak.
pub fn compute_limit(h: &HostLimits, dtype: DType) -> Limit {
    let fma = |note: String| {
        Limit::new(
            "f32 FMA peak",
            h.fma_flops,
            "FLOP/s",
            true,
            format!(
                "register-resident {} FMA loop, {} independent accumulators, {} threads{note}",
                h.fma_isa, h.fma_accumulators, h.threads
            ),
        )
    };
    match (dtype, h.bf16_flops, h.bf16_isa) {
        (DType::BF16, Some(rate), Some(isa)) if rate >= h.fma_flops => Limit::new(
            "bf16 dot peak",
            rate,
            "FLOP/s",
            true,
            format!(
                "register-resident {isa} loop, {} independent accumulators, {} threads",
                h.bf16_accumulators.unwrap_or(h.fma_accumulators),
                h.threads
            ),
        ),
        (DType::BF16, Some(rate), Some(isa)) => fma(format!(
            "; above this CPU's native bf16 dot peak ({isa}, {:.1} GFLOP/s), and a bf16 \
             product is exact in f32",
            rate / 1e9
        )),
        (DType::BF16, _, _) => fma("; no native bf16 dot on this CPU: f32 peak".into()),
        _ => fma(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, rate: f64) -> Limit {
        Limit::new(name, rate, "B/s", true, "test".into())
    }

    fn ceilings(read: f64, fma: f64, reference: Vec<Limit>) -> Ceilings {
        Ceilings {
            dtype: DType::F32,
            memory: limit("read BW", read),
            memory_in_cache: Some(limit("cache read BW", 10.0 * read)),
            cache_steps: vec![CacheLimit {
                from_bytes: 4 << 20,
                limit: limit("read BW at 4 MiB", 2.0 * read),
            }],
            cache_bytes: Some(32 << 20),
            compute: limit("f32 FMA peak", fma),
            reference,
        }
    }

    #[test]
    fn merged_ceilings_keep_every_measurement_and_the_best_of_each_limit() {
        // Read BW was lower before the rows, the FMA peak after: each keeps its best.
        let mut c = ceilings(29e9, 230e9, vec![limit("copy BW", 27e9)]);
        let later = ceilings(
            45e9,
            220e9,
            vec![limit("copy BW", 26e9), limit("GEMM", 1e9)],
        );
        c.merge(&later);
        assert_eq!(c.memory.rate, 45e9);
        assert_eq!(c.memory.measured, vec![29e9, 45e9]);
        assert_eq!(c.compute.rate, 230e9);
        assert_eq!(c.compute.measured, vec![230e9, 220e9]);
        assert_eq!(c.memory_in_cache.as_ref().unwrap().rate, 450e9);
        assert_eq!(c.cache_steps[0].limit.measured, vec![58e9, 90e9]);
        assert_eq!(c.reference[0].rate, 27e9);
        assert_eq!(c.reference[0].measured, vec![27e9, 26e9]);
        // A limit only the later measurement has is added as it is.
        assert_eq!(c.reference[1].name, "GEMM");
        assert_eq!(c.reference[1].measured, vec![1e9]);
        // A third measurement: still the best of all.
        c.merge(&ceilings(50e9, 100e9, vec![]));
        assert_eq!(c.memory.rate, 50e9);
        assert_eq!(c.memory.measured, vec![29e9, 45e9, 50e9]);
        assert_eq!(c.compute.rate, 230e9);
        // A step only a later measurement has joins the steps, in order of size.
        let mut with_step = ceilings(10e9, 1e9, vec![]);
        with_step.cache_steps.insert(
            0,
            CacheLimit {
                from_bytes: 1 << 20,
                limit: limit("read BW at 1 MiB", 70e9),
            },
        );
        c.merge(&with_step);
        let sizes: Vec<usize> = c.cache_steps.iter().map(|s| s.from_bytes).collect();
        assert_eq!(sizes, [1 << 20, 4 << 20]);
        assert!(c
            .reference
            .iter()
            .all(|l| !l.name.starts_with("read BW at")));
    }

    #[test]
    fn on_this_host_the_floors_take_the_best_of_the_host_and_the_device_kernels() {
        let h = HostLimits {
            threads: 2,
            fma_flops: 200e9,
            fma_isa: "test",
            fma_accumulators: 24,
            bf16_flops: Some(400e9),
            bf16_isa: Some("test"),
            bf16_accumulators: Some(4),
            read_bandwidth: 30e9,
            read_bytes: 256 << 20,
            read_passes: 20,
            read_huge_pages: true,
            llc_bytes: Some(32 << 20),
            cache_read_bandwidth: 200e9,
            cache_steps: vec![crate::host::CacheStep {
                bytes: 4 << 20,
                bandwidth: 60e9,
            }],
        };
        let rates = || [limit("copy BW", 20e9), limit("GEMM (achievable)", 100e9)];
        // The device's read kernel saw more than the host's loop, its FMA kernel less.
        let device = || Some((limit("read BW", 35e9), limit("f32 FMA peak", 150e9)));
        let c = host_ceilings(DType::F32, &h, rates(), device());
        assert_eq!(
            (c.memory.rate, c.memory.measured.clone()),
            (35e9, vec![30e9, 35e9])
        );
        assert_eq!(
            (c.compute.rate, c.compute.measured.clone()),
            (200e9, vec![200e9, 150e9])
        );
        let names: Vec<&str> = c.reference.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "copy BW",
                "GEMM (achievable)",
                "device read BW",
                "device f32 FMA peak"
            ]
        );
        // bf16 rows: the bf16 dot peak, which an f32 FMA kernel does not measure.
        let c = host_ceilings(DType::BF16, &h, rates(), device());
        assert_eq!((c.compute.rate, c.compute.measured.len()), (400e9, 1));
        assert_eq!(c.compute.name, "bf16 dot peak");
        // A CPU whose bf16 dot is slower than its FMA (Intel's AVX512-BF16 runs VDPBF16PS
        // at half the FMA's FLOP rate): bf16 rows can run upcast on the FMA, so the
        // limit is the FMA peak, merged with the device's FMA kernel like f32 rows.
        let slow_dot = HostLimits {
            bf16_flops: Some(100e9),
            ..h.clone()
        };
        let c = host_ceilings(DType::BF16, &slow_dot, rates(), device());
        assert_eq!(
            (c.compute.name.as_str(), c.compute.rate),
            ("f32 FMA peak", 200e9)
        );
        assert!(c.compute.how.contains("100.0 GFLOP/s"), "{}", c.compute.how);
        // The cache steps: named by their buffer, the limit of rows from their bytes up
        // to the last-level cache.
        let step = &c.cache_steps[0];
        assert_eq!(
            (step.from_bytes, step.limit.name.as_str()),
            (4 << 20, "read BW at 4 MiB")
        );
        let name_for = |bytes: f64| c.memory_limit_for(bytes).name.as_str();
        assert_eq!(name_for(1e6), "cache read BW");
        assert_eq!(name_for((4 << 20) as f64), "read BW at 4 MiB");
        assert_eq!(name_for((32 << 20) as f64), "read BW at 4 MiB");
        assert_eq!(name_for((32 << 20) as f64 + 1.0), "read BW");
        // A larger buffer's rate that came out higher than the chosen one's (which caught
        // the machine busier) bounds the smaller one too: it is the limit then.
        let mut busy = host_ceilings(DType::F32, &h, rates(), None);
        busy.cache_steps[0].limit.rate = 20e9;
        assert_eq!(busy.memory_limit_for((8 << 20) as f64).name, "read BW");
        busy.memory_in_cache.as_mut().unwrap().rate = 10e9;
        assert_eq!(busy.memory_limit_for(1e6).name, "read BW");
        // Without device kernels: the host's limits alone.
        let c = host_ceilings(DType::F32, &h, rates(), None);
        assert_eq!(
            (c.memory.rate, c.compute.rate, c.reference.len()),
            (30e9, 200e9, 2)
        );
    }
}
