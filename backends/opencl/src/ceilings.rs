//! Benchmark ceilings: device-to-device copy bandwidth (clEnqueueCopyBuffer) and a dense
//! GEMM (kernels/opencl/ceilings.cl): local-memory tiles on GPUs, register-blocked vector
//! dot products on CPU devices.

use crate::device::{Arg, ClDevice, Module};
use crate::ops::kernel_int;
use crate::ClBuffer;
use moemla_core::{DType, DeviceTensor, Error, Result, Shape};
use std::time::{Duration, Instant};

/// Output rows and columns per work-group of the tiled kernel (`GEMM_TILE`).
const TILE: usize = 64;
/// Work-items per work-group side of the tiled kernel (`GEMM_WG`).
const WG: usize = 16;
/// Output rows and columns per work-item of the dot kernel (`GEMM_RB`).
const RB: usize = 4;
/// Work-group of the dot kernel (fixed: PoCL compiles one variant per work-group size).
const DOT_WG: [usize; 2] = [4, 16];

/// The two GEMM kernels of `ceilings.cl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// `dense_gemm_tiled`: 64 x 64 local-memory tiles, 4 x 4 outputs per work-item (GPUs).
    Tiled,
    /// `dense_gemm_dot`: 4 x 4 outputs per work-item as 8-wide dot products, no local
    /// memory (CPU devices, where barriers are expensive: 5x faster on PoCL).
    Dot,
}

impl Gemm {
    /// The kernel for `dev`.
    pub fn for_device(dev: &ClDevice) -> Gemm {
        if dev.facts.is_cpu {
            Gemm::Dot
        } else {
            Gemm::Tiled
        }
    }
}

/// Median wall-clock time of `reps` device-to-device copies of `bytes` bytes, each waited
/// for with clFinish (the shared queue is created without profiling, so no event times).
/// Both buffers are allocated and copied once before timing starts.
pub fn copy_bench(dev: &ClDevice, bytes: usize, reps: usize) -> Result<Duration> {
    let src = dev.alloc_zeroed("copy_bench source", bytes)?;
    let dst = dev.alloc_zeroed("copy_bench destination", bytes)?;
    dev.copy(&src, 0, &dst, 0, bytes)?;
    dev.finish()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        dev.copy(&src, 0, &dst, 0, bytes)?;
        dev.finish()?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// `c[M, N] = a[M, K] . b[N, K]^T` with `kernel`, f32 compute, `c` in the dtype of `a`;
/// returns `c`'s buffer and its dims.
pub fn dense_gemm(
    dev: &ClDevice,
    backend: &str,
    kernel: Gemm,
    a: &DeviceTensor,
    b: &DeviceTensor,
) -> Result<(ClBuffer, [usize; 2])> {
    let err = |message: String| Error::Device {
        backend: backend.to_string(),
        call: "dense_gemm".into(),
        message,
    };
    let (m, k, n) = match (a.dims(), b.dims()) {
        ([m, k], [n, kb]) if k == kb && a.dtype() == b.dtype() && a.dtype().is_float() => {
            (*m, *k, *n)
        }
        _ => {
            return Err(err(format!(
                "needs a [M, K] and b [N, K] of one float dtype, got {a:?} and {b:?}"
            )))
        }
    };
    // Kernel ints: the sizes, up to a tile past them (the kernels index with size_t).
    let int = |what: &str, v: usize| {
        kernel_int(v).ok_or_else(|| err(format!("{what} = {v} does not fit a kernel int")))
    };
    let (m32, n32, k32) = (int("M", m)?, int("N", n)?, int("K", k)?);
    let group = match kernel {
        Gemm::Tiled => [WG, WG],
        Gemm::Dot => DOT_WG,
    };
    if dev.facts.max_work_group < group[0] * group[1] {
        return Err(err(format!(
            "needs work-groups of {}, the device allows at most {}",
            group[0] * group[1],
            dev.facts.max_work_group
        )));
    }
    let a_buf = a.buffer::<ClBuffer>(backend, "dense_gemm", "a")?;
    let b_buf = b.buffer::<ClBuffer>(backend, "dense_gemm", "b")?;
    let program = dev.program(Module::Ceilings, a.dtype())?;
    let c_bytes = Shape::new([m, n]).byte_len(a.dtype())?;
    let c = dev.tensor_buffer("dense_gemm c", c_bytes)?;
    let args = [
        Arg::Buf(a_buf),
        Arg::Buf(b_buf),
        Arg::Buf(&c),
        Arg::I32(m32),
        Arg::I32(n32),
        Arg::I32(k32),
    ];
    let (name, global) = match kernel {
        Gemm::Tiled => {
            let items = |len: usize| len.div_ceil(TILE) * WG;
            ("dense_gemm_tiled", [items(n), items(m)])
        }
        Gemm::Dot => {
            let items = |len: usize, wg: usize| len.div_ceil(RB).div_ceil(wg) * wg;
            ("dense_gemm_dot", [items(n, DOT_WG[0]), items(m, DOT_WG[1])])
        }
    };
    dev.launch(&program, name, &args, &global, &group)?;
    Ok((c, [m, n]))
}

/// What [`dense_gemm`] runs with `kernel`, for the benchmark report.
pub fn dense_gemm_impl(kernel: Gemm, dtype: DType) -> String {
    let storage = dtype.to_string().to_lowercase();
    match kernel {
        Gemm::Tiled => format!(
            "moemla OpenCL tiled GEMM ({TILE}x{TILE} local-memory tiles, 4x4 per work-item, \
             f32 compute), {storage} storage"
        ),
        Gemm::Dot => format!(
            "moemla OpenCL CPU GEMM ({RB}x{RB} per work-item, 8-wide dot products, \
             f32 compute), {storage} storage"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::{Backend, HostTensor};

    /// Both kernels, whichever the device would pick, against a plain f64 product with the
    /// contract's tolerances, on sizes that leave partial tiles and a K % 8 tail.
    #[test]
    fn both_kernels_match_an_f64_product() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        for (m, n, k) in [(67, 45, 129), (130, 129, 70), (1, 3, 5)] {
            let values = |len: usize, seed: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                    .collect()
            };
            for dtype in DType::FLOATS {
                let a = HostTensor::from_f32_as([m, k], &values(m * k, 1), dtype).unwrap();
                let b = HostTensor::from_f32_as([n, k], &values(n * k, 2), dtype).unwrap();
                let (a64, b64) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
                let tol = match dtype {
                    DType::F16 => 2e-3,
                    DType::BF16 => 2e-2,
                    _ => 1e-4,
                };
                let (a_dev, b_dev) = (backend.upload(&a).unwrap(), backend.upload(&b).unwrap());
                for kernel in [Gemm::Tiled, Gemm::Dot] {
                    let (c, dims) = dense_gemm(dev, "opencl", kernel, &a_dev, &b_dev).unwrap();
                    assert_eq!(dims, [m, n]);
                    let c = backend.tensor(c, dims, dtype);
                    let got = backend.download(&c).unwrap().to_f32_vec().unwrap();
                    for (idx, &g) in got.iter().enumerate() {
                        let (i, j) = (idx / n, idx % n);
                        let want: f64 = (0..k)
                            .map(|p| a64[i * k + p] as f64 * b64[j * k + p] as f64)
                            .sum();
                        let ok = (g as f64 - want).abs() <= tol + tol * want.abs();
                        assert!(
                            ok,
                            "{kernel:?} {dtype} {m}x{n}x{k} c[{i}, {j}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn copy_moves_every_byte() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src = dev.upload("test", &data).unwrap();
        let dst = dev.alloc_zeroed("test", data.len()).unwrap();
        dev.copy(&src, 0, &dst, 0, data.len()).unwrap();
        let mut got = vec![0u8; data.len()];
        dev.read(&dst, 0, &mut got).unwrap();
        assert_eq!(got, data);
        let small = dev.alloc_zeroed("test", 10).unwrap();
        assert!(dev.copy(&src, 0, &small, 0, data.len()).is_err());
    }
}
