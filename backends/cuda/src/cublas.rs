//! cuBLAS, loaded at run time from the same kind of search list as NVRTC
//! ([`crate::loader`]), with the shared symbol table of [`moemla_gpu_launch::library`].
//! cudarc's own cuBLAS loader panics when the library is missing and does not look for
//! CUDA 13's soname, so moemla resolves the four entry points it uses itself; their
//! signatures are the same in CUDA 12 and 13.
//!
//! Search order: `$MOEMLA_CUBLAS_LIB` (a file, or a directory holding `libcublas.so*`),
//! the sonames `libcublas.so.13`, `libcublas.so.12`, `libcublas.so` through the dynamic
//! loader, then `$CUDA_PATH`, `$CUDA_HOME` and `/usr/local/cuda` (`lib64/`).

use crate::loader::{self, Found};
use std::ffi::{c_int, c_void};

/// `cublasHandle_t`.
pub type CublasHandle = *mut c_void;
/// `cublasStatus_t` (0 = success).
pub type CublasStatus = c_int;

/// Env var naming the cuBLAS library (file or directory).
pub const CUBLAS_ENV: &str = "MOEMLA_CUBLAS_LIB";

const SONAMES: [&str; 3] = ["libcublas.so.13", "libcublas.so.12", "libcublas.so"];

// Enum values from cublas_api.h / library_types.h (the same in CUDA 12 and 13).
/// `CUBLAS_OP_N`.
pub const OP_N: c_int = 0;
/// `CUBLAS_OP_T`.
pub const OP_T: c_int = 1;
/// `CUDA_R_32F`.
pub const R_32F: c_int = 0;
/// `CUDA_R_16F`.
pub const R_16F: c_int = 2;
/// `CUDA_R_16BF`.
pub const R_16BF: c_int = 14;
/// `CUBLAS_COMPUTE_32F`: f32 accumulation; no TF32 unless the math mode asks for it
/// (moemla never sets one, and `NVIDIA_TF32_OVERRIDE` is left to the user).
pub const COMPUTE_32F: c_int = 68;
/// `CUBLAS_GEMM_DEFAULT`: cuBLAS's heuristic picks the kernel.
pub const GEMM_DEFAULT: c_int = -1;

moemla_gpu_launch::symbol_table! {
    /// The cuBLAS entry points moemla uses (cublas_api.h, CUDA 12 and 13), fields keeping
    /// cuBLAS's own names.
    pub struct CublasApi;
    required {
        fn cublasCreate_v2(handle: *mut CublasHandle) -> CublasStatus;
        fn cublasDestroy_v2(handle: CublasHandle) -> CublasStatus;
        fn cublasSetStream_v2(handle: CublasHandle, stream: *mut c_void) -> CublasStatus;
        fn cublasGemmEx(
            handle: CublasHandle, transa: c_int, transb: c_int, m: c_int, n: c_int, k: c_int,
            alpha: *const c_void, a: *const c_void, a_type: c_int, lda: c_int,
            b: *const c_void, b_type: c_int, ldb: c_int, beta: *const c_void,
            c: *mut c_void, c_type: c_int, ldc: c_int, compute_type: c_int, algo: c_int,
        ) -> CublasStatus;
    }
    optional {}
}

/// cuBLAS, loaded, and where it was found.
pub type Cublas = Found<CublasApi>;

impl Found<CublasApi> {
    /// Loads cuBLAS from the search list; on failure the reason lists every path tried.
    pub fn load() -> Result<Cublas, String> {
        loader::load("cuBLAS", CUBLAS_ENV, &SONAMES)
    }
}

/// The `cublasStatus_t` name of `status` (cublas_api.h), for error messages.
pub fn status_name(status: CublasStatus) -> &'static str {
    match status {
        0 => "CUBLAS_STATUS_SUCCESS",
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => "CUBLAS_STATUS_UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where no cuBLAS is installed (this CI machine), loading is an error naming the env
    /// var and every path tried, CUDA 13's soname included, never a panic.
    #[test]
    fn missing_cublas_is_an_error_listing_every_path() {
        let Err(err) = Cublas::load() else {
            return; // a machine with cuBLAS installed: nothing to check here
        };
        assert!(err.contains(CUBLAS_ENV), "{err}");
        for soname in SONAMES {
            assert!(err.contains(soname), "{soname} not in: {err}");
        }
        assert!(
            err.contains("/usr/local/cuda/lib64/libcublas.so.13"),
            "{err}"
        );
    }

    #[test]
    fn status_names_follow_the_header() {
        assert_eq!(status_name(0), "CUBLAS_STATUS_SUCCESS");
        assert_eq!(status_name(13), "CUBLAS_STATUS_EXECUTION_FAILED");
        assert_eq!(status_name(99), "CUBLAS_STATUS_UNKNOWN");
    }
}
