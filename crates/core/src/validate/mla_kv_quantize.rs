//! Shape, dtype and parameter rules of `mla_kv_quantize`.

use super::checks;
use crate::calls::{MlaKvQuantizeCall, Validated};
use crate::fp8::DS_V32_DIM;
use crate::{DType, DeviceTensor, KvFormat, KvQuantizeParams, Op, Result};

const OP: Op = Op::MlaKvQuantize;

/// Checks an `mla_kv_quantize` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    kv: &'a DeviceTensor,
    params: &'a KvQuantizeParams,
) -> Result<MlaKvQuantizeCall<'a>> {
    checks::same_backend(OP, backend, &[("kv", kv)])?;
    checks::rank(OP, "kv", kv, 2, "[N, 576]")?;
    checks::dtype_in(OP, "kv", kv, &DType::FLOATS)?;
    checks::dim_nonzero(OP, "kv", kv, 0, "N")?;
    checks::dim_eq(OP, "kv", kv, 1, "Dqk", DS_V32_DIM, "kv_format fp8_ds_v32")?;
    checks::param(
        OP,
        "kv_format",
        params.kv_format == KvFormat::Fp8DsV32,
        || "\"fp8_ds_v32\" (the only format it writes)".into(),
        format!("\"{}\"", params.kv_format.name()),
    )?;
    Ok(MlaKvQuantizeCall {
        kv,
        params,
        dtype: kv.dtype(),
        rows: kv.dims()[0],
        validated: Validated(()),
    })
}
