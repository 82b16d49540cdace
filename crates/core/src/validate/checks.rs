//! Small reusable shape and dtype checks, each returning the contract's typed error.

use crate::fp8::{DS_V32_DIM, DS_V32_LATENT, DS_V32_ROW_BYTES};
use crate::{DType, DeviceTensor, Error, KvFormat, Op, Result};

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

/// The dtypes of `q` and a latent cache in `format`; returns the run dtype (of `q`). Dense:
/// `q` F32 | F16 | BF16 and the cache the same; `fp8_ds_v32`: `q` F16 | BF16, the cache U8.
pub(crate) fn cache_dtypes(
    op: Op,
    q: &DeviceTensor,
    kv_cache: &DeviceTensor,
    format: KvFormat,
) -> Result<DType> {
    if format == KvFormat::Dense {
        dtype_in(op, "q", q, &DType::FLOATS)?;
        dtype_same(op, "kv_cache", kv_cache, "q", q.dtype())?;
        return Ok(q.dtype());
    }
    if ![DType::F16, DType::BF16].contains(&q.dtype()) {
        return Err(Error::DType {
            op,
            arg: "q",
            expected: "F16|BF16 (kv_format fp8_ds_v32)".into(),
            got: q.dtype(),
        });
    }
    super::paged_cache::fp8_bytes(op, kv_cache)?;
    Ok(q.dtype())
}

/// The `fp8_ds_v32` layout: one kv head of 656-byte rows, `Dqk` 576 and `Dv` 512.
pub(crate) fn fp8_cache_dims(
    op: Op,
    q: &DeviceTensor,
    kv_cache: &DeviceTensor,
    head_dim_v: usize,
) -> Result<()> {
    let why = "kv_format fp8_ds_v32";
    dim_eq(op, "kv_cache", kv_cache, 2, "Hkv", 1, why)?;
    dim_eq(
        op,
        "kv_cache",
        kv_cache,
        3,
        "row bytes",
        DS_V32_ROW_BYTES,
        why,
    )?;
    dim_eq(op, "q", q, 3, "Dqk", DS_V32_DIM, why)?;
    param(
        op,
        "head_dim_v",
        head_dim_v == DS_V32_LATENT,
        || format!("{DS_V32_LATENT} ({why})"),
        head_dim_v,
    )
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

/// The parameters every attention op shares: `head_dim_v` in `[1, Dqk)` and
/// `softmax_scale` finite and > 0 as an f32.
pub(crate) fn attention_params(
    op: Op,
    head_dim_v: usize,
    softmax_scale: f64,
    d_qk: usize,
) -> Result<()> {
    param(
        op,
        "head_dim_v",
        head_dim_v >= 1,
        || ">= 1".into(),
        head_dim_v,
    )?;
    param(
        op,
        "head_dim_v",
        head_dim_v < d_qk,
        || format!("< Dqk ({d_qk})"),
        head_dim_v,
    )?;
    param(
        op,
        "softmax_scale",
        finite_positive_f32(softmax_scale),
        || "finite and > 0 as an f32 (what kernels compute with)".into(),
        softmax_scale,
    )
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
