//! NVRTC, loaded at run time from a search list (cudarc's own NVRTC loader panics when the
//! library is missing and only looks for the soname of one CUDA major version), with the
//! shared declarative symbol table and "every path tried" report of
//! [`moemla_gpu_launch::library`].
//!
//! Search order: `$MOEMLA_NVRTC_LIB` (a file, or a directory holding `libnvrtc.so*`), then
//! the sonames `libnvrtc.so.13`, `libnvrtc.so.12`, `libnvrtc.so` through the dynamic
//! loader (`LD_LIBRARY_PATH`), then `$CUDA_PATH`, `$CUDA_HOME` and `/usr/local/cuda`
//! (`lib64/`). The NVRTC entry points used here are the same in CUDA 12 and 13.

use moemla_gpu_launch::library::{open_first, SymbolTable};
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};

/// `nvrtcProgram`.
pub type NvrtcProgram = *mut c_void;
/// `nvrtcResult` (0 = success).
pub type NvrtcResult = c_int;

/// Env var naming the NVRTC library (file or directory).
pub const NVRTC_ENV: &str = "MOEMLA_NVRTC_LIB";

const SONAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

moemla_gpu_launch::symbol_table! {
    /// The NVRTC entry points moemla uses (nvrtc.h, CUDA 12 and 13), fields keeping
    /// NVRTC's own names.
    pub struct NvrtcApi;
    required {
        fn nvrtcVersion(major: *mut c_int, minor: *mut c_int) -> NvrtcResult;
        fn nvrtcCreateProgram(
            prog: *mut NvrtcProgram, src: *const c_char, name: *const c_char, num_headers: c_int,
            headers: *const *const c_char, include_names: *const *const c_char,
        ) -> NvrtcResult;
        fn nvrtcCompileProgram(
            prog: NvrtcProgram, num_options: c_int, options: *const *const c_char,
        ) -> NvrtcResult;
        fn nvrtcDestroyProgram(prog: *mut NvrtcProgram) -> NvrtcResult;
        fn nvrtcGetProgramLogSize(prog: NvrtcProgram, size: *mut usize) -> NvrtcResult;
        fn nvrtcGetProgramLog(prog: NvrtcProgram, log: *mut c_char) -> NvrtcResult;
        fn nvrtcGetPTXSize(prog: NvrtcProgram, size: *mut usize) -> NvrtcResult;
        fn nvrtcGetPTX(prog: NvrtcProgram, ptx: *mut c_char) -> NvrtcResult;
        fn nvrtcGetCUBINSize(prog: NvrtcProgram, size: *mut usize) -> NvrtcResult;
        fn nvrtcGetCUBIN(prog: NvrtcProgram, cubin: *mut c_char) -> NvrtcResult;
    }
    optional {}
}

/// A library found on the search list: its symbol table and where it was found.
pub struct Found<T> {
    /// Where the library was found.
    pub path: String,
    /// Its entry points.
    pub api: T,
}

/// Loads the first library of [`search_paths`]`(env, sonames)` that carries every symbol
/// of `T`; on failure the reason names `what`, `env` and every path tried.
pub(crate) fn load<T: SymbolTable>(
    what: &str,
    env: &str,
    sonames: &[&str],
) -> Result<Found<T>, String> {
    match open_first::<T, _>(search_paths(env, sonames)) {
        Ok(opened) => Ok(Found {
            path: opened.candidate.display().to_string(),
            api: opened.table,
        }),
        Err(tried) => Err(format!(
            "{what} not found (set {env} to {}.*, or add its directory to LD_LIBRARY_PATH); \
             tried: {tried}",
            sonames.last().copied().unwrap_or_default()
        )),
    }
}

/// NVRTC, loaded, and where it was found.
pub type Nvrtc = Found<NvrtcApi>;

impl Found<NvrtcApi> {
    /// Loads NVRTC from the search list; on failure the reason lists every path tried.
    pub fn load() -> Result<Nvrtc, String> {
        load("NVRTC", NVRTC_ENV, &SONAMES)
    }

    /// NVRTC's (major, minor) version.
    pub fn version(&self) -> (i32, i32) {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { (self.api.nvrtcVersion)(&mut major, &mut minor) };
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
