//! NVRTC, loaded at run time from a search list (cudarc's own NVRTC loader panics when the
//! library is missing and only looks for the soname of one CUDA major version).
//!
//! Search order: `$MOEMLA_NVRTC_LIB` (a file, or a directory holding `libnvrtc.so*`), then
//! the sonames `libnvrtc.so.13`, `libnvrtc.so.12`, `libnvrtc.so` through the dynamic
//! loader (`LD_LIBRARY_PATH`), then `$CUDA_PATH`, `$CUDA_HOME` and `/usr/local/cuda`
//! (`lib64/`). The NVRTC entry points used here are the same in CUDA 12 and 13.

use libloading::Library;
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};

/// `nvrtcProgram`.
pub type NvrtcProgram = *mut c_void;
/// `nvrtcResult` (0 = success).
pub type NvrtcResult = c_int;

/// Env var naming the NVRTC library (file or directory).
pub const NVRTC_ENV: &str = "MOEMLA_NVRTC_LIB";

const SONAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

macro_rules! nvrtc_table {
    ($( $(#[$doc:meta])* $name:ident : fn($($arg:ty),*); )*) => {
        /// The NVRTC entry points moemla uses, resolved from one loaded library (fields
        /// keep NVRTC's own names).
        #[allow(non_snake_case)]
        pub struct Nvrtc {
            /// Where the library was found.
            pub path: String,
            $( $(#[$doc])* pub $name: unsafe extern "C" fn($($arg),*) -> NvrtcResult, )*
            _lib: Library,
        }

        impl Nvrtc {
            /// Resolves every required symbol of `lib`.
            ///
            /// # Safety
            /// `lib` must be an NVRTC library: the symbols are used with NVRTC's signatures.
            #[allow(non_snake_case)]
            unsafe fn resolve(lib: Library, path: String) -> Result<Self, String> {
                $(
                    // SAFETY: the signature is NVRTC's own for this symbol (nvrtc.h).
                    let $name = unsafe {
                        *lib.get::<unsafe extern "C" fn($($arg),*) -> NvrtcResult>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )
                        .map_err(|e| format!("missing symbol {}: {e}", stringify!($name)))?
                    };
                )*
                Ok(Nvrtc { path, $($name,)* _lib: lib })
            }
        }
    };
}

nvrtc_table! {
    /// `nvrtcVersion(int* major, int* minor)`.
    nvrtcVersion: fn(*mut c_int, *mut c_int);
    /// `nvrtcCreateProgram(prog, src, name, numHeaders, headers, includeNames)`.
    nvrtcCreateProgram: fn(*mut NvrtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char);
    /// `nvrtcCompileProgram(prog, numOptions, options)`.
    nvrtcCompileProgram: fn(NvrtcProgram, c_int, *const *const c_char);
    /// `nvrtcDestroyProgram(prog*)`.
    nvrtcDestroyProgram: fn(*mut NvrtcProgram);
    /// `nvrtcGetProgramLogSize(prog, size*)`.
    nvrtcGetProgramLogSize: fn(NvrtcProgram, *mut usize);
    /// `nvrtcGetProgramLog(prog, log)`.
    nvrtcGetProgramLog: fn(NvrtcProgram, *mut c_char);
    /// `nvrtcGetPTXSize(prog, size*)`.
    nvrtcGetPTXSize: fn(NvrtcProgram, *mut usize);
    /// `nvrtcGetPTX(prog, ptx)`.
    nvrtcGetPTX: fn(NvrtcProgram, *mut c_char);
    /// `nvrtcGetCUBINSize(prog, size*)`.
    nvrtcGetCUBINSize: fn(NvrtcProgram, *mut usize);
    /// `nvrtcGetCUBIN(prog, cubin)`.
    nvrtcGetCUBIN: fn(NvrtcProgram, *mut c_char);
}

impl Nvrtc {
    /// Loads NVRTC from the search list; on failure the reason lists every path tried.
    pub fn load() -> Result<Nvrtc, String> {
        let mut tried = Vec::new();
        for candidate in search_paths(NVRTC_ENV, &SONAMES) {
            // SAFETY: loading a shared library runs its initialisers; NVRTC's are benign.
            match unsafe { Library::new(&candidate) } {
                Ok(lib) => {
                    let path = candidate.display().to_string();
                    // SAFETY: a library answering to an NVRTC name is NVRTC.
                    match unsafe { Nvrtc::resolve(lib, path) } {
                        Ok(api) => return Ok(api),
                        Err(why) => tried.push(format!("{}: {why}", candidate.display())),
                    }
                }
                Err(e) => tried.push(format!("{}: {e}", candidate.display())),
            }
        }
        Err(format!(
            "NVRTC not found (set {NVRTC_ENV} to libnvrtc.so.*, or add its directory to \
             LD_LIBRARY_PATH); tried: {}",
            tried.join("; ")
        ))
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { (self.nvrtcVersion)(&mut major, &mut minor) };
        (major, minor)
    }
}

/// The library paths to try, in order: `$env` (a file, or a directory holding one of
/// `sonames`), the sonames through the dynamic loader, then each CUDA root's `lib64/`.
pub(crate) fn search_paths(env: &str, sonames: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os(env) {
        let p = PathBuf::from(v);
        if p.is_dir() {
            out.extend(sonames.iter().map(|s| p.join(s)));
        } else {
            out.push(p);
        }
    }
    out.extend(sonames.iter().map(PathBuf::from));
    let roots = ["CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain(std::iter::once(PathBuf::from("/usr/local/cuda")));
    for root in roots {
        let lib = Path::new(&root).join("lib64");
        out.extend(sonames.iter().map(|s| lib.join(s)));
    }
    out
}
