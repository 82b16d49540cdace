//! The ceilings every ratio is taken against, measured on the backend in the same run.

use crate::timing::{median_time, Budget};
use moemla_core::{Backend, DType, HostTensor, Result};
use serde::Serialize;

/// Measured limits of one backend for one dtype.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// The dtype the GEMM ceiling was measured in.
    pub dtype: DType,
    /// Device copy bandwidth, bytes/s (read + write counted).
    pub bandwidth: f64,
    /// Bytes of the copy that measured it.
    pub copy_bytes: usize,
    /// Dense GEMM rate, FLOP/s.
    pub gemm_rate: f64,
    /// The GEMM shape (M = N = K).
    pub gemm_size: usize,
    /// Which GEMM implementation measured it.
    pub gemm_impl: String,
}

/// Measures copy bandwidth (a `copy_bytes`-byte buffer) and the dense GEMM rate at
/// `gemm_size`^3 in `dtype`.
pub fn measure(
    backend: &dyn Backend,
    dtype: DType,
    copy_bytes: usize,
    gemm_size: usize,
    budget: Budget,
) -> Result<Ceilings> {
    let copy = backend.copy_bench(copy_bytes, budget.max_reps.min(10))?;
    let n = gemm_size;
    let values: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32 - 3.0) / 8.0).collect();
    let a = backend.upload(&HostTensor::from_f32_as([n, n], &values, dtype)?)?;
    let b = backend.upload(&HostTensor::from_f32_as([n, n], &values, dtype)?)?;
    let gemm = median_time(backend, budget, || backend.dense_gemm(&a, &b).map(drop))?;
    Ok(Ceilings {
        dtype,
        bandwidth: 2.0 * copy_bytes as f64 / copy.as_secs_f64(),
        copy_bytes,
        gemm_rate: 2.0 * (n as f64).powi(3) / gemm.as_secs_f64(),
        gemm_size: n,
        gemm_impl: backend.dense_gemm_impl(dtype),
    })
}
