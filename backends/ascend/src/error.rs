//! CANN status codes to moemla errors.
//!
//! Codes (AscendCL "Return Codes" and "aclnn返回码", cited in the emulator's `status.rs`):
//! ACL_ERROR_INVALID_PARAM 100000, ACL_ERROR_REPEAT_INITIALIZE 100002,
//! ACL_ERROR_RT_PARAM_INVALID 107000, ACL_ERROR_RT_MEMORY_ALLOCATION 207001,
//! ACLNN_ERR_PARAM_NULLPTR 161001, ACLNN_ERR_PARAM_INVALID 161002,
//! ACLNN_ERR_RUNTIME_ERROR 361001, ACLNN_ERR_INNER_TILING_ERROR 561002.

use moemla_core::Error;

/// `aclInit` was already called in this process (not an error for us).
pub const ACL_ERROR_REPEAT_INITIALIZE: i32 = 100002;

/// The symbolic name of a CANN status, where known.
pub fn status_name(code: i32) -> &'static str {
    match code {
        0 => "ACL_SUCCESS",
        100000 => "ACL_ERROR_INVALID_PARAM",
        100002 => "ACL_ERROR_REPEAT_INITIALIZE",
        107000 => "ACL_ERROR_RT_PARAM_INVALID",
        207001 => "ACL_ERROR_RT_MEMORY_ALLOCATION",
        161001 => "ACLNN_ERR_PARAM_NULLPTR",
        161002 => "ACLNN_ERR_PARAM_INVALID",
        361001 => "ACLNN_ERR_RUNTIME_ERROR",
        561002 => "ACLNN_ERR_INNER_TILING_ERROR",
        _ => "unknown status",
    }
}

/// A failed CANN call, before it becomes a [`moemla_core::Error::Device`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {name} ({code}): {message}")]
pub struct CannError {
    /// The CANN function.
    pub call: String,
    /// Its status.
    pub code: i32,
    /// The status name.
    pub name: &'static str,
    /// `aclGetRecentErrMsg()` at the time, or a note that it was empty.
    pub message: String,
}

impl CannError {
    /// Converts to the moemla error of backend `backend`.
    pub fn into_error(self, backend: &str) -> Error {
        Error::Device {
            backend: backend.to_string(),
            call: self.call,
            message: format!("{} ({}): {}", self.name, self.code, self.message),
        }
    }
}

/// Stands in for a status when an aclCreate* call returns null (CANN documents only the
/// null return; aclGetRecentErrMsg carries the reason).
pub const ACLNN_NULL_RESULT: i32 = 161002;
