//! `mla_cache_write`: new latent rows written into the caller's paged cache, in place.

use super::{cache_formats, into::distinct, require};
use crate::validate::mla_cache_write as rules;
use crate::{Backend, CacheWriteParams, DeviceTensor, Op, Result};

/// Writes latent rows into a paged cache in place (vLLM's `concat_and_cache_mla`).
///
/// - `kv`: `[N, Dqk]`, F32 | F16 | BF16 — the new rows.
/// - `slot_mapping`: `[N]` I32 — row `i` goes to flat slot `slot_mapping[i]` (`block *
///   block_size + offset`); -1 skips the row; any other value outside `[0, num_blocks *
///   block_size)` is an [`crate::Error::IndexOutOfRange`] (reported as the op's backend
///   reports index errors) and nothing is written out of bounds. When two rows name one
///   slot, the later row (in row order) wins.
/// - `kv_cache`: the caller's cache, `[num_blocks, block_size, 1, Dqk]` in the dtype of
///   `kv` (`kv_format` dense: the row is copied), or U8 `[num_blocks, block_size, 1, 656]`
///   (`fp8_ds_v32`, Dqk 576: the row is quantized exactly as `mla_kv_quantize` does; a
///   non-finite value in a row whose slot is not -1 is an [`crate::Error::Input`]). It
///   must share no buffer with `kv` or `slot_mapping`. Slots no row names keep their bytes.
pub fn mla_cache_write(
    backend: &dyn Backend,
    kv: &DeviceTensor,
    slot_mapping: &DeviceTensor,
    kv_cache: &mut DeviceTensor,
    params: &CacheWriteParams,
) -> Result<()> {
    let cache = &*kv_cache;
    let call = rules::validate(backend.name(), kv, slot_mapping, cache, params)?;
    let op = Op::MlaCacheWrite;
    let read = [("kv", kv), ("slot_mapping", slot_mapping)];
    distinct(op, &read, &[("kv_cache", cache)])?;
    require(backend, op, call.dtype, cache_formats(params.kv_format))?;
    backend.mla_cache_write(&call)
}
