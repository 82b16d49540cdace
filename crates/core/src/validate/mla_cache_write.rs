//! Shape, dtype and parameter rules of `mla_cache_write`.

use super::{checks, paged_cache};
use crate::calls::{MlaCacheWriteCall, Validated};
use crate::fp8::{DS_V32_DIM, DS_V32_ROW_BYTES};
use crate::{CacheWriteParams, DType, DeviceTensor, KvFormat, Op, Result};

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
        paged_cache::fp8_bytes(OP, kv_cache)?;
    } else {
        checks::dtype_same(OP, "kv_cache", kv_cache, "kv", kv.dtype())?;
    }
    checks::dim_nonzero(OP, "kv", kv, 0, "N")?;
    checks::dim_nonzero(OP, "kv", kv, 1, "Dqk")?;
    let [rows, d_qk] = [0, 1].map(|d| kv.dims()[d]);
    checks::dim_eq(OP, "slot_mapping", slot_mapping, 0, "N", rows, "N of kv")?;
    let [num_blocks, block_size] = paged_cache::blocks(OP, "kv_cache", kv_cache)?;
    paged_cache::one_kv_head(OP, kv_cache)?;
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
