//! The HIP runtime and hipRTC, loaded at run time: one symbol table per library, declared
//! with the shared [`moemla_gpu_launch::symbol_table!`] and searched with
//! [`moemla_gpu_launch::library::open_first`], which reports every path tried.
//!
//! A table lists the C functions the backend calls, no more: a library missing a required
//! symbol is rejected with the names of all missing ones. The signatures are those of
//! AMD's `hip_runtime_api.h` and `hiprtc.h` (ROCm 5.2 and 6.x agree on all of them),
//! declared here so that building needs no ROCm headers.

use crate::error::{HipStatus, RtcStatus};
use crate::flavour::{Flavour, SearchList};
use moemla_gpu_launch::library::open_first;
use std::ffi::{c_char, c_void};
use std::path::PathBuf;

/// `hipDevice_t`.
pub type HipDevice = i32;
/// `hipStream_t` (opaque handle).
pub type HipStream = *mut c_void;
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
/// `hipMemcpyDeviceToDevice`.
pub const MEMCPY_DEVICE_TO_DEVICE: i32 = 3;

moemla_gpu_launch::symbol_table! {
    /// The HIP runtime (`libamdhip64.so` on ROCm, `libgalaxyhip.so` on DTK): exactly the
    /// functions the backend calls (hip_runtime_api.h).
    pub struct HipRuntime;
    required {
        fn hipInit(flags: u32) -> HipStatus;
        fn hipGetDeviceCount(count: *mut i32) -> HipStatus;
        fn hipSetDevice(device: HipDevice) -> HipStatus;
        fn hipDeviceGetName(name: *mut c_char, len: i32, device: HipDevice) -> HipStatus;
        fn hipDeviceGetAttribute(value: *mut i32, attribute: i32, device: HipDevice) -> HipStatus;
        fn hipDeviceTotalMem(bytes: *mut usize, device: HipDevice) -> HipStatus;
        fn hipGetErrorString(status: HipStatus) -> *const c_char;
        fn hipMalloc(ptr: *mut *mut c_void, bytes: usize) -> HipStatus;
        fn hipFree(ptr: *mut c_void) -> HipStatus;
        fn hipMemcpyAsync(
            dst: *mut c_void, src: *const c_void, bytes: usize, kind: i32, stream: HipStream,
        ) -> HipStatus;
        fn hipMemsetAsync(dst: *mut c_void, value: i32, bytes: usize, stream: HipStream)
            -> HipStatus;
        fn hipStreamCreate(stream: *mut HipStream) -> HipStatus;
        fn hipStreamDestroy(stream: HipStream) -> HipStatus;
        fn hipStreamSynchronize(stream: HipStream) -> HipStatus;
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
    }
}

moemla_gpu_launch::symbol_table! {
    /// hipRTC (`libhiprtc.so` on ROCm 6; inside `libamdhip64.so` on ROCm 5.x): hiprtc.h.
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
    optional {}
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
    let runtime = open_first::<HipRuntime, _>(list.runtime.iter().cloned())
        .map_err(|tried| format!("no usable HIP runtime library; tried: {tried}"))?;
    let found = runtime.candidate;
    // ROCm 5.x (and DTK) ship hipRTC inside the runtime library itself.
    let rtc_list = list.hiprtc.iter().cloned().chain([found.clone()]);
    let rtc = open_first::<HipRtc, _>(rtc_list).map_err(|tried| {
        format!(
            "HIP runtime {} loaded, but no usable hipRTC library; tried: {tried}",
            found.path.display()
        )
    })?;
    Ok(Libraries {
        runtime: runtime.table,
        runtime_path: found.path,
        flavour: found.flavour,
        rtc: rtc.table,
        rtc_path: rtc.candidate.path,
        skipped: runtime.skipped.0,
    })
}
