//! Small reusable shape and dtype checks, each returning the contract's typed error.

use crate::{DType, DeviceTensor, Error, Op, Result};

/// `t` must have `rank` dimensions laid out as `layout` (e.g. "[T, E]").
pub(crate) fn rank(
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    expected: usize,
    layout: &'static str,
) -> Result<()> {
    if t.shape().rank() == expected {
        Ok(())
    } else {
        Err(Error::Rank {
            op,
            arg,
            layout,
            expected,
            got: t.shape().rank(),
            shape: t.shape().clone(),
        })
    }
}

/// Dim `dim` of `t` must equal `expected`; `why` says where the value comes from.
pub(crate) fn dim_eq(
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    dim: usize,
    dim_name: &'static str,
    expected: usize,
    why: &str,
) -> Result<()> {
    let got = t.dims()[dim];
    if got == expected {
        Ok(())
    } else {
        Err(dim_error(
            op,
            arg,
            t,
            dim,
            dim_name,
            format!("{expected} ({why})"),
        ))
    }
}

/// Dim `dim` of `t` must be at least 1.
pub(crate) fn dim_nonzero(
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    dim: usize,
    dim_name: &'static str,
) -> Result<()> {
    if t.dims()[dim] >= 1 {
        Ok(())
    } else {
        Err(dim_error(op, arg, t, dim, dim_name, ">= 1".to_string()))
    }
}

/// An [`Error::Dim`] for dim `dim` of `t`.
pub(crate) fn dim_error(
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    dim: usize,
    dim_name: &'static str,
    expected: String,
) -> Error {
    Error::Dim {
        op,
        arg,
        dim,
        dim_name,
        expected,
        got: t.dims()[dim],
        shape: t.shape().clone(),
    }
}

/// `t` must have one of the `allowed` dtypes.
pub(crate) fn dtype_in(
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    allowed: &[DType],
) -> Result<()> {
    if allowed.contains(&t.dtype()) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
        Err(Error::DType {
            op,
            arg,
            expected: names.join("|"),
            got: t.dtype(),
        })
    }
}

/// `t` must have the same dtype as the argument `reference_arg`, whose dtype is `dtype`.
pub(crate) fn dtype_same(
    op: Op,
    arg: &'static str,
    t: &DeviceTensor,
    reference_arg: &str,
    dtype: DType,
) -> Result<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            arg,
            expected: format!("the dtype of {reference_arg} ({dtype})"),
            got: t.dtype(),
        })
    }
}

/// A parameter rule: fails with [`Error::Param`] unless `ok`.
pub(crate) fn param(
    op: Op,
    param: &'static str,
    ok: bool,
    expected: impl FnOnce() -> String,
    got: impl ToString,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Param {
            op,
            param,
            expected: expected(),
            got: got.to_string(),
        })
    }
}

/// Whether `v`, converted to the f32 kernels compute with, is finite and > 0 (1e300 is
/// infinite and 1e-300 is zero in f32, though both are finite positive f64s).
pub(crate) fn finite_positive_f32(v: f64) -> bool {
    let v = v as f32;
    v.is_finite() && v > 0.0
}

/// Every tensor must belong to `backend`.
pub(crate) fn same_backend(
    op: Op,
    backend: &str,
    tensors: &[(&'static str, &DeviceTensor)],
) -> Result<()> {
    for (arg, t) in tensors {
        if t.backend() != backend {
            return Err(Error::WrongBackend {
                op: op.name(),
                arg,
                expected: backend.to_string(),
                got: t.backend().to_string(),
            });
        }
    }
    Ok(())
}
