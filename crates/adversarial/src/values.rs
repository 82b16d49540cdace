//! Value strategies: ordinary numbers mixed with the extremes that break kernels, and the
//! upload helpers the properties share.

use moemla_core::{Backend, DType, DeviceTensor, HostTensor, Result};
use proptest::prelude::*;

/// Mostly ordinary values in [-4, 4), sometimes NaN, ±inf, huge, tiny, denormal or ±0.
pub fn extreme_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -4.0f32..4.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(1e30f32),
        1 => Just(-1e30f32),
        1 => Just(-1000.0f32),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(1e-40f32),
    ]
}

/// Finite values in [-1, 1): data whose results must stay finite.
pub fn unit_f32() -> impl Strategy<Value = f32> {
    -1.0f32..1.0
}

/// Scalar parameters as users might pass them: ordinary ones and every f64 that is not a
/// usable f32 (NaN, ±inf, 1e300 overflowing f32, 1e-300 underflowing to 0), plus 0 and < 0.
pub fn extreme_param() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => 0.01f64..4.0,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(1e300),
        1 => Just(1e-300),
        1 => Just(0.0),
        1 => Just(-1.0),
        1 => Just(1e30),
        1 => Just(1e-30),
    ]
}

/// Whether `v`, as the f32 kernels compute with, is finite and > 0.
pub fn usable_positive(v: f64) -> bool {
    let v = v as f32;
    v.is_finite() && v > 0.0
}

/// One of the run dtypes.
pub fn float_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

/// `values` stored as `dtype` (rounded to nearest-even) and uploaded; also returns the
/// values as stored, widened back to f32 (what the backend actually sees).
pub fn upload_as(
    backend: &dyn Backend,
    dims: &[usize],
    values: &[f32],
    dtype: DType,
) -> Result<(DeviceTensor, Vec<f32>)> {
    let host = HostTensor::from_f32_as(dims, values, dtype)?;
    let stored = host.to_f32_vec()?;
    Ok((backend.upload(&host)?, stored))
}

/// An I32 tensor uploaded.
pub fn upload_i32(backend: &dyn Backend, dims: &[usize], values: &[i32]) -> Result<DeviceTensor> {
    backend.upload(&HostTensor::from_slice(dims, values)?)
}
