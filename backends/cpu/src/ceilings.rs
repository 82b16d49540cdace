//! Benchmark ceilings: a parallel memory copy (bandwidth) and the `gemm` crate's
//! multi-threaded f32 product (compute), measured the way the ops use the machine.

use crate::convert::storage_from_f32;
use crate::storage::{float_slice, zeroed, FloatSlice};
use crate::CpuStorage;
use moemla_core::alloc::try_filled_vec;
use moemla_core::{DeviceTensor, Error, Result};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// Bytes each rayon task copies: large enough to stream, small enough to balance cores.
const COPY_CHUNK: usize = 1 << 20;

/// Median time of `reps` parallel copies of `bytes` bytes between two buffers that were
/// allocated and written before timing starts; a size the host cannot allocate is
/// [`Error::OutOfMemory`].
pub fn copy_bench(bytes: usize, reps: usize) -> Result<Duration> {
    let mut src: Vec<u8> = try_filled_vec(bytes, "cpu copy_bench source")?;
    src.fill(1);
    let mut dst: Vec<u8> = try_filled_vec(bytes, "cpu copy_bench destination")?;
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
    Ok(times[times.len() / 2])
}

/// `c[M, N] = a[M, K] . b[N, K]^T` on all cores, f32 compute (F16/BF16 inputs upcast
/// first), `c` in the dtype of `a`.
///
/// The operands are checked before anything is allocated or multiplied: both rank 2, one
/// float dtype, the same K, and buffers holding exactly `M * K` and `N * K` elements
/// ([`Error::Device`] otherwise); `c`'s size is checked ([`Error::Size`]) and allocated
/// fallibly ([`Error::OutOfMemory`]). So a malformed tensor can never make gemm read or
/// write out of bounds.
pub fn dense_gemm(backend: &str, a: &DeviceTensor, b: &DeviceTensor) -> Result<CpuStorage> {
    let bad = |why: String| Error::Device {
        backend: backend.to_string(),
        call: "dense_gemm".into(),
        message: format!(
            "needs a [M, K] and b [N, K] of one float dtype ({why}), got {a:?} and {b:?}"
        ),
    };
    let (m, k, n) = match (a.dims(), b.dims()) {
        (&[m, k], &[n, kb]) if k == kb => (m, k, n),
        (&[_, _], &[_, _]) => return Err(bad("K differs".into())),
        _ => return Err(bad("both rank 2".into())),
    };
    if a.dtype() != b.dtype() || !a.dtype().is_float() {
        return Err(bad("dtypes differ or are not float".into()));
    }
    // `float_slice` checks that each buffer holds exactly its tensor's (checked) element
    // count, so m * k and n * k cannot overflow and every element read is in bounds.
    let a_in = float_slice(a, backend, "dense_gemm", "a")?;
    let b_in = float_slice(b, backend, "dense_gemm", "b")?;
    let mut c: Vec<f32> = zeroed(&[m, n], "cpu dense_gemm c")?;
    let upcast = |x: FloatSlice<'_>, rows: usize, what: &str| -> Result<Vec<f32>> {
        let mut v = zeroed(&[rows, k], what)?;
        x.read_f32(0, &mut v);
        Ok(v)
    };
    let (a32, b32) = (
        upcast(a_in, m, "cpu dense_gemm a")?,
        upcast(b_in, n, "cpu dense_gemm b")?,
    );
    if m > 0 && n > 0 && k > 0 {
        // SAFETY: a32 holds m * k elements, row-major (row stride k, col stride 1); b32
        // holds n * k, row-major, read as its transpose k x n (row stride 1, col stride k);
        // c holds m * n, row-major (row stride n). The three lengths were built from the
        // checked dims above, every stride indexes a live allocation (so fits in isize),
        // and c does not alias the inputs.
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
    }
    storage_from_f32(c, a.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use moemla_core::{Backend, DType, HostTensor};
    use std::sync::Arc;

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

    /// A tensor of `dims` over a buffer of `len` F32 elements, built by hand (as a buggy
    /// caller or an old unchecked reshape could).
    fn forged(dims: &[usize], len: usize) -> DeviceTensor {
        let storage = Arc::new(CpuStorage::F32(vec![0.0; len]));
        DeviceTensor::new(storage, crate::NAME.into(), dims, DType::F32)
    }

    #[test]
    fn dense_gemm_rejects_malformed_operands_before_touching_memory() {
        let cpu = CpuBackend::new();
        let ok = forged(&[2, 3], 6);
        let bf16 = cpu.alloc_zeroed(&[2, 3].into(), DType::BF16).unwrap();
        let ids = cpu.alloc_zeroed(&[2, 3].into(), DType::I32).unwrap();
        for (a, b, why) in [
            (forged(&[2, 3, 1], 6), ok.clone(), "rank 3"),
            (ok.clone(), forged(&[6], 6), "rank 1"),
            (ok.clone(), bf16, "dtypes differ"),
            (ids.clone(), ids, "not float"),
            // The buffer holds fewer elements than the shape claims: gemm would read past it.
            (forged(&[2, 3], 4), ok.clone(), "short buffer"),
            (ok.clone(), forged(&[4, 3], 6), "short buffer"),
            // 2^64 elements over an empty buffer (the count wraps to 0 unchecked).
            (
                forged(&[1 << 62, 4], 0),
                forged(&[1, 4], 4),
                "unrepresentable",
            ),
        ] {
            let err = cpu.dense_gemm(&a, &b).unwrap_err();
            assert!(matches!(err, Error::Device { .. }), "{why}: {err}");
        }
    }

    #[test]
    fn dense_gemm_output_size_is_checked_and_allocated_fallibly() {
        let cpu = CpuBackend::new();
        // Empty operands (K = 0) whose product has 2^63 elements: no byte count fits.
        let err = cpu
            .dense_gemm(&forged(&[2, 0], 0), &forged(&[1 << 62, 0], 0))
            .unwrap_err();
        assert!(matches!(err, Error::Size { .. }), "{err}");
        // 2^40 elements (4 TiB): representable, not allocatable.
        let err = cpu
            .dense_gemm(&forged(&[1 << 20, 0], 0), &forged(&[1 << 20, 0], 0))
            .unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        // K = 0 is an empty sum: c = 0.
        let c = cpu
            .dense_gemm(&forged(&[2, 0], 0), &forged(&[3, 0], 0))
            .unwrap();
        assert_eq!(
            cpu.download(&c).unwrap().to_f32_vec().unwrap(),
            vec![0.0; 6]
        );
    }

    #[test]
    fn copy_bench_of_an_impossible_size_is_an_error() {
        let err = copy_bench(1 << 46, 1).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    }

    #[test]
    fn copy_bench_reports_a_positive_time() {
        assert!(copy_bench(1 << 20, 3).unwrap() > Duration::ZERO);
    }
}
