//! The HIP runtime and hipRTC, loaded at run time: one symbol table per library.
//!
//! Each table lists its required and optional C functions once; the macro expands it to a
//! struct of function pointers (which owns the library handle) and its resolver. A library
//! missing a required symbol is rejected with the names of all missing ones. The model is
//! IREE's HIP driver (`REQUIRED_PFN_DECL` / `OPTIONAL_PFN_DECL` tables); the signatures are
//! those of AMD's `hip_runtime_api.h` and `hiprtc.h` (ROCm 5.2 and 6.x agree on all of
//! them), declared here so that building needs no ROCm headers.

use crate::error::{HipStatus, RtcStatus};
use crate::flavour::{Candidate, Flavour, SearchList};
use libloading::Library;
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};

/// `hipDevice_t`.
pub type HipDevice = i32;
/// `hipStream_t` (opaque handle).
pub type HipStream = *mut c_void;
/// `hipEvent_t` (opaque handle).
pub type HipEvent = *mut c_void;
/// `hipModule_t` (opaque handle).
pub type HipModule = *mut c_void;
/// `hipFunction_t` (opaque handle).
pub type HipFunction = *mut c_void;
/// `hiprtcProgram` (opaque handle).
pub type HiprtcProgram = *mut c_void;

/// `hipDeviceAttribute_t` values used here. Same numbers in ROCm 5.2 and 6.x (6.x renamed
/// some neighbours to `Unused*` but kept every position).
pub mod attr {
    /// `hipDeviceAttributeMaxThreadsPerBlock`.
    pub const MAX_THREADS_PER_BLOCK: i32 = 56;
    /// `hipDeviceAttributeMultiprocessorCount` (compute units).
    pub const MULTIPROCESSOR_COUNT: i32 = 63;
    /// `hipDeviceAttributeMaxSharedMemoryPerBlock` (bytes of LDS per block).
    pub const MAX_SHARED_MEMORY_PER_BLOCK: i32 = 74;
    /// `hipDeviceAttributeWarpSize` (64 on gfx9 / CDNA and Hygon DCUs).
    pub const WARP_SIZE: i32 = 87;
}

/// `hipMemcpyKind::hipMemcpyHostToDevice`.
pub const MEMCPY_HOST_TO_DEVICE: i32 = 1;
/// `hipMemcpyKind::hipMemcpyDeviceToHost`.
pub const MEMCPY_DEVICE_TO_HOST: i32 = 2;

/// Declares a library's symbol table: a struct with one field per C function
/// (`Option` for optional ones) holding the library open, and `resolve`, which looks every
/// symbol up and fails with the list of missing required names.
macro_rules! symbol_table {
    (
        $(#[$meta:meta])*
        pub struct $table:ident;
        required {
            $( fn $req:ident ( $($ra:ident : $rt:ty),* $(,)? ) -> $rret:ty; )*
        }
        optional {
            $( fn $opt:ident ( $($oa:ident : $ot:ty),* $(,)? ) -> $oret:ty; )*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub struct $table {
            $(
                #[doc = concat!("`", stringify!($req), "` (required).")]
                pub $req: unsafe extern "C" fn($($rt),*) -> $rret,
            )*
            $(
                #[doc = concat!("`", stringify!($opt), "` (optional: absent in some versions).")]
                pub $opt: Option<unsafe extern "C" fn($($ot),*) -> $oret>,
            )*
            _library: Library,
        }

        impl $table {
            /// The required symbols, in table order.
            pub const REQUIRED: &'static [&'static str] = &[$(stringify!($req)),*];
            /// The optional symbols, in table order.
            pub const OPTIONAL: &'static [&'static str] = &[$(stringify!($opt)),*];

            /// Looks up every symbol of the table in `library`.
            ///
            /// # Safety
            /// Each symbol the library exports under a listed name must have the listed C
            /// signature (true of every HIP runtime / hipRTC since ROCm 5.0 and of DTK's).
            #[allow(non_snake_case)]
            unsafe fn resolve(library: Library) -> Result<Self, Vec<&'static str>> {
                let mut missing: Vec<&'static str> = Vec::new();
                $(
                    // SAFETY: the caller vouches for the signature; the pointer is copied
                    // out and stays valid because the struct keeps `library` open.
                    let $req = unsafe {
                        library.get::<unsafe extern "C" fn($($rt),*) -> $rret>(stringify!($req))
                    }
                    .ok()
                    .map(|symbol| *symbol);
                    if $req.is_none() {
                        missing.push(stringify!($req));
                    }
                )*
                $(
                    // SAFETY: as above.
                    let $opt = unsafe {
                        library.get::<unsafe extern "C" fn($($ot),*) -> $oret>(stringify!($opt))
                    }
                    .ok()
                    .map(|symbol| *symbol);
                )*
                match ($($req,)*) {
                    ($(Some($req),)*) => Ok($table { $($req,)* $($opt,)* _library: library }),
                    _ => Err(missing),
                }
            }
        }
    };
}

symbol_table! {
    /// The HIP runtime (`libamdhip64.so` on ROCm, `libgalaxyhip.so` on DTK).
    pub struct HipRuntime;
    required {
        fn hipInit(flags: u32) -> HipStatus;
        fn hipGetDeviceCount(count: *mut i32) -> HipStatus;
        fn hipDeviceGet(device: *mut HipDevice, ordinal: i32) -> HipStatus;
        fn hipSetDevice(device: HipDevice) -> HipStatus;
        fn hipDeviceGetName(name: *mut c_char, len: i32, device: HipDevice) -> HipStatus;
        fn hipDeviceGetAttribute(value: *mut i32, attribute: i32, device: HipDevice) -> HipStatus;
        fn hipDeviceTotalMem(bytes: *mut usize, device: HipDevice) -> HipStatus;
        fn hipGetErrorString(status: HipStatus) -> *const c_char;
        fn hipMalloc(ptr: *mut *mut c_void, bytes: usize) -> HipStatus;
        fn hipFree(ptr: *mut c_void) -> HipStatus;
        fn hipMemcpy(dst: *mut c_void, src: *const c_void, bytes: usize, kind: i32) -> HipStatus;
        fn hipMemcpyAsync(
            dst: *mut c_void, src: *const c_void, bytes: usize, kind: i32, stream: HipStream,
        ) -> HipStatus;
        fn hipMemsetAsync(dst: *mut c_void, value: i32, bytes: usize, stream: HipStream)
            -> HipStatus;
        fn hipStreamCreate(stream: *mut HipStream) -> HipStatus;
        fn hipStreamDestroy(stream: HipStream) -> HipStatus;
        fn hipStreamSynchronize(stream: HipStream) -> HipStatus;
        fn hipEventCreate(event: *mut HipEvent) -> HipStatus;
        fn hipEventRecord(event: HipEvent, stream: HipStream) -> HipStatus;
        fn hipEventSynchronize(event: HipEvent) -> HipStatus;
        fn hipEventElapsedTime(ms: *mut f32, start: HipEvent, stop: HipEvent) -> HipStatus;
        fn hipEventDestroy(event: HipEvent) -> HipStatus;
        fn hipModuleLoadData(module: *mut HipModule, image: *const c_void) -> HipStatus;
        fn hipModuleUnload(module: HipModule) -> HipStatus;
        fn hipModuleGetFunction(
            function: *mut HipFunction, module: HipModule, name: *const c_char,
        ) -> HipStatus;
        fn hipModuleLaunchKernel(
            function: HipFunction,
            grid_x: u32, grid_y: u32, grid_z: u32,
            block_x: u32, block_y: u32, block_z: u32,
            shared_bytes: u32, stream: HipStream,
            params: *mut *mut c_void, extra: *mut *mut c_void,
        ) -> HipStatus;
    }
    optional {
        // ROCm 5.x / DTK layout (`hipDeviceProp_tR0000`); ROCm 6 exports the R0600 one.
        fn hipGetDeviceProperties(props: *mut c_void, device: HipDevice) -> HipStatus;
        fn hipGetDevicePropertiesR0600(props: *mut c_void, device: HipDevice) -> HipStatus;
        fn hipGetErrorName(status: HipStatus) -> *const c_char;
        fn hipRuntimeGetVersion(version: *mut i32) -> HipStatus;
    }
}

symbol_table! {
    /// hipRTC (`libhiprtc.so` on ROCm 6; inside `libamdhip64.so` on ROCm 5.x).
    pub struct HipRtc;
    required {
        fn hiprtcCreateProgram(
            program: *mut HiprtcProgram, source: *const c_char, name: *const c_char,
            num_headers: i32, headers: *const *const c_char, include_names: *const *const c_char,
        ) -> RtcStatus;
        fn hiprtcCompileProgram(
            program: HiprtcProgram, num_options: i32, options: *const *const c_char,
        ) -> RtcStatus;
        fn hiprtcGetProgramLogSize(program: HiprtcProgram, bytes: *mut usize) -> RtcStatus;
        fn hiprtcGetProgramLog(program: HiprtcProgram, log: *mut c_char) -> RtcStatus;
        fn hiprtcGetCodeSize(program: HiprtcProgram, bytes: *mut usize) -> RtcStatus;
        fn hiprtcGetCode(program: HiprtcProgram, code: *mut c_char) -> RtcStatus;
        fn hiprtcDestroyProgram(program: *mut HiprtcProgram) -> RtcStatus;
        fn hiprtcGetErrorString(status: RtcStatus) -> *const c_char;
    }
    optional {
        fn hiprtcVersion(major: *mut i32, minor: *mut i32) -> RtcStatus;
    }
}

/// Both libraries, resolved, and where they came from.
pub struct Libraries {
    /// The HIP runtime.
    pub runtime: HipRuntime,
    /// The runtime's file (or soname) as found.
    pub runtime_path: PathBuf,
    /// The stack the runtime belongs to.
    pub flavour: Flavour,
    /// hipRTC.
    pub rtc: HipRtc,
    /// hipRTC's file (or soname) as found.
    pub rtc_path: PathBuf,
    /// Runtime candidates tried before the one found, each `"<path> (<why it failed>)"`.
    pub skipped: Vec<String>,
}

/// Opens the first runtime and the first hipRTC of `list` that load and carry every
/// required symbol. On failure the message lists every candidate tried and why it failed.
pub fn load(list: &SearchList) -> Result<Libraries, String> {
    let mut tried = Vec::new();
    let Some((runtime, found)) = open_first(&list.runtime, HipRuntime::resolve_checked, &mut tried)
    else {
        return Err(format!(
            "no usable HIP runtime library; tried: {}",
            tried.join("; ")
        ));
    };
    // ROCm 5.x (and DTK) ship hipRTC inside the runtime library itself.
    let mut rtc_list = list.hiprtc.clone();
    rtc_list.push(found.clone());
    let mut rtc_tried = Vec::new();
    let Some((rtc, rtc_found)) = open_first(&rtc_list, HipRtc::resolve_checked, &mut rtc_tried)
    else {
        return Err(format!(
            "HIP runtime {} loaded, but no usable hipRTC library; tried: {}",
            found.path.display(),
            rtc_tried.join("; ")
        ));
    };
    Ok(Libraries {
        runtime,
        runtime_path: found.path,
        flavour: found.flavour,
        rtc,
        rtc_path: rtc_found.path,
        skipped: tried,
    })
}

impl HipRuntime {
    fn resolve_checked(library: Library) -> Result<Self, Vec<&'static str>> {
        // SAFETY: the table's signatures are those of hip_runtime_api.h (see module doc).
        unsafe { Self::resolve(library) }
    }
}

impl HipRtc {
    fn resolve_checked(library: Library) -> Result<Self, Vec<&'static str>> {
        // SAFETY: the table's signatures are those of hiprtc.h (see module doc).
        unsafe { Self::resolve(library) }
    }
}

/// Tries each candidate in order; records "<path> (<why it failed>)" in `tried`.
fn open_first<T>(
    candidates: &[Candidate],
    resolve: fn(Library) -> Result<T, Vec<&'static str>>,
    tried: &mut Vec<String>,
) -> Option<(T, Candidate)> {
    for candidate in candidates {
        match open_one(&candidate.path, resolve) {
            Ok(table) => return Some((table, candidate.clone())),
            Err(why) => tried.push(format!("{} ({why})", candidate.path.display())),
        }
    }
    None
}

fn open_one<T>(
    path: &Path,
    resolve: fn(Library) -> Result<T, Vec<&'static str>>,
) -> Result<T, String> {
    let has_folder = path.parent().is_some_and(|p| !p.as_os_str().is_empty());
    if has_folder && !path.exists() {
        return Err("not found".into());
    }
    // SAFETY: loading a shared library runs its initialisers; the candidates are HIP
    // runtimes named by the user or installed under the standard ROCm / DTK folders.
    let library = unsafe { Library::new(path) }.map_err(|e| format!("dlopen failed: {e}"))?;
    resolve(library).map_err(|missing| {
        let s = if missing.len() == 1 { "" } else { "s" };
        format!("missing required symbol{s} {}", missing.join(", "))
    })
}
