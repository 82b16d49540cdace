//! Benchmark ceilings: device-to-device copy bandwidth (clEnqueueCopyBuffer) and a tiled
//! local-memory dense GEMM (kernels/opencl/ceilings.cl).

use crate::device::{Arg, ClDevice, Module};
use crate::ClBuffer;
use moemla_core::{DType, DeviceTensor, Error, Result};
use std::time::{Duration, Instant};

/// Output rows and columns per work-group (`GEMM_TILE` in the kernel source).
const TILE: usize = 64;
/// Work-items per work-group side (`GEMM_WG`); each computes a 4 x 4 micro-tile.
const WG: usize = 16;

/// Median wall-clock time of `reps` device-to-device copies of `bytes` bytes, each waited
/// for with clFinish (the shared queue is created without profiling, so no event times).
/// Both buffers are allocated and copied once before timing starts.
pub fn copy_bench(dev: &ClDevice, bytes: usize, reps: usize) -> Result<Duration> {
    let src = dev.alloc_zeroed(bytes)?;
    let mut dst = dev.alloc_zeroed(bytes)?;
    dev.copy(&src, &mut dst)?;
    dev.finish()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        dev.copy(&src, &mut dst)?;
        dev.finish()?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// `c[M, N] = a[M, K] . b[N, K]^T` with the tiled GEMM, f32 compute, `c` in the dtype of
/// `a`; returns `c`'s buffer and its dims.
pub fn dense_gemm(
    dev: &ClDevice,
    backend: &str,
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
    let int = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| err(format!("{what} = {v} does not fit a kernel int")))
    };
    let (m32, n32, k32) = (int("M", m)?, int("N", n)?, int("K", k)?);
    int("M * K", m * k)?;
    int("N * K", n * k)?;
    int("M * N", m * n)?;
    if dev.facts.max_work_group < WG * WG {
        return Err(err(format!(
            "needs work-groups of {}, the device allows at most {}",
            WG * WG,
            dev.facts.max_work_group
        )));
    }
    let a_buf = a.buffer::<ClBuffer>(backend, "dense_gemm", "a")?;
    let b_buf = b.buffer::<ClBuffer>(backend, "dense_gemm", "b")?;
    let program = dev.program(Module::Ceilings, a.dtype())?;
    let c = dev.alloc_workspace(m * n * a.dtype().size_in_bytes())?;
    let args = [
        Arg::Buf(a_buf),
        Arg::Buf(b_buf),
        Arg::Buf(&c),
        Arg::I32(m32),
        Arg::I32(n32),
        Arg::I32(k32),
    ];
    let groups = |len: usize| len.div_ceil(TILE) * WG;
    dev.launch(
        &program,
        "dense_gemm",
        &args,
        &[groups(n), groups(m)],
        &[WG, WG],
    )?;
    Ok((c, [m, n]))
}

/// What [`dense_gemm`] runs, for the benchmark report.
pub fn dense_gemm_impl(dtype: DType) -> String {
    let storage = dtype.to_string().to_lowercase();
    format!(
        "moemla OpenCL tiled GEMM ({TILE}x{TILE} tiles, 4x4 per work-item, f32 compute), \
         {storage} storage"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_moves_every_byte() {
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let src = dev.upload(&data).unwrap();
        let mut dst = dev.alloc_zeroed(data.len()).unwrap();
        dev.copy(&src, &mut dst).unwrap();
        let mut got = vec![0u8; data.len()];
        dev.read(&dst, 0, &mut got).unwrap();
        assert_eq!(got, data);
        let mut small = dev.alloc_zeroed(10).unwrap();
        assert!(dev.copy(&src, &mut small).is_err());
    }
}
