//! The CUDA backend's own failures, converted to [`moemla_core::Error`] at the trait
//! boundary.

use cudarc::driver::DriverError;
use moemla_core::Error;

/// What can fail inside the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A driver API call failed.
    #[error("{call} failed: {name} ({code}): {message}")]
    Driver {
        /// The driver call (or cudarc step) that failed.
        call: &'static str,
        /// The `CUresult` name, e.g. `CUDA_ERROR_OUT_OF_MEMORY`.
        name: String,
        /// The numeric `CUresult`.
        code: i32,
        /// The driver's description.
        message: String,
    },
    /// An NVRTC call failed (compile errors carry the program log).
    #[error("{call} failed: {status} ({code}){log}")]
    Nvrtc {
        /// The NVRTC call.
        call: &'static str,
        /// `nvrtcGetErrorString` of the status.
        status: String,
        /// The numeric `nvrtcResult`.
        code: i32,
        /// The program log, prefixed by a newline, or empty.
        log: String,
    },
}

impl CudaError {
    /// A driver failure of `call`.
    pub fn driver(call: &'static str, err: DriverError) -> Self {
        let name = err
            .error_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "CUDA_ERROR_UNKNOWN".into());
        let message = err
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        CudaError::Driver {
            call,
            name,
            code: err.0 as i32,
            message,
        }
    }

    /// The contract's [`Error::Device`] for backend `backend`.
    pub fn into_error(self, backend: &str) -> Error {
        let call = match &self {
            CudaError::Driver { call, .. } | CudaError::Nvrtc { call, .. } => call.to_string(),
        };
        let message = match &self {
            CudaError::Driver {
                name,
                code,
                message,
                ..
            } => format!("{name} ({code}): {message}"),
            CudaError::Nvrtc {
                status, code, log, ..
            } => format!("{status} ({code}){log}"),
        };
        Error::Device {
            backend: backend.to_string(),
            call,
            message,
        }
    }
}

/// `Result` of backend internals.
pub type CudaResult<T> = Result<T, CudaError>;

/// Shorthand: maps a cudarc driver result to [`CudaError::Driver`] naming `call`.
pub(crate) trait DriverContext<T> {
    /// Names the failing call.
    fn call(self, call: &'static str) -> CudaResult<T>;
}

impl<T> DriverContext<T> for Result<T, DriverError> {
    fn call(self, call: &'static str) -> CudaResult<T> {
        self.map_err(|e| CudaError::driver(call, e))
    }
}

/// Converts backend-internal failures to the contract's error at the trait boundary.
pub(crate) trait OrCore<T> {
    /// The contract's [`Error::Device`].
    fn or_core(self) -> moemla_core::Result<T>;
}

impl<T> OrCore<T> for CudaResult<T> {
    fn or_core(self) -> moemla_core::Result<T> {
        self.map_err(|e| e.into_error(crate::NAME))
    }
}
