//! Benchmark ceilings: a parallel memory copy (bandwidth) and the `gemm` crate's
//! multi-threaded f32 product (compute), measured the way the ops use the machine.

use crate::convert::storage_from_f32;
use crate::storage::float_slice;
use crate::CpuStorage;
use moemla_core::{DeviceTensor, Error, Result};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Bytes each rayon task copies: large enough to stream, small enough to balance cores.
const COPY_CHUNK: usize = 1 << 20;

/// Median time of `reps` parallel copies of `bytes` bytes between two buffers that were
/// allocated and written before timing starts.
pub fn copy_bench(bytes: usize, reps: usize) -> Duration {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let copy = |dst: &mut [u8]| {
        dst.par_chunks_mut(COPY_CHUNK)
            .zip(src.par_chunks(COPY_CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
    };
    copy(&mut dst); // first touch of every page
    let mut times: Vec<Duration> = (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            copy(&mut dst);
            t0.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// `c[M, N] = a[M, K] . b[N, K]^T` on all cores, f32 compute (F16/BF16 inputs upcast
/// first), `c` in the dtype of `a`.
pub fn dense_gemm(backend: &str, a: &DeviceTensor, b: &DeviceTensor) -> Result<CpuStorage> {
    let (m, k, n) = match (a.dims(), b.dims()) {
        ([m, k], [n, kb]) if k == kb && a.dtype() == b.dtype() && a.dtype().is_float() => {
            (*m, *k, *n)
        }
        _ => {
            return Err(Error::Device {
                backend: backend.to_string(),
                call: "dense_gemm".into(),
                message: format!(
                    "needs a [M, K] and b [N, K] of one float dtype, got {a:?} and {b:?}"
                ),
            })
        }
    };
    let upcast = |t: &DeviceTensor, len: usize| -> Result<Vec<f32>> {
        let mut v = vec![0.0; len];
        float_slice(t, backend, "dense_gemm", "operand")?.read_f32(0, &mut v);
        Ok(v)
    };
    let (a32, b32) = (upcast(a, m * k)?, upcast(b, n * k)?);
    let mut c = vec![0.0f32; m * n];
    // SAFETY: a32 is m x k row-major (row stride k, col stride 1), b32 is n x k row-major,
    // read as its transpose k x n (row stride 1, col stride k); c is m x n row-major. All
    // three hold exactly those element counts, and c does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a32.as_ptr(),
            1,
            k as isize,
            b32.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    Ok(storage_from_f32(c, a.dtype()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use moemla_core::{Backend, HostTensor};

    #[test]
    fn dense_gemm_multiplies_by_the_transpose() {
        let cpu = CpuBackend::new();
        // a = [[1, 2], [3, 4]], b = [[5, 6], [7, 8], [9, 10]]: c = a . b^T.
        let a = cpu
            .upload(&HostTensor::from_slice([2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap())
            .unwrap();
        let b = cpu
            .upload(&HostTensor::from_slice([3, 2], &[5.0f32, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap())
            .unwrap();
        let c = cpu.dense_gemm(&a, &b).unwrap();
        assert_eq!(c.dims(), &[2, 3]);
        let got = cpu.download(&c).unwrap().to_f32_vec().unwrap();
        assert_eq!(got, vec![17.0, 23.0, 29.0, 39.0, 53.0, 67.0]);
    }

    #[test]
    fn dense_gemm_rejects_mismatched_inner_dims() {
        let cpu = CpuBackend::new();
        let a = cpu
            .upload(&HostTensor::from_slice([1, 2], &[1.0f32, 2.0]).unwrap())
            .unwrap();
        let b = cpu
            .upload(&HostTensor::from_slice([1, 3], &[1.0f32, 2.0, 3.0]).unwrap())
            .unwrap();
        assert!(matches!(cpu.dense_gemm(&a, &b), Err(Error::Device { .. })));
    }

    #[test]
    fn copy_bench_reports_a_positive_time() {
        assert!(copy_bench(1 << 20, 3) > Duration::ZERO);
    }
}
