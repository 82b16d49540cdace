//! The emulated aclnn ops, one file per op family. Each implements CANN's documented
//! semantics and constraints (cited in the file), not moemla's contract.
//!
//! An older, stricter CANN, for tests of a caller's fallback paths:
//! `MOEMLA_CANN_EMULATOR_CANN=2025-12` (read at each first phase by `older_cann`) makes
//! - aclnnLightningIndexer check what its Dec 2025 tiling checked (hicann/ops-transformer
//!   `attention/lightning_indexer/op_host/lightning_indexer_tiling.cpp` of that month):
//!   weights in the query's dtype (no FLOAT) and sparseCount <= 2048; the current
//!   `docs/aclnnLightningIndexer.md` allows FLOAT weights on Atlas A2/A3 and 3072, 4096,
//!   ..., 8192;
//! - aclnnSparseFlashAttention refuse returnSoftmaxLse outright, as its page words it
//!   (`attention/sparse_flash_attention/docs/aclnnSparseFlashAttention.md`: "该参数仅在训练且
//!   layout_kv不为PA_BSND场景支持", only in training with a key other than PA_BSND; an aclnn
//!   forward call is not training). The current kernel writes softmaxMax/Sum whenever asked
//!   for a non-paged key, which is what the emulator does by default.
//!
//! Both are tiling failures (ACLNN_ERR_INNER_TILING_ERROR) from the first phase.

pub mod elementwise;
pub mod fused_infer_attention_score;
pub mod grouped_matmul;
pub mod lightning_indexer;
pub mod matmul;
pub mod moe_gating_top_k;
pub mod moe_routing;
pub mod reduce;
pub mod scatter_pa_kv_cache;
pub mod sparse_flash_attention;
pub mod topk;

/// Defines the second-phase entry point `aclnnXxx(workspace, workspaceSize, executor,
/// stream)` of an op.
macro_rules! aclnn_launch {
    ($name:ident) => {
        /// Second phase: runs the executor from the matching `GetWorkspaceSize` on `stream`.
        ///
        /// # Safety
        /// Any pointer values are accepted; they are checked against the emulator's records.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            workspace: *mut std::ffi::c_void,
            workspace_size: u64,
            executor: *mut std::ffi::c_void,
            stream: *mut std::ffi::c_void,
        ) -> i32 {
            $crate::executor::launch(
                stringify!($name),
                workspace,
                workspace_size,
                executor,
                stream,
            )
        }
    };
}
pub(crate) use aclnn_launch;

use crate::status::{EmuResult, Fail};
use crate::tensor::{TensorDesc, DT_BF16, DT_F16, DT_F32};
use std::ffi::{c_char, CStr};

/// Whether `MOEMLA_CANN_EMULATOR_CANN=2025-12` asks for the older, stricter CANN (module
/// doc).
pub(crate) fn older_cann() -> bool {
    std::env::var("MOEMLA_CANN_EMULATOR_CANN").is_ok_and(|v| v.trim() == "2025-12")
}

/// A C-string layout attribute of aclnnLightningIndexer or aclnnSparseFlashAttention (null:
/// "BSND", the default their pages and op definitions give).
///
/// # Safety
/// `p` must be null or a C string.
pub(crate) unsafe fn layout(p: *const c_char) -> String {
    if p.is_null() {
        "BSND".to_string()
    } else {
        // SAFETY: non-null C string per the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Fails unless `t` has shape `dims`.
pub(crate) fn expect_dims(t: &TensorDesc, dims: &[usize], arg: &str) -> EmuResult<()> {
    if t.dims != dims {
        return Err(Fail::invalid(format!(
            "`{arg}` must have shape {dims:?}, got {:?}",
            t.dims
        )));
    }
    Ok(())
}

/// Fails unless `t`'s dtype is one of `allowed`.
pub(crate) fn expect_dtype(t: &TensorDesc, allowed: &[i32], arg: &str) -> EmuResult<()> {
    if !allowed.contains(&t.dtype) {
        return Err(Fail::invalid(format!(
            "`{arg}` has aclDataType {}, supported: {allowed:?}",
            t.dtype
        )));
    }
    Ok(())
}

/// The checks of a float op from `self` to an `out` of the same shape: both F32, F16 or
/// BF16 (not necessarily the same), `out` with `self`'s dims.
pub(crate) fn expect_float_unary(x: &TensorDesc, y: &TensorDesc) -> EmuResult<()> {
    let floats = [DT_F32, DT_F16, DT_BF16];
    expect_dtype(x, &floats, "self")?;
    expect_dtype(y, &floats, "out")?;
    expect_dims(y, &x.dims, "out")
}
