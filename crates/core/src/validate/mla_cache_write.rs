//! Shape, dtype and parameter rules of `mla_cache_write`.

use super::checks;
use crate::calls::{MlaCacheWriteCall, Validated};
use crate::fp8::{DS_V32_DIM, DS_V32_ROW_BYTES};
use crate::{CacheWriteParams, DType, DeviceTensor, Error, KvFormat, Op, Result};

const OP: Op = Op::MlaCacheWrite;

/// Checks an `mla_cache_write` call against the contract and returns it validated.
pub(crate) fn validate<'a>(
    backend: &str,
    kv: &'a DeviceTensor,
    slot_mapping: &'a DeviceTensor,
    kv_cache: &'a DeviceTensor,
    params: &'a CacheWriteParams,
) -> Result<MlaCacheWriteCall<'a>> {
    let tensors = [
        ("kv", kv),
        ("slot_mapping", slot_mapping),
        ("kv_cache", kv_cache),
    ];
    checks::same_backend(OP, backend, &tensors)?;
    checks::rank(OP, "kv", kv, 2, "[N, Dqk]")?;
    checks::rank(OP, "slot_mapping", slot_mapping, 1, "[N]")?;
    checks::rank(
        OP,
        "kv_cache",
        kv_cache,
        4,
        "[num_blocks, block_size, 1, Dqk]",
    )?;
    let fp8 = params.kv_format == KvFormat::Fp8DsV32;
    checks::dtype_in(OP, "kv", kv, &DType::FLOATS)?;
    checks::dtype_in(OP, "slot_mapping", slot_mapping, &[DType::I32])?;
    if fp8 {
        if kv_cache.dtype() != DType::U8 {
            return Err(Error::DType {
                op: OP,
                arg: "kv_cache",
                expected: "U8 (kv_format fp8_ds_v32: 656-byte rows)".into(),
                got: kv_cache.dtype(),
            });
        }
    } else {
        checks::dtype_same(OP, "kv_cache", kv_cache, "kv", kv.dtype())?;
    }
    checks::dim_nonzero(OP, "kv", kv, 0, "N")?;
    checks::dim_nonzero(OP, "kv", kv, 1, "Dqk")?;
    let [rows, d_qk] = [0, 1].map(|d| kv.dims()[d]);
    checks::dim_eq(OP, "slot_mapping", slot_mapping, 0, "N", rows, "N of kv")?;
    checks::dim_nonzero(OP, "kv_cache", kv_cache, 0, "num_blocks")?;
    checks::dim_nonzero(OP, "kv_cache", kv_cache, 1, "block_size")?;
    checks::dim_eq(OP, "kv_cache", kv_cache, 2, "Hkv", 1, "one kv head")?;
    if fp8 {
        let why = "kv_format fp8_ds_v32";
        checks::dim_eq(OP, "kv", kv, 1, "Dqk", DS_V32_DIM, why)?;
        checks::dim_eq(
            OP,
            "kv_cache",
            kv_cache,
            3,
            "row bytes",
            DS_V32_ROW_BYTES,
            why,
        )?;
    } else {
        checks::dim_eq(OP, "kv_cache", kv_cache, 3, "Dqk", d_qk, "Dqk of kv")?;
    }
    let [num_blocks, block_size] = [0, 1].map(|d| kv_cache.dims()[d]);
    Ok(MlaCacheWriteCall {
        kv,
        slot_mapping,
        kv_cache,
        params,
        dtype: kv.dtype(),
        rows,
        d_qk,
        num_blocks,
        block_size,
        validated: Validated(()),
    })
}
