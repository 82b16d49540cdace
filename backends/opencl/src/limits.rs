//! The device's physical limits for the benchmark, measured by two OpenCL C 1.2 kernels on
//! every compute unit: the read bandwidth (a read-only reduction over a large buffer) and
//! the f32 FMA peak (a register-resident FMA loop). On a CPU device (PoCL) each work-item
//! reads one contiguous part and runs 16-wide vectors (one AVX-512 register each); on a
//! GPU consecutive work-items read consecutive 16-byte words (coalesced) and run scalars.

use crate::device::{Arg, ClDevice};
use crate::ops::kernel_int;
use crate::program::build_source;
use moemla_core::{Error, MeasuredLimits, Result};
use std::time::{Duration, Instant};

/// Independent accumulators per work-item of the FMA kernel (`FMA_ACC` in the source):
/// enough to hide the FMA latency on CPUs (latency 4 x 2 pipes) and GPUs.
const FMA_ACC: usize = 12;

/// The most float4 words one work-item of `read_sum` reads: its loop computes `k + 4` in
/// an `int`, for `k` up to `count`.
const MAX_COUNT: usize = i32::MAX as usize - 4;

/// The float4 words each of `items` work-items reads of a `words`-word buffer (at most
/// [`MAX_COUNT`]).
fn words_per_item(words: usize, items: usize) -> usize {
    (words / items.max(1)).min(MAX_COUNT)
}

/// The two kernels. `VEC` (1 or 16) is the FMA kernel's vector width.
const SOURCE: &str = r#"
#if VEC == 16
typedef float16 vec_t;
static float hsum(float16 v) {
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    return (b.x + b.y) + (b.z + b.w);
}
#else
typedef float vec_t;
static float hsum(float v) { return v; }
#endif

/* out[i] = sum of the `count` float4 words src[i * first_step + k * step], k < count
   (count <= INT_MAX - 4: k + 4 never overflows). */
__kernel void read_sum(__global const float4 *src, int count, int first_step, int step,
                       __global float *out) {
    const size_t gid = get_global_id(0);
    const size_t base = gid * (size_t)first_step;
    float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 4 <= count; k += 4) {
        a0 += src[base + (size_t)k * step];
        a1 += src[base + (size_t)(k + 1) * step];
        a2 += src[base + (size_t)(k + 2) * step];
        a3 += src[base + (size_t)(k + 3) * step];
    }
    for (; k < count; ++k) a0 += src[base + (size_t)k * step];
    const float4 s = (a0 + a1) + (a2 + a3);
    out[gid] = (s.x + s.y) + (s.z + s.w);
}

/* x <- fma(x, a, b) `iters` times on FMA_ACC independent vec_t accumulators, starting at
   1.0; out[i] = the sum of every lane of every accumulator. */
__kernel void fma_peak(int iters, float a, float b, __global float *out) {
    const vec_t av = (vec_t)(a), bv = (vec_t)(b);
    vec_t x0 = (vec_t)(1.0f), x1 = x0, x2 = x0, x3 = x0, x4 = x0, x5 = x0;
    vec_t x6 = x0, x7 = x0, x8 = x0, x9 = x0, x10 = x0, x11 = x0;
    for (int i = 0; i < iters; ++i) {
        x0 = fma(x0, av, bv); x1 = fma(x1, av, bv); x2 = fma(x2, av, bv);
        x3 = fma(x3, av, bv); x4 = fma(x4, av, bv); x5 = fma(x5, av, bv);
        x6 = fma(x6, av, bv); x7 = fma(x7, av, bv); x8 = fma(x8, av, bv);
        x9 = fma(x9, av, bv); x10 = fma(x10, av, bv); x11 = fma(x11, av, bv);
    }
    out[get_global_id(0)] = hsum(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))
                                 + ((x8 + x9) + (x10 + x11)));
}
"#;

/// The launch shape on `dev`: (work-items, work-group size, FMA vector width).
fn geometry(dev: &ClDevice) -> (usize, usize, usize) {
    let units = (dev.facts.compute_units as usize).max(1);
    if dev.facts.is_cpu {
        // Work-groups of one work-item, four per compute unit (balance across threads).
        (units * 4, 1, 16)
    } else {
        let group = dev.facts.max_work_group.clamp(1, 256);
        (units * 8 * group, group, 1)
    }
}

/// The kernels built for `dev`.
fn program(dev: &ClDevice, vec: usize) -> Result<std::sync::Arc<opencl3::program::Program>> {
    let options = format!("-cl-std=CL1.2 -DVEC={vec}");
    build_source(&dev.context, SOURCE, &options, "limits")
}

/// Best wall time of `reps` runs of `launch` (each waited for), after one untimed run.
fn best_time(dev: &ClDevice, reps: usize, launch: impl Fn() -> Result<()>) -> Result<Duration> {
    launch()?;
    dev.finish()?;
    let mut best = Duration::MAX;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        launch()?;
        dev.finish()?;
        best = best.min(t0.elapsed());
    }
    Ok(best.max(Duration::from_nanos(1)))
}

/// Measures both limits on `dev`: the read bandwidth over about `read_bytes` bytes (at most
/// the device's largest allocation), the FMA peak with a loop calibrated to run about
/// 20 ms; each the best of `reps` runs.
pub fn measure(dev: &ClDevice, read_bytes: usize, reps: usize) -> Result<MeasuredLimits> {
    let err = |message: String| Error::Device {
        backend: crate::NAME.to_string(),
        call: "limits_bench".into(),
        message,
    };
    let (items, group, vec) = geometry(dev);
    let program = program(dev, vec)?;
    let int = |what: &str, v: usize| {
        kernel_int(v).ok_or_else(|| err(format!("{what} = {v} does not fit a kernel int")))
    };
    let out = dev.tensor_buffer("limits_bench out", items * 4)?;

    // Read: `items` parts of `count` float4 words each.
    let max_alloc = usize::try_from(dev.facts.max_alloc).unwrap_or(usize::MAX);
    let words = read_bytes.min(max_alloc) / 16;
    let count = words_per_item(words, items);
    if count == 0 {
        return Err(err(format!(
            "a {read_bytes}-byte buffer is too small for {items} work-items"
        )));
    }
    let bytes = count * items * 16;
    let src = dev.tensor_filled("limits_bench source", bytes, 0x3f80_0000)?;
    let (first_step, step) = if dev.facts.is_cpu {
        (count, 1)
    } else {
        (1, items)
    };
    let read_args = [
        Arg::Buf(&src),
        Arg::I32(int("count", count)?),
        Arg::I32(int("first step", first_step)?),
        Arg::I32(int("step", step)?),
        Arg::Buf(&out),
    ];
    let read = best_time(dev, reps, || {
        dev.launch(&program, "read_sum", &read_args, &[items], &[group])
    })?;
    drop(src);

    // FMA: calibrate the loop to about 20 ms, then the best of `reps` runs.
    let fma = |iters: usize| -> Result<Duration> {
        let args = [
            Arg::I32(int("iters", iters)?),
            Arg::F32(0.999_999),
            Arg::F32(1e-7),
            Arg::Buf(&out),
        ];
        best_time(dev, 1, || {
            dev.launch(&program, "fma_peak", &args, &[items], &[group])
        })
    };
    let target = Duration::from_millis(20);
    let mut iters = 1usize << 10;
    let mut t = fma(iters)?;
    while t < target / 4 && iters < 1 << 28 {
        iters *= 4;
        t = fma(iters)?;
    }
    let mut best = t;
    for _ in 1..reps.max(1) {
        best = best.min(fma(iters)?);
    }
    let flops = 2.0 * (FMA_ACC * vec) as f64 * iters as f64 * items as f64;
    let kind = if dev.facts.is_cpu {
        "one contiguous part per work-item"
    } else {
        "consecutive work-items on consecutive words"
    };
    Ok(MeasuredLimits {
        read_bytes_per_s: bytes as f64 / read.as_secs_f64(),
        read_bytes: bytes,
        read_how: format!(
            "OpenCL read-only reduction kernel over {} MiB, float4 loads, {kind}, {items} \
             work-items, best of {} runs",
            bytes >> 20,
            reps.max(1)
        ),
        fma_flops_per_s: flops / best.as_secs_f64(),
        fma_how: format!(
            "OpenCL register-resident FMA kernel, {FMA_ACC} independent float{} accumulators \
             per work-item, {items} work-items, best of {} runs",
            if vec == 1 {
                String::new()
            } else {
                vec.to_string()
            },
            reps.max(1)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_floats(dev: &ClDevice, buf: &crate::ClBuffer, n: usize) -> Vec<f32> {
        let mut bytes = vec![0u8; 4 * n];
        dev.read(buf, 0, &mut bytes).unwrap();
        (bytes.chunks_exact(4))
            .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect()
    }

    /// The reduction reads exactly its part, in both layouts; the FMA kernel runs
    /// FMA_ACC x VEC lanes (the FLOP count the peak claims), each converging to
    /// b / (1 - a) = 2 for a = 0.5, b = 1.
    #[test]
    fn kernels_compute_what_their_rates_count() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        for vec in [1usize, 16] {
            let program = program(dev, vec).unwrap();
            // 3 work-items x 5 float4 words; word w holds w in every lane.
            let (items, count) = (3usize, 5usize);
            let data: Vec<u8> = (0..items * count)
                .flat_map(|w| [w as f32; 4])
                .flat_map(f32::to_le_bytes)
                .collect();
            let src = dev.upload("test", &data).unwrap();
            let out = dev.tensor_buffer("test", 4 * items).unwrap();
            for (first_step, step) in [(count, 1), (1, items)] {
                let args = [
                    Arg::Buf(&src),
                    Arg::I32(count as i32),
                    Arg::I32(first_step as i32),
                    Arg::I32(step as i32),
                    Arg::Buf(&out),
                ];
                dev.launch(&program, "read_sum", &args, &[items], &[1])
                    .unwrap();
                let got = read_floats(dev, &out, items);
                for (i, g) in got.iter().enumerate() {
                    let want: usize = (0..count).map(|k| i * first_step + k * step).sum();
                    assert_eq!(*g, 4.0 * want as f32, "item {i}, steps {first_step} {step}");
                }
            }
            let args = [Arg::I32(200), Arg::F32(0.5), Arg::F32(1.0), Arg::Buf(&out)];
            dev.launch(&program, "fma_peak", &args, &[items], &[1])
                .unwrap();
            let got = read_floats(dev, &out, items);
            assert_eq!(got, vec![2.0 * (FMA_ACC * vec) as f32; items], "VEC={vec}");
        }
    }

    /// A work-item reads at most INT_MAX - 4 words, so `read_sum`'s `k + 4 <= count` never
    /// overflows its `int`, however large the buffer; below that, every whole word is read.
    #[test]
    fn read_counts_stay_below_the_kernels_int_overflow() {
        let int_max = i32::MAX as usize;
        assert_eq!(words_per_item(100, 3), 33);
        assert_eq!(words_per_item(int_max - 4, 1), int_max - 4);
        for (words, items) in [
            (int_max - 3, 1),
            (int_max, 1),
            (usize::MAX, 1),
            (usize::MAX, 7),
        ] {
            let count = words_per_item(words, items);
            assert_eq!(count, int_max - 4, "{words} words, {items} items");
            // The largest k the loop tests is below count + 4 (k steps by 4 from 0).
            assert!(i32::try_from(count + 4).is_ok());
        }
    }

    #[test]
    fn both_limits_are_measured_on_the_device() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let m = measure(backend.device(), 8 << 20, 2).unwrap();
        assert!(m.read_bytes > 0 && m.read_bytes <= 8 << 20, "{m:?}");
        assert!(
            m.read_bytes_per_s > 0.0 && m.read_bytes_per_s.is_finite(),
            "{m:?}"
        );
        assert!(
            m.fma_flops_per_s > 0.0 && m.fma_flops_per_s.is_finite(),
            "{m:?}"
        );
        // Too small a buffer for the work-items is an error, not a division by zero.
        assert!(matches!(
            measure(backend.device(), 16, 1),
            Err(Error::Device { .. })
        ));
    }
}
