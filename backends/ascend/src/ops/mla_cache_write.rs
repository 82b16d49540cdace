//! mla_cache_write (dense cache) -> \[aclnnIndexSelect\] + aclnnScatterPaKvCache.
//!
//! aclnnScatterPaKvCache (hicann/ops-transformer
//! `attention/scatter_pa_kv_cache/docs/aclnnScatterPaKvCache.md`; its semantics, with the
//! source of each rule, in the emulator's `ops/scatter_pa_kv_cache.rs`) writes key rows
//! into a paged ND cache at flat slots, in its scene 6 (key only: key [N, num_head,
//! k_head_size], value and valueCacheRef empty, cacheMode "Norm"). Where it differs from
//! the contract:
//! - its slotMapping must lie in [0, num_blocks * block_size) and hold no slot twice
//!   ("重复时不保证正确性"); the contract skips -1 and lets the later row win a repeated
//!   slot. So slot_mapping is copied to the host, checked (`moemla_core::indices`), and
//!   reduced to the rows that are written: not -1, and the last row naming each slot. If
//!   that is not every row in order, those rows are first gathered into a contiguous
//!   temporary with aclnnIndexSelect (dim 0). No row is written: no call at all.
//! - on Atlas A2/A3 its key/cache dtypes are FLOAT16, BFLOAT16 and INT8 only ("不支持
//!   FLOAT ..."): an F32 cache gets one aclnnInplaceCopy per written row instead; the
//!   fp8_ds_v32 cache is Unsupported (CANN has no op writing
//!   the 656-byte row: see `gaps.rs`).
//!
//! The cache [num_blocks, block_size, 1, Dqk] is passed as it is (num_head 1).

use crate::acl::{acl_dtype, ACL_FLOAT};
use crate::loader::OpApi;
use crate::ops::{compose, i32s, require_ops, unsupported};
use crate::AscendBackend;
use moemla_core::calls::MlaCacheWriteCall;
use moemla_core::{indices, DType, KvFormat, Op, Result};

/// What the mapping does, for `info().notes`.
pub const NOTES: [&str; 1] = [
    "mla_cache_write: dense F16/BF16 cache via aclnnScatterPaKvCache (scene 6: key only, cacheMode Norm); its slotMapping may hold neither -1 nor a repeated slot, so -1 rows and all but the last row naming a slot are dropped on the host and the rest gathered first (aclnnIndexSelect); F32 (which aclnnScatterPaKvCache on Atlas A2/A3 does not take) by one aclnnInplaceCopy per written row",
];

/// Whether the loaded op libraries have what mla_cache_write needs.
pub fn available(ops: &OpApi) -> bool {
    ops.aclnnScatterPaKvCacheGetWorkspaceSize.is_some()
        && ops.aclnnScatterPaKvCache.is_some()
        && ops.aclnnIndexSelectGetWorkspaceSize.is_some()
        && ops.aclnnIndexSelect.is_some()
}

/// Whether the loaded op libraries have what the F32 cache needs (aclnnInplaceCopy).
pub fn f32_available(ops: &OpApi) -> bool {
    ops.aclnnInplaceCopy.is_some() && ops.aclnnInplaceCopyGetWorkspaceSize.is_some()
}

/// The run dtypes aclnnScatterPaKvCache takes.
pub const DTYPES: [DType; 2] = [DType::F16, DType::BF16];

/// The rows to write and their slots, in order: not -1, and only the last row naming a
/// slot (the contract's winner). `slots` has been checked.
pub(crate) fn winners(slots: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let mut last = std::collections::HashMap::new();
    for (row, &s) in slots.iter().enumerate() {
        if s >= 0 {
            last.insert(s, row);
        }
    }
    slots
        .iter()
        .enumerate()
        .filter(|&(row, &s)| s >= 0 && last[&s] == row)
        .map(|(row, &s)| (row as i32, s))
        .unzip()
}

fn to_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs mla_cache_write.
pub fn run(be: &AscendBackend, call: &MlaCacheWriteCall<'_>) -> Result<()> {
    let dev = &be.dev;
    let kv_mem = be.mem(call.kv, "mla_cache_write", "kv")?;
    let slot_mem = be.mem(call.slot_mapping, "mla_cache_write", "slot_mapping")?;
    let cache_mem = be.mem(call.kv_cache, "mla_cache_write", "kv_cache")?;
    // Index contents first (input errors before capability), on the host.
    let slots = i32s(&dev.download_bytes(slot_mem, call.rows * 4)?);
    indices::check_cache_slots(call, &slots)?;
    if call.params.kv_format != KvFormat::Dense {
        return Err(unsupported(
            Op::MlaCacheWrite,
            format!("{} {}", call.params.kv_format.name(), call.dtype),
            crate::ops::gaps::NO_FP8_CACHE_WRITE,
        ));
    }
    let (rows, kept_slots) = winners(&slots);
    if call.dtype == DType::F32 {
        // aclnnScatterPaKvCache on Atlas A2/A3 takes no FLOAT: one aclnnInplaceCopy per
        // written row (the winners, so no slot is written twice).
        require_ops(Op::MlaCacheWrite, f32_available(&dev.cann.ops))?;
        let d = call.d_qk;
        for (&row, &slot) in rows.iter().zip(&kept_slots) {
            let dst = dev.tensor(cache_mem, &[1, d], None, slot as usize * d, ACL_FLOAT)?;
            let src = dev.tensor(kv_mem, &[1, d], None, row as usize * d, ACL_FLOAT)?;
            // Both rows lie inside their tensors (slot checked, row < N).
            compose::inplace_copy(dev, &dst, &src)?;
        }
        return Ok(());
    }
    if !DTYPES.contains(&call.dtype) {
        return Err(unsupported(
            Op::MlaCacheWrite,
            call.dtype.to_string(),
            "aclnnScatterPaKvCache on Atlas A2/A3 takes FLOAT16, BFLOAT16 and INT8 keys only",
        ));
    }
    require_ops(Op::MlaCacheWrite, available(&dev.cann.ops))?;
    if rows.is_empty() {
        return Ok(());
    }
    let (n, d) = (rows.len(), call.d_qk);
    let dt = acl_dtype(call.dtype);
    let i32_dt = acl_dtype(DType::I32);
    let ops = &dev.cann.ops;
    let all_in_order = n == call.rows;
    // The rows written, contiguous: kv itself, or a gathered copy.
    let gathered = if all_in_order {
        None
    } else {
        let idx_mem = dev.upload_bytes(&to_bytes(&rows))?;
        let out = dev.alloc(n * d * call.dtype.size_in_bytes())?;
        let src = dev.tensor(kv_mem, &[call.rows, d], None, 0, dt)?;
        let idx = dev.tensor(&idx_mem, &[n], None, 0, i32_dt)?;
        let dst = dev.tensor(&out, &[n, d], None, 0, dt)?;
        // SAFETY: handles live for the call; out-pointers come from `Device::run`.
        dev.run(
            "aclnnIndexSelect",
            |ws, ex| unsafe {
                (ops.aclnnIndexSelectGetWorkspaceSize
                    .expect("checked by available()"))(
                    src.raw(), 0, idx.raw(), dst.raw(), ws, ex
                )
            },
            ops.aclnnIndexSelect,
        )?;
        Some(out)
    };
    let key_mem = gathered.as_deref().unwrap_or(kv_mem);
    let slot_dev = dev.upload_bytes(&to_bytes(&kept_slots))?;
    // Scene 6's empty value / valueCacheRef: 0-dimensional tensors over a scratch element.
    let empty = dev.alloc(call.dtype.size_in_bytes())?;
    let key = dev.tensor(key_mem, &[n, 1, d], None, 0, dt)?;
    let cache = dev.tensor(
        cache_mem,
        &[call.num_blocks, call.block_size, 1, d],
        None,
        0,
        dt,
    )?;
    let slot_t = dev.tensor(&slot_dev, &[n], None, 0, i32_dt)?;
    let value = dev.tensor(&empty, &[], None, 0, dt)?;
    let value_cache = dev.tensor(&empty, &[], None, 0, dt)?;
    let null = std::ptr::null_mut();
    let norm = c"Norm";
    let none = c"None";
    // SAFETY: handles and strings live for the call; unused optional inputs are null.
    dev.run(
        "aclnnScatterPaKvCache",
        |ws, ex| unsafe {
            (ops.aclnnScatterPaKvCacheGetWorkspaceSize
                .expect("checked by available()"))(
                key.raw(),
                cache.raw(),
                slot_t.raw(),
                value.raw(),
                value_cache.raw(),
                null,
                null,
                null,
                norm.as_ptr(),
                none.as_ptr(),
                null,
                null,
                ws,
                ex,
            )
        },
        ops.aclnnScatterPaKvCache,
    )
}

#[cfg(test)]
mod tests {
    use super::winners;

    #[test]
    fn winners_skip_minus_one_and_keep_the_last_row_of_a_slot() {
        let (rows, slots) = winners(&[3, -1, 5, 3, 7, 5, -1]);
        assert_eq!(rows, vec![3, 4, 5]);
        assert_eq!(slots, vec![3, 7, 5]);
        let (rows, slots) = winners(&[0, 1, 2]);
        assert_eq!((rows, slots), (vec![0, 1, 2], vec![0, 1, 2]));
        let (rows, slots) = winners(&[-1, -1]);
        assert!(rows.is_empty() && slots.is_empty());
    }
}
