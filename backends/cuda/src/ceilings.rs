//! Benchmark ceilings: device-to-device copy bandwidth (`cuMemcpyDtoDAsync` timed with CUDA
//! events on the backend's stream) and cuBLAS's dense GEMM (`cublasGemmEx`, f32 compute).
//!
//! Run on an NVIDIA H200 (2026-12-04): copy 4.24-4.25 TB/s, cuBLAS bf16 656-744 TFLOP/s.

use crate::cublas::{self, Cublas, CublasHandle};
use crate::device::CudaDevice as Device;
use crate::error::{CudaError, CudaResult, DriverContext};
use crate::{CudaBuffer, NAME};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use moemla_core::{DType, DeviceTensor, Error, Result};
use moemla_gpu_launch::GpuBuffer;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The contract's error for a failed ceiling step.
fn device_err(call: &str, message: String) -> Error {
    Error::Device {
        backend: NAME.to_string(),
        call: call.to_string(),
        message,
    }
}

/// Median time of `reps` device-to-device copies of `bytes` bytes (at least one), each
/// timed by a pair of CUDA events on the backend's stream. Both buffers are allocated
/// zero-filled (touched) and copied once, untimed, before timing starts.
pub(crate) fn copy_bench(dev: &Device, bytes: usize, reps: usize) -> Result<Duration> {
    time_copies(dev, bytes, reps).map_err(|e| e.into_error(NAME))
}

fn time_copies(dev: &Device, bytes: usize, reps: usize) -> CudaResult<Duration> {
    let src = dev.alloc_zeroed(bytes)?;
    let mut dst = dev.alloc_zeroed(bytes)?;
    let stream = &dev.stream;
    stream
        .memcpy_dtod(&src, &mut dst)
        .call("cuMemcpyDtoDAsync")?;
    // CU_EVENT_DEFAULT: events that record timing (cudarc's default disables it).
    let event = || {
        stream
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .call("cuEventCreate")
    };
    let (start, end) = (event()?, event()?);
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        start.record(stream).call("cuEventRecord")?;
        stream
            .memcpy_dtod(&src, &mut dst)
            .call("cuMemcpyDtoDAsync")?;
        end.record(stream).call("cuEventRecord")?;
        // elapsed_ms waits for both events.
        let ms = start.elapsed_ms(&end).call("cuEventElapsedTime")?;
        times.push(Duration::from_secs_f64(f64::from(ms).max(0.0) / 1e3));
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// `(M, N, K)` of `c[M, N] = a[M, K] . b[N, K]^T`, checked: both operands rank 2 with one
/// K, one float dtype, and every size within cuBLAS's 32-bit `int`.
pub(crate) fn gemm_dims(
    a: &[usize],
    b: &[usize],
    a_dtype: DType,
    b_dtype: DType,
) -> Result<(usize, usize, usize)> {
    let (m, k, n) = match (a, b) {
        ([m, k], [n, kb]) if k == kb && a_dtype == b_dtype && a_dtype.is_float() => (*m, *k, *n),
        _ => {
            return Err(device_err(
                "dense_gemm",
                format!(
                    "needs a [M, K] and b [N, K] of one float dtype, got a {a:?} {a_dtype} and \
                     b {b:?} {b_dtype}"
                ),
            ))
        }
    };
    for (what, v) in [("M", m), ("N", n), ("K", k)] {
        if c_int::try_from(v).is_err() {
            return Err(device_err(
                "dense_gemm",
                format!("{what} = {v} does not fit cuBLAS's int"),
            ));
        }
    }
    Ok((m, n, k))
}

/// A cuBLAS handle bound to the backend's stream; destroyed on drop.
pub(crate) struct Blas {
    lib: Cublas,
    handle: Mutex<Handle>,
    /// Keeps the context alive, and current for `cublasDestroy`.
    stream: Arc<CudaStream>,
}

/// A `cublasHandle_t`.
struct Handle(CublasHandle);

// SAFETY: a cuBLAS handle may be used from any host thread as long as calls on it do not
// overlap (cuBLAS docs, "Thread Safety"); every use goes through `Blas::handle`'s mutex.
unsafe impl Send for Handle {}

impl Blas {
    /// Loads cuBLAS and creates a handle on `dev`'s stream. A missing library is an
    /// [`Error::Device`] naming every path tried, never a panic.
    pub(crate) fn open(dev: &Device) -> Result<Blas> {
        let lib = Cublas::load().map_err(|why| device_err("dlopen(libcublas)", why))?;
        let stream = dev.stream.clone();
        bind(&stream)?;
        let mut raw: CublasHandle = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the device's context is current.
        check("cublasCreate_v2", unsafe {
            (lib.api.cublasCreate_v2)(&mut raw)
        })?;
        let blas = Blas {
            lib,
            handle: Mutex::new(Handle(raw)),
            stream,
        };
        // SAFETY: a live handle and the backend's live stream (kept alive by `blas`).
        let status = unsafe {
            (blas.lib.api.cublasSetStream_v2)(raw, blas.stream.cu_stream() as *mut c_void)
        };
        check("cublasSetStream_v2", status)?;
        Ok(blas)
    }

    /// Where cuBLAS was loaded from.
    pub(crate) fn path(&self) -> &str {
        &self.lib.path
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let handle = self.handle.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = self.stream.context().bind_to_thread();
        // SAFETY: the handle was created by `open` and is destroyed once, here.
        unsafe { (self.lib.api.cublasDestroy_v2)(handle.0) };
    }
}

/// Makes the stream's context current on this thread (cuBLAS uses the current context).
fn bind(stream: &CudaStream) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| CudaError::driver("cuCtxSetCurrent", e).into_error(NAME))
}

/// A cuBLAS status as a result.
fn check(call: &str, status: cublas::CublasStatus) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(device_err(
            call,
            format!("{} ({status})", cublas::status_name(status)),
        ))
    }
}

/// `cudaDataType` of a float dtype (the caller has checked it is one).
fn cuda_type(dtype: DType) -> c_int {
    match dtype {
        DType::F16 => cublas::R_16F,
        DType::BF16 => cublas::R_16BF,
        _ => cublas::R_32F,
    }
}

/// `c[M, N] = a[M, K] . b[N, K]^T` by `cublasGemmEx` on the backend's stream (queued, not
/// waited for), f32 compute, `c` in the dtype of `a`; returns `c`'s allocation and dims.
pub(crate) fn dense_gemm(
    dev: &Device,
    blas: &Blas,
    a: &DeviceTensor,
    b: &DeviceTensor,
) -> Result<(CudaSlice<u8>, [usize; 2], usize)> {
    let (m, n, k) = gemm_dims(a.dims(), b.dims(), a.dtype(), b.dtype())?;
    let a_buf = a.buffer::<CudaBuffer>(NAME, "dense_gemm", "a")?;
    let b_buf = b.buffer::<CudaBuffer>(NAME, "dense_gemm", "b")?;
    let c_bytes = m
        .checked_mul(n)
        .and_then(|e| e.checked_mul(a.dtype().size_in_bytes()))
        .ok_or_else(|| device_err("dense_gemm", format!("c [{m}, {n}] overflows usize")))?;
    let mut c = dev.alloc_zeroed(c_bytes).map_err(|e| e.into_error(NAME))?;
    if m == 0 || n == 0 || k == 0 {
        return Ok((c, [m, n], c_bytes)); // an empty product: c is already its zeros
    }
    bind(&dev.stream)?;
    let ty = cuda_type(a.dtype());
    let (alpha, beta) = (1.0f32, 0.0f32);
    // cuBLAS is column-major. Row-major a [M, K] is, read column-major, a^T [K, M] with
    // leading dimension K; likewise b [N, K] is b^T [K, N] (ld K) and c [M, N] is c^T
    // [N, M] (ld N). c = a . b^T  <=>  c^T = b . a^T, i.e. the column-major product
    // C' (N x M) = op(B') . op(A') with B' = the stored b^T [K, N] transposed (OP_T gives
    // b [N, K]) and A' = the stored a^T [K, M] as is (OP_N). So: transa = T, transb = N,
    // (m, n, k) = (N, M, K), A = b (lda K), B = a (ldb K), C = c (ldc N).
    let (n32, m32, k32) = (n as c_int, m as c_int, k as c_int); // gemm_dims checked these
                                                                // Event tracking is off (CudaDevice::open): the addresses need no sync guards.
    let (a_ptr, b_ptr) = (a_buf.address(), b_buf.address());
    let (c_ptr, _c_sync) = c.device_ptr_mut(&dev.stream);
    let handle = blas.handle.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: a holds M*K, b N*K elements of `ty` (DeviceTensor sizes its buffer from its
    // shape) and c was just allocated with M*N; the leading dimensions match those layouts
    // (see above); alpha and beta are host f32s, as CUBLAS_COMPUTE_32F with the default
    // host pointer mode expects; the handle is live and bound to this stream.
    let status = unsafe {
        (blas.lib.api.cublasGemmEx)(
            handle.0,
            cublas::OP_T,
            cublas::OP_N,
            n32,
            m32,
            k32,
            (&alpha as *const f32).cast(),
            b_ptr as *const c_void,
            ty,
            k32,
            a_ptr as *const c_void,
            ty,
            k32,
            (&beta as *const f32).cast(),
            c_ptr as *mut c_void,
            ty,
            n32,
            cublas::COMPUTE_32F,
            cublas::GEMM_DEFAULT,
        )
    };
    check("cublasGemmEx", status)?;
    drop((handle, _c_sync));
    Ok((c, [m, n], c_bytes))
}

/// What [`dense_gemm`] runs for `dtype`, for the benchmark report.
pub(crate) fn dense_gemm_impl(dtype: DType) -> String {
    match dtype {
        DType::F16 | DType::BF16 => format!(
            "cuBLAS cublasGemmEx, {} inputs and output, f32 compute (CUBLAS_COMPUTE_32F)",
            dtype.to_string().to_lowercase()
        ),
        DType::F32 => {
            "cuBLAS cublasGemmEx, f32, CUBLAS_COMPUTE_32F (no TF32 unless NVIDIA_TF32_OVERRIDE)"
                .to_string()
        }
        _ => "not provided (float dtypes only)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_dims_reads_m_n_k() {
        for dtype in DType::FLOATS {
            assert_eq!(
                gemm_dims(&[3, 5], &[7, 5], dtype, dtype).unwrap(),
                (3, 7, 5)
            );
        }
        assert_eq!(
            gemm_dims(&[0, 4], &[2, 4], DType::BF16, DType::BF16).unwrap(),
            (0, 2, 4)
        );
    }

    #[test]
    fn gemm_dims_rejects_bad_operands_with_a_dense_gemm_error() {
        let bf = DType::BF16;
        let bad = [
            gemm_dims(&[3, 5], &[7, 4], bf, bf),                 // K differs
            gemm_dims(&[3, 5, 1], &[7, 5], bf, bf),              // rank 3
            gemm_dims(&[5], &[7, 5], bf, bf),                    // rank 1
            gemm_dims(&[3, 5], &[7, 5], bf, DType::F16),         // dtypes differ
            gemm_dims(&[3, 5], &[7, 5], DType::I32, DType::I32), // not float
            gemm_dims(&[1 << 31, 5], &[7, 5], bf, bf),           // M over i32::MAX
            gemm_dims(&[3, 5], &[7, 5], DType::F8E4M3, DType::F8E4M3),
        ];
        for (i, r) in bad.into_iter().enumerate() {
            match r {
                Err(Error::Device { backend, call, .. }) => {
                    assert_eq!(
                        (backend.as_str(), call.as_str()),
                        (NAME, "dense_gemm"),
                        "case {i}"
                    )
                }
                other => panic!("case {i}: expected a dense_gemm Device error, got {other:?}"),
            }
        }
        // The largest size cuBLAS's int holds is accepted.
        let max = i32::MAX as usize;
        assert_eq!(gemm_dims(&[max, 1], &[1, 1], bf, bf).unwrap(), (max, 1, 1));
    }

    #[test]
    fn impl_names_the_inputs_and_compute() {
        assert_eq!(
            dense_gemm_impl(DType::BF16),
            "cuBLAS cublasGemmEx, bf16 inputs and output, f32 compute (CUBLAS_COMPUTE_32F)"
        );
        assert!(dense_gemm_impl(DType::F32).contains("no TF32"));
    }
}
