//! Status codes (values as CANN documents them) and the recent-error message.
//!
//! - ACL runtime codes: "aclError" / "rt_error_codes.h" in the AscendCL API reference
//!   (<https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/>,
//!   "Return Codes"): ACL_SUCCESS 0, ACL_ERROR_INVALID_PARAM 100000,
//!   ACL_ERROR_REPEAT_INITIALIZE 100002, ACL_ERROR_RT_PARAM_INVALID 107000,
//!   ACL_ERROR_RT_MEMORY_ALLOCATION 207001.
//! - aclnn codes: "aclnn返回码" (e.g. the return-value tables of
//!   <https://www.hiascend.com/document/detail/zh/CANNCommunityEdition/83RC1/API/aolapi/context/aclnnMoeGatingTopK.md>):
//!   ACLNN_ERR_PARAM_NULLPTR 161001, ACLNN_ERR_PARAM_INVALID 161002,
//!   ACLNN_ERR_RUNTIME_ERROR 361001, ACLNN_ERR_INNER_TILING_ERROR 561002.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// Success.
pub const ACL_SUCCESS: i32 = 0;
/// A parameter is invalid (ACL API level).
pub const ACL_ERROR_INVALID_PARAM: i32 = 100000;
/// `aclInit` called twice.
pub const ACL_ERROR_REPEAT_INITIALIZE: i32 = 100002;
/// A runtime parameter is invalid (unknown pointer, stream, memcpy kind, size).
pub const ACL_ERROR_RT_PARAM_INVALID: i32 = 107000;
/// Device memory allocation failed.
pub const ACL_ERROR_RT_MEMORY_ALLOCATION: i32 = 207001;
/// A required aclnn argument is a null pointer.
pub const ACLNN_ERR_PARAM_NULLPTR: i32 = 161001;
/// An aclnn argument is invalid (dtype, shape, value, wrong executor, short workspace).
pub const ACLNN_ERR_PARAM_INVALID: i32 = 161002;
/// An aclnn op failed while running (the emulator also uses it for out-of-range reads).
pub const ACLNN_ERR_RUNTIME_ERROR: i32 = 361001;
/// An aclnn op's tiling rejected the shapes or attribute values.
pub const ACLNN_ERR_INNER_TILING_ERROR: i32 = 561002;

/// A failed call: its status code and the message `aclGetRecentErrMsg` will return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    /// The status code.
    pub code: i32,
    /// Human-readable reason.
    pub message: String,
}

impl Fail {
    /// A failure with `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }

    /// ACLNN_ERR_PARAM_INVALID with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Fail::new(ACLNN_ERR_PARAM_INVALID, message)
    }
}

/// Result alias inside the emulator.
pub type EmuResult<T> = Result<T, Fail>;

thread_local! {
    static RECENT: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records the message of a failure and returns its code.
pub fn report(fail: Fail) -> i32 {
    let text = CString::new(fail.message.replace('\0', " ")).unwrap_or_default();
    RECENT.with(|r| *r.borrow_mut() = Some(text));
    fail.code
}

/// Converts a result to a status code, recording the message of a failure.
pub fn status(result: EmuResult<()>) -> i32 {
    match result {
        Ok(()) => ACL_SUCCESS,
        Err(fail) => report(fail),
    }
}

/// `const char *aclGetRecentErrMsg()`: the latest error message of this thread, or null.
/// The string stays valid until the next failure on this thread.
///
/// # Safety
/// Always safe to call; the returned pointer must not be freed.
#[no_mangle]
pub unsafe extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    RECENT.with(|r| match &*r.borrow() {
        Some(s) => s.as_ptr(),
        None => std::ptr::null(),
    })
}
