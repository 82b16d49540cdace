//! OpenCL statuses and their conversion to [`moemla_core::Error`].

use crate::NAME;
use opencl3::error_codes::{
    ClError, CL_INVALID_BUFFER_SIZE, CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_HOST_MEMORY,
    CL_OUT_OF_RESOURCES,
};

/// A failed OpenCL call: the API function and the status it returned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call} failed: {} ({status}){}", status_name(*.status), detail_suffix(.detail))]
pub struct ClCallError {
    /// The OpenCL function (`clBuildProgram`, `clEnqueueNDRangeKernel`, ...).
    pub call: &'static str,
    /// The status code it returned.
    pub status: i32,
    /// More context (the build log for `clBuildProgram`).
    pub detail: Option<String>,
}

impl ClCallError {
    /// A failure of `call` with the status of `err`.
    pub fn new(call: &'static str, err: ClError) -> Self {
        ClCallError {
            call,
            status: err.0,
            detail: None,
        }
    }
}

/// The OpenCL name of a status code (`CL_OUT_OF_RESOURCES`).
pub fn status_name(status: i32) -> &'static str {
    cl3::error_codes::error_text(status)
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl From<ClCallError> for moemla_core::Error {
    fn from(e: ClCallError) -> Self {
        moemla_core::Error::Device {
            backend: NAME.to_string(),
            call: e.call.to_string(),
            message: format!(
                "{} ({}){}",
                status_name(e.status),
                e.status,
                detail_suffix(&e.detail)
            ),
        }
    }
}

/// Maps an OpenCL status of `call` to the core error, for `map_err`.
pub fn cl(call: &'static str) -> impl FnOnce(ClError) -> moemla_core::Error {
    move |e| ClCallError::new(call, e).into()
}

/// Maps a status of `call`, which allocates device memory for `what` (`bytes` bytes), to the
/// core error: a refused allocation is [`moemla_core::Error::OutOfMemory`], anything else
/// the call's device error.
pub fn cl_alloc<'a>(
    call: &'static str,
    what: &'a str,
    bytes: usize,
) -> impl FnOnce(ClError) -> moemla_core::Error + 'a {
    move |e| match e.0 {
        CL_MEM_OBJECT_ALLOCATION_FAILURE
        | CL_OUT_OF_RESOURCES
        | CL_OUT_OF_HOST_MEMORY
        | CL_INVALID_BUFFER_SIZE => moemla_core::Error::OutOfMemory {
            what: format!("{NAME} {what} ({call}: {})", status_name(e.0)),
            bytes,
        },
        _ => ClCallError::new(call, e).into(),
    }
}

/// The backend cannot run here, for `reason`.
pub fn unavailable(reason: impl Into<String>) -> moemla_core::Error {
    moemla_core::Error::Unavailable {
        backend: NAME.to_string(),
        reason: reason.into(),
    }
}
