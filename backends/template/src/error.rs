//! The backend's errors, as `moemla_core::Error`. A real backend turns its SDK's status
//! codes into [`device`] errors naming the call and the status, a refused allocation into
//! `Error::OutOfMemory`, and a missing library into `Error::Unavailable` listing every
//! path it tried.

use crate::NAME;
use moemla_core::{DType, Error, Op};

/// A failure of `call` on argument `arg`.
pub fn device(call: &str, arg: &str, message: String) -> Error {
    Error::Device {
        backend: NAME.to_string(),
        call: format!("{call}: `{arg}`"),
        message,
    }
}

/// `op` in `dtype` is not implemented, because of `reason`.
pub fn unsupported(op: Op, dtype: DType, reason: &str) -> Error {
    Error::Unsupported {
        backend: NAME.to_string(),
        op,
        what: dtype.name().to_string(),
        reason: reason.to_string(),
    }
}
