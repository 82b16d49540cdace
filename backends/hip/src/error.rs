//! HIP and hipRTC status codes, and their conversion to [`moemla_core::Error`].

use crate::NAME;
use std::fmt;

/// A HIP runtime status (`hipError_t`, a C enum: 32-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct HipStatus(pub i32);

/// A hipRTC status (`hiprtcResult`, a C enum: 32-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct RtcStatus(pub i32);

// Values from AMD's hip_runtime_api.h (identical in ROCm 5.2 and 6.x) and hiprtc.h.
impl HipStatus {
    /// `hipSuccess`.
    pub const SUCCESS: HipStatus = HipStatus(0);
    /// `hipErrorInvalidValue`.
    pub const INVALID_VALUE: HipStatus = HipStatus(1);
    /// `hipErrorOutOfMemory`.
    pub const OUT_OF_MEMORY: HipStatus = HipStatus(2);
    /// `hipErrorNotInitialized`.
    pub const NOT_INITIALIZED: HipStatus = HipStatus(3);
    /// `hipErrorNoDevice`: no HIP device is visible.
    pub const NO_DEVICE: HipStatus = HipStatus(100);
    /// `hipErrorInvalidDevice`: what `hipInit` returns on a machine without a GPU (ROCm 5.2).
    pub const INVALID_DEVICE: HipStatus = HipStatus(101);
    /// `hipErrorInvalidImage`.
    pub const INVALID_IMAGE: HipStatus = HipStatus(200);
    /// `hipErrorNoBinaryForGpu`: the code object was built for another arch.
    pub const NO_BINARY_FOR_GPU: HipStatus = HipStatus(209);
    /// `hipErrorNotFound` (e.g. a kernel name missing from a module).
    pub const NOT_FOUND: HipStatus = HipStatus(500);
    /// `hipErrorLaunchFailure`.
    pub const LAUNCH_FAILURE: HipStatus = HipStatus(719);

    /// The constant's name where this crate knows it.
    pub fn known_name(self) -> Option<&'static str> {
        Some(match self {
            HipStatus::SUCCESS => "hipSuccess",
            HipStatus::INVALID_VALUE => "hipErrorInvalidValue",
            HipStatus::OUT_OF_MEMORY => "hipErrorOutOfMemory",
            HipStatus::NOT_INITIALIZED => "hipErrorNotInitialized",
            HipStatus::NO_DEVICE => "hipErrorNoDevice",
            HipStatus::INVALID_DEVICE => "hipErrorInvalidDevice",
            HipStatus::INVALID_IMAGE => "hipErrorInvalidImage",
            HipStatus::NO_BINARY_FOR_GPU => "hipErrorNoBinaryForGpu",
            HipStatus::NOT_FOUND => "hipErrorNotFound",
            HipStatus::LAUNCH_FAILURE => "hipErrorLaunchFailure",
            _ => return None,
        })
    }
}

impl RtcStatus {
    /// `HIPRTC_SUCCESS`.
    pub const SUCCESS: RtcStatus = RtcStatus(0);
    /// `HIPRTC_ERROR_INVALID_INPUT`.
    pub const INVALID_INPUT: RtcStatus = RtcStatus(3);
}

/// A failed HIP or hipRTC call, with the call's name and the runtime's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HipError {
    /// A HIP runtime call returned a status other than `hipSuccess`.
    #[error("{call} failed: {message} ({code})", code = .status.0)]
    Hip {
        /// The C function.
        call: &'static str,
        /// Its status.
        status: HipStatus,
        /// `hipGetErrorString` of the status, or the constant's name.
        message: String,
    },
    /// A hipRTC call returned a status other than `HIPRTC_SUCCESS`.
    #[error("{call} failed: {message} ({code}){log}", code = .status.0,
        log = if .log.is_empty() { String::new() } else { format!(":\n{}", .log) })]
    Rtc {
        /// The C function.
        call: &'static str,
        /// Its status.
        status: RtcStatus,
        /// `hiprtcGetErrorString` of the status.
        message: String,
        /// The compile log (for `hiprtcCompileProgram`), else empty.
        log: String,
    },
}

impl HipError {
    /// The C call that failed.
    pub fn call(&self) -> &'static str {
        match self {
            HipError::Hip { call, .. } | HipError::Rtc { call, .. } => call,
        }
    }
}

impl From<HipError> for moemla_core::Error {
    fn from(e: HipError) -> Self {
        let call = e.call().to_string();
        let message = match &e {
            HipError::Hip {
                status, message, ..
            } => format!("{message} ({})", status.0),
            HipError::Rtc {
                status,
                message,
                log,
                ..
            } if log.is_empty() => format!("{message} ({})", status.0),
            HipError::Rtc {
                status,
                message,
                log,
                ..
            } => format!("{message} ({}): {log}", status.0),
        };
        moemla_core::Error::Device {
            backend: NAME.to_string(),
            call,
            message,
        }
    }
}

impl fmt::Display for HipStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.known_name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "hipError_t {}", self.0),
        }
    }
}

/// `moemla_core::Error::Unavailable` for this backend.
pub(crate) fn unavailable(reason: impl Into<String>) -> moemla_core::Error {
    moemla_core::Error::Unavailable {
        backend: NAME.to_string(),
        reason: reason.into(),
    }
}
