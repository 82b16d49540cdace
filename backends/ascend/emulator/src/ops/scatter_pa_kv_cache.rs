//! aclnnScatterPaKvCache (key only, "Norm" ND cache) and aclnnIndexSelect.
//!
//! aclnnScatterPaKvCache, as documented in hicann/ops-transformer
//! `attention/scatter_pa_kv_cache/docs/aclnnScatterPaKvCache.md` (\[doc\]):
//! `aclnnScatterPaKvCacheGetWorkspaceSize(const aclTensor *key, aclTensor *keyCacheRef,
//! const aclTensor *slotMapping, const aclTensor *value, aclTensor *valueCacheRef,
//! const aclTensor *compressLensOptional, const aclTensor *compressSeqOffsetOptional,
//! const aclTensor *seqLensOptional, char *cacheModeOptional, char *scatterModeOptional,
//! const aclIntArray *stridesOptional, const aclIntArray *offsetsOptional,
//! uint64_t *workspaceSize, aclOpExecutor **executor)`.
//!
//! The emulator models the one scenario moemla uses, \[doc\] 场景六 (scene 6, supported on
//! Atlas A2/A3: "仅支持场景一、二、四、五、六、七"): key `[N, num_head, k_head_size]`, value and
//! valueCacheRef empty ("value:[]", 0-dimensional: \[doc\] value 维度 "0、3、4"), keyCacheRef
//! `[num_blocks, block_size, num_head, k_head_size]` ND, slotMapping `[N]`, cacheMode null
//! or "Norm", scatterMode null or "None", no compress/seqLens inputs.
//! `keyCacheRef[slot / bs, slot % bs] = key[i]` for `slot = slotMapping[i]`. Other scenarios
//! fail with ACLNN_ERR_PARAM_INVALID ("emulator: not modelled"). Rules, each from \[doc\]:
//! - null key, keyCacheRef, slotMapping, value or valueCacheRef: ACLNN_ERR_PARAM_NULLPTR
//!   (返回值 table);
//! - dtypes: key = keyCacheRef (= value) ("数据类型必须一致"); on Atlas A2/A3 not FLOAT,
//!   UINT8, INT16, UINT16, INT32, UINT32 or the 8/4-bit floats (参数说明, A2/A3 note), so
//!   FLOAT16, BFLOAT16, INT8; slotMapping INT32 or INT64;
//! - key 3-D or 4-D, value 0/3/4-D, slotMapping 1-D; key non-contiguous allowed (√);
//!   empty tensors refused ("不支持空Tensor");
//! - slotMapping values in [0, num_blocks * block_size - 1] ("slotMapping的取值范围") and
//!   distinct ("保证不重复，重复时不保证正确性"): CANN does not check either; the emulator
//!   fails at run time (ACLNN_ERR_RUNTIME_ERROR) on an out-of-range or repeated slot
//!   instead of writing out of bounds or picking a winner, so a caller that passes -1
//!   ("skip", a vLLM convention CANN does not document) or relies on an order is caught.
//!
//! aclnnIndexSelect (CANN aolapi
//! <https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnIndexSelect.md>):
//! `aclnnIndexSelectGetWorkspaceSize(const aclTensor *self, int64_t dim, const aclTensor
//! *index, aclTensor *out, ...)`: `out[.., i, ..] = self[.., index[i], ..]` along `dim`;
//! self non-contiguous allowed, at most 8 dims; index 1-D INT32/INT64; out has self's
//! shape with `dims[dim] = len(index)` and self's dtype. An index outside
//! `[0, self.dims[dim])` is not checked by CANN; the emulator fails at run time
//! (ACLNN_ERR_RUNTIME_ERROR).

use super::{aclnn_launch, expect_dims, expect_dtype};
use crate::executor::prepare;
use crate::handles::{opt_int_array, opt_tensor, tensor, AclIntArray, AclTensor};
use crate::status::{EmuResult, Fail, ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_RUNTIME_ERROR};
use crate::tensor::{TensorDesc, DT_BF16, DT_F16, DT_F32, DT_I32, DT_I64, DT_I8, DT_U8};
use std::ffi::{c_char, c_void, CStr};

/// Reads an optional C string argument.
///
/// # Safety
/// `p` must be null or a NUL-terminated string.
unsafe fn opt_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: forwarded caller guarantee.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// The checked scene-6 call.
struct Scatter {
    key: TensorDesc,
    cache: TensorDesc,
    slots: TensorDesc,
}

impl Scatter {
    fn run(&self) -> EmuResult<()> {
        let (n, row) = (self.key.dims[0], self.key.dims[1] * self.key.dims[2]);
        let capacity = self.cache.dims[0] * self.cache.dims[1];
        let slots = self.slots.load()?;
        let mut seen = vec![false; capacity];
        for (i, &s) in slots.iter().enumerate() {
            if !(0.0..capacity as f64).contains(&s) {
                return Err(Fail::new(
                    ACLNN_ERR_RUNTIME_ERROR,
                    format!(
                        "slotMapping[{i}] = {s} is outside [0, {capacity}) (CANN does not \
                         check; the emulator refuses instead of writing out of bounds)"
                    ),
                ));
            }
            let s = s as usize;
            if std::mem::replace(&mut seen[s], true) {
                return Err(Fail::new(
                    ACLNN_ERR_RUNTIME_ERROR,
                    format!(
                        "slotMapping[{i}] = {s} repeats an earlier slot (CANN: \
                         \"重复时不保证正确性\", no defined winner)"
                    ),
                ));
            }
        }
        let key = self.key.load()?;
        // The cache as [capacity, row]: one contiguous row per slot (checked in `check`).
        for (i, &s) in slots.iter().enumerate() {
            let mut dst = self.cache.clone();
            dst.dims = vec![row];
            dst.strides = vec![1];
            dst.offset = self.cache.offset + s as usize * row;
            dst.store(&key[i * row..(i + 1) * row])?;
        }
        debug_assert_eq!(key.len(), n * row);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    key: TensorDesc,
    cache: TensorDesc,
    slots: TensorDesc,
    value: TensorDesc,
    value_cache: TensorDesc,
    others: [bool; 3],
    cache_mode: Option<String>,
    scatter_mode: Option<String>,
) -> EmuResult<Scatter> {
    // A2/A3: FLOAT16, BFLOAT16, INT8 (module doc).
    expect_dtype(&key, &[DT_F16, DT_BF16, DT_I8], "key")?;
    expect_dtype(&cache, &[key.dtype], "keyCacheRef (the dtype of key)")?;
    expect_dtype(&slots, &[DT_I32, DT_I64], "slotMapping")?;
    if !value.dims.is_empty() || !value_cache.dims.is_empty() || others.iter().any(|&o| o) {
        return Err(Fail::invalid(
            "emulator: only scene 6 is modelled (value and valueCacheRef 0-dimensional, no \
             compressLens / compressSeqOffset / seqLens)",
        ));
    }
    if !matches!(cache_mode.as_deref(), None | Some("Norm"))
        || !matches!(scatter_mode.as_deref(), None | Some("None"))
    {
        return Err(Fail::invalid(format!(
            "emulator: cacheMode \"Norm\" and scatterMode \"None\" only, got {cache_mode:?} / \
             {scatter_mode:?}"
        )));
    }
    if key.dims.len() != 3 {
        return Err(Fail::invalid(format!(
            "key must be 3-D [N, num_head, k_head_size] in scene 6, got {:?}",
            key.dims
        )));
    }
    if cache.dims.len() != 4 || cache.dims[2..] != key.dims[1..] {
        return Err(Fail::invalid(format!(
            "keyCacheRef must be [num_blocks, block_size, {}, {}], got {:?}",
            key.dims[1], key.dims[2], cache.dims
        )));
    }
    expect_dims(&slots, &key.dims[..1], "slotMapping")?;
    if key.numel() == 0 || cache.numel() == 0 {
        return Err(Fail::invalid("empty tensors are not supported"));
    }
    if !cache.is_contiguous() {
        return Err(Fail::invalid(
            "emulator: keyCacheRef must be a contiguous ND cache",
        ));
    }
    Ok(Scatter { key, cache, slots })
}

/// First phase of aclnnScatterPaKvCache.
///
/// # Safety
/// Pointers are checked against the emulator's records; the two strings must be null or
/// NUL-terminated; out-pointers must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnScatterPaKvCacheGetWorkspaceSize(
    key: *const AclTensor,
    key_cache_ref: *const AclTensor,
    slot_mapping: *const AclTensor,
    value: *const AclTensor,
    value_cache_ref: *const AclTensor,
    compress_lens: *const AclTensor,
    compress_seq_offset: *const AclTensor,
    seq_lens: *const AclTensor,
    cache_mode: *const c_char,
    scatter_mode: *const c_char,
    strides: *const AclIntArray,
    offsets: *const AclIntArray,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        let cache_mode = opt_str(cache_mode);
        let scatter_mode = opt_str(scatter_mode);
        prepare("aclnnScatterPaKvCache", workspace_size, executor, || {
            if [key, key_cache_ref, slot_mapping, value, value_cache_ref]
                .iter()
                .any(|p| p.is_null())
            {
                return Err(Fail::new(
                    ACLNN_ERR_PARAM_NULLPTR,
                    "key, keyCacheRef, slotMapping, value and valueCacheRef must not be null",
                ));
            }
            let k = tensor(key, "key")?;
            let kc = tensor(key_cache_ref, "keyCacheRef")?;
            let sm = tensor(slot_mapping, "slotMapping")?;
            let v = tensor(value, "value")?;
            let vc = tensor(value_cache_ref, "valueCacheRef")?;
            let others = [
                opt_tensor(compress_lens, "compressLensOptional")?.is_some(),
                opt_tensor(compress_seq_offset, "compressSeqOffsetOptional")?.is_some(),
                opt_tensor(seq_lens, "seqLensOptional")?.is_some(),
            ];
            // strides/offsets only act with scatterMode "Nct" ([doc]); read to validate.
            opt_int_array(strides, "stridesOptional")?;
            opt_int_array(offsets, "offsetsOptional")?;
            let call = check(k, kc, sm, v, vc, others, cache_mode, scatter_mode)?;
            Ok(Box::new(move || call.run()))
        })
    }
}
aclnn_launch!(aclnnScatterPaKvCache);

/// First phase of aclnnIndexSelect.
///
/// # Safety
/// Pointers are checked against the emulator's records; out-pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn aclnnIndexSelectGetWorkspaceSize(
    self_: *const AclTensor,
    dim: i64,
    index: *const AclTensor,
    out: *const AclTensor,
    workspace_size: *mut u64,
    executor: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe {
        prepare("aclnnIndexSelect", workspace_size, executor, || {
            let x = tensor(self_, "self")?;
            let idx = tensor(index, "index")?;
            let y = tensor(out, "out")?;
            let data = [DT_F32, DT_F16, DT_BF16, DT_I32, DT_I64, DT_I8, DT_U8];
            expect_dtype(&x, &data, "self")?;
            expect_dtype(&y, &[x.dtype], "out (the dtype of self)")?;
            expect_dtype(&idx, &[DT_I32, DT_I64], "index")?;
            let rank = x.dims.len() as i64;
            if rank == 0 || rank > 8 || !(-rank..rank).contains(&dim) || idx.dims.len() != 1 {
                return Err(Fail::invalid(format!(
                    "self must have 1..=8 dims and dim lie in [-rank, rank), index be 1-D; got \
                     self {:?}, dim {dim}, index {:?}",
                    x.dims, idx.dims
                )));
            }
            let d = dim.rem_euclid(rank) as usize;
            let mut want = x.dims.clone();
            want[d] = idx.dims[0];
            expect_dims(&y, &want, "out")?;
            Ok(Box::new(move || {
                let (src, ids) = (x.load()?, idx.load()?);
                let outer: usize = x.dims[..d].iter().product();
                let inner: usize = x.dims[d + 1..].iter().product();
                let len = x.dims[d];
                let mut v = Vec::with_capacity(y.numel());
                for o in 0..outer {
                    for (i, &e) in ids.iter().enumerate() {
                        if !(0.0..len as f64).contains(&e) {
                            return Err(Fail::new(
                                ACLNN_ERR_RUNTIME_ERROR,
                                format!("index[{i}] = {e} is outside [0, {len})"),
                            ));
                        }
                        let base = (o * len + e as usize) * inner;
                        v.extend_from_slice(&src[base..base + inner]);
                    }
                }
                y.store(&v)
            }))
        })
    }
}
aclnn_launch!(aclnnIndexSelect);
