//! cuBLAS, loaded at run time from the same kind of search list as NVRTC
//! ([`crate::loader`]). cudarc's own cuBLAS loader panics when the library is missing and
//! does not look for CUDA 13's soname, so moemla resolves the four entry points it uses
//! itself; their signatures are the same in CUDA 12 and 13.
//!
//! Search order: `$MOEMLA_CUBLAS_LIB` (a file, or a directory holding `libcublas.so*`),
//! the sonames `libcublas.so.13`, `libcublas.so.12`, `libcublas.so` through the dynamic
//! loader, then `$CUDA_PATH`, `$CUDA_HOME` and `/usr/local/cuda` (`lib64/`).

use crate::loader::search_paths;
use libloading::Library;
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

/// `cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
/// beta, C, Ctype, ldc, computeType, algo)`.
pub type GemmExFn = unsafe extern "C" fn(
    CublasHandle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    *mut c_void,
    c_int,
    c_int,
    c_int,
    c_int,
) -> CublasStatus;

/// The cuBLAS entry points moemla uses, resolved from one loaded library (fields keep
/// cuBLAS's own names).
#[allow(non_snake_case)]
pub struct Cublas {
    /// Where the library was found.
    pub path: String,
    /// `cublasCreate_v2(handle*)`.
    pub cublasCreate_v2: unsafe extern "C" fn(*mut CublasHandle) -> CublasStatus,
    /// `cublasDestroy_v2(handle)`.
    pub cublasDestroy_v2: unsafe extern "C" fn(CublasHandle) -> CublasStatus,
    /// `cublasSetStream_v2(handle, stream)`.
    pub cublasSetStream_v2: unsafe extern "C" fn(CublasHandle, *mut c_void) -> CublasStatus,
    /// `cublasGemmEx`.
    pub cublasGemmEx: GemmExFn,
    _lib: Library,
}

impl Cublas {
    /// Loads cuBLAS from the search list; on failure the reason lists every path tried.
    pub fn load() -> Result<Cublas, String> {
        let mut tried = Vec::new();
        for candidate in search_paths(CUBLAS_ENV, &SONAMES) {
            // SAFETY: loading a shared library runs its initialisers; cuBLAS's are benign.
            match unsafe { Library::new(&candidate) } {
                Ok(lib) => {
                    let path = candidate.display().to_string();
                    // SAFETY: a library answering to a cuBLAS name is cuBLAS.
                    match unsafe { Cublas::resolve(lib, path) } {
                        Ok(api) => return Ok(api),
                        Err(why) => tried.push(format!("{}: {why}", candidate.display())),
                    }
                }
                Err(e) => tried.push(format!("{}: {e}", candidate.display())),
            }
        }
        Err(format!(
            "cuBLAS not found (set {CUBLAS_ENV} to libcublas.so.*, or add its directory to \
             LD_LIBRARY_PATH); tried: {}",
            tried.join("; ")
        ))
    }

    /// Resolves every symbol of `lib`.
    ///
    /// # Safety
    /// `lib` must be a cuBLAS library: the symbols are used with cuBLAS's signatures.
    #[allow(non_snake_case)]
    unsafe fn resolve(lib: Library, path: String) -> Result<Self, String> {
        /// The symbol `name` as a `T`.
        ///
        /// # Safety
        /// `T` must be the symbol's true function-pointer type.
        unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
            // SAFETY: the caller names the symbol's own signature (cublas_api.h).
            unsafe { lib.get::<T>(format!("{name}\0").as_bytes()) }
                .map(|s| *s)
                .map_err(|e| format!("missing symbol {name}: {e}"))
        }
        // SAFETY: each type below is cublas_api.h's signature for that symbol.
        unsafe {
            Ok(Cublas {
                cublasCreate_v2: sym(&lib, "cublasCreate_v2")?,
                cublasDestroy_v2: sym(&lib, "cublasDestroy_v2")?,
                cublasSetStream_v2: sym(&lib, "cublasSetStream_v2")?,
                cublasGemmEx: sym(&lib, "cublasGemmEx")?,
                path,
                _lib: lib,
            })
        }
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
