//! Run-time compilation of the shared CUDA/HIP kernel sources with hipRTC.

use crate::error::{HipError, RtcStatus};
use crate::loader::{HipRtc, HiprtcProgram};
use std::ffi::{c_char, CStr, CString};

/// Compiles `source` (a complete translation unit: the portability header followed by
/// the kernels) for `arch`, the device's full `gcnArchName` ("gfx942:sramecc+:xnack-"),
/// returning the code object for `hipModuleLoadData`. Needs no device: hipRTC compiles
/// for any arch its LLVM knows.
pub fn compile(rtc: &HipRtc, module: &str, source: &str, arch: &str) -> Result<Vec<u8>, HipError> {
    let source = c_string(source, "the source")?;
    let name = c_string(&format!("{module}.hip"), "the module name")?;
    let mut program: HiprtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no extra headers (the source is self-contained).
    let status = unsafe {
        (rtc.hiprtcCreateProgram)(
            &mut program,
            source.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check(rtc, "hiprtcCreateProgram", status, String::new())?;
    let result = compile_program(rtc, program, arch);
    // SAFETY: created above, destroyed once.
    unsafe { (rtc.hiprtcDestroyProgram)(&mut program) };
    result
}

fn compile_program(rtc: &HipRtc, program: HiprtcProgram, arch: &str) -> Result<Vec<u8>, HipError> {
    let options = [
        format!("--offload-arch={arch}"),
        "-O3".to_string(),
        "-std=c++17".to_string(),
    ];
    let options = options
        .iter()
        .map(|o| c_string(o, "an option"))
        .collect::<Result<Vec<_>, _>>()?;
    let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `pointers` holds options.len() valid C strings.
    let status =
        unsafe { (rtc.hiprtcCompileProgram)(program, pointers.len() as i32, pointers.as_ptr()) };
    if status != RtcStatus::SUCCESS {
        let log = program_log(rtc, program);
        return check(rtc, "hiprtcCompileProgram", status, log).map(|_| Vec::new());
    }
    let mut size = 0usize;
    // SAFETY: valid out-pointer.
    let status = unsafe { (rtc.hiprtcGetCodeSize)(program, &mut size) };
    check(rtc, "hiprtcGetCodeSize", status, String::new())?;
    let mut code = vec![0u8; size];
    // SAFETY: the buffer holds `size` bytes, as hipRTC asked for.
    let status = unsafe { (rtc.hiprtcGetCode)(program, code.as_mut_ptr().cast()) };
    check(rtc, "hiprtcGetCode", status, String::new())?;
    Ok(code)
}

/// A C string, or `HIPRTC_ERROR_INVALID_INPUT` naming what held a NUL byte.
fn c_string(text: &str, what: &str) -> Result<CString, HipError> {
    CString::new(text).map_err(|e| HipError::Rtc {
        call: "hiprtcCreateProgram",
        status: RtcStatus::INVALID_INPUT,
        message: format!("{what} contains a NUL byte at {}", e.nul_position()),
        log: String::new(),
    })
}

fn program_log(rtc: &HipRtc, program: HiprtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: valid out-pointer.
    let status = unsafe { (rtc.hiprtcGetProgramLogSize)(program, &mut size) };
    if status != RtcStatus::SUCCESS || size == 0 {
        return String::new();
    }
    let mut log = vec![0u8; size];
    // SAFETY: the buffer holds `size` bytes, as hipRTC asked for.
    let status = unsafe { (rtc.hiprtcGetProgramLog)(program, log.as_mut_ptr().cast()) };
    if status != RtcStatus::SUCCESS {
        return String::new();
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    String::from_utf8_lossy(&log[..end]).trim_end().to_string()
}

fn check(rtc: &HipRtc, call: &'static str, status: RtcStatus, log: String) -> Result<(), HipError> {
    if status == RtcStatus::SUCCESS {
        return Ok(());
    }
    // SAFETY: hiprtcGetErrorString accepts any status and returns a static C string.
    let text = unsafe { (rtc.hiprtcGetErrorString)(status) };
    let message = if text.is_null() {
        format!("hiprtcResult {}", status.0)
    } else {
        // SAFETY: non-null, NUL-terminated, static storage.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    Err(HipError::Rtc {
        call,
        status,
        message,
        log,
    })
}
