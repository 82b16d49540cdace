//! Helpers shared by this crate's integration tests: the shared backend, deterministic
//! data, and host round trips.

#![allow(dead_code)] // each test binary uses a subset

use moemla_core::{Backend, DType, DeviceTensor, Error, HostTensor};
use moemla_opencl::OpenClBackend;
use std::sync::Arc;

/// The process-wide backend, or `None` (test skipped) when OpenCL is unavailable here and
/// env `MOEMLA_REQUIRE` does not list `opencl`.
pub fn backend() -> Option<Arc<OpenClBackend>> {
    match moemla_opencl::shared() {
        Ok(b) => Some(b),
        Err(e @ Error::Unavailable { .. }) => {
            let required = std::env::var("MOEMLA_REQUIRE")
                .is_ok_and(|v| v.split(',').any(|n| n.trim() == moemla_opencl::NAME));
            assert!(!required, "opencl is required by MOEMLA_REQUIRE: {e}");
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("opening the OpenCL backend failed: {e}"),
    }
}

/// Deterministic uniform values in [lo, hi) (xorshift; the seed picks the stream).
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `values` stored as `dtype` on the device, and the stored values widened to f64.
pub fn float_tensor(
    b: &dyn Backend,
    dims: &[usize],
    values: &[f32],
    dtype: DType,
) -> (DeviceTensor, Vec<f64>) {
    let host = HostTensor::from_f32_as(dims, values, dtype).unwrap();
    let stored = host
        .to_f32_vec()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    (b.upload(&host).unwrap(), stored)
}

/// An I32 tensor on the device.
pub fn int_tensor(b: &dyn Backend, dims: &[usize], values: &[i32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, values).unwrap())
        .unwrap()
}

/// A device tensor's elements widened to f32.
pub fn read_f32(b: &dyn Backend, t: &DeviceTensor) -> Vec<f32> {
    b.download(t).unwrap().to_f32_vec().unwrap()
}

/// A device I32 tensor's elements.
pub fn read_i32(b: &dyn Backend, t: &DeviceTensor) -> Vec<i32> {
    b.download(t).unwrap().to_i32_vec().unwrap()
}

/// The contract's default tolerance (atol = rtol) for a run dtype.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        DType::BF16 => 2e-2,
        _ => 1e-4,
    }
}

/// Asserts |got - want| <= tol + tol * |want| elementwise (NaN fails; equal infinities pass).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let ok = g == w || (g - w).abs() <= tol + tol * w.abs();
        assert!(ok, "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}
