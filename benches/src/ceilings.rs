//! The ceilings every ratio is taken against, measured on the backend in the same run.

use crate::timing::{median_time, Budget};
use moemla_core::alloc::try_filled_vec;
use moemla_core::{Backend, DType, Error, HostTensor, Result, Shape};
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

/// Measures copy bandwidth (a `copy_bytes`-byte buffer) and the dense GEMM rate at
/// `gemm_size`^3 in `dtype`, after [`check_fits`]: sizes the machine cannot hold are a
/// typed error, never an abort.
pub fn measure(
    backend: &dyn Backend,
    dtype: DType,
    copy_bytes: usize,
    gemm_size: usize,
    budget: Budget,
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
    Ok(Ceilings {
        dtype,
        bandwidth: 2.0 * copy_bytes as f64 / copy.as_secs_f64(),
        copy_bytes,
        gemm_rate: 2.0 * (n as f64).powi(3) / gemm.as_secs_f64(),
        gemm_size: n,
        gemm_impl: backend.dense_gemm_impl(dtype),
    })
}
