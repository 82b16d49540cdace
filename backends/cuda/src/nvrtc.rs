//! The one NVRTC compile function, used both by the backend and by the CI compile test
//! (`tests/nvrtc_compile.rs`). The kernel modules themselves are the shared launch
//! layer's ([`Module`]).

use crate::error::{CudaError, CudaResult};
use crate::loader::{Nvrtc, NvrtcProgram, NvrtcResult};
pub use moemla_gpu_launch::Module;
use std::ffi::{c_char, CString};

/// What NVRTC produced for one (module, arch).
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text.
    pub ptx: String,
    /// CUBIN (an ELF image) for the exact `sm_XY`.
    pub cubin: Vec<u8>,
    /// The compile log (warnings), possibly empty.
    pub log: String,
}

/// Compiles `module` for `sm_{arch}` (e.g. 80, 90): `--gpu-architecture=sm_XY --std=c++17`.
pub fn compile(nvrtc: &Nvrtc, module: Module, arch: u32) -> CudaResult<Compiled> {
    compile_source(nvrtc, module.file_name(), &module.source(), arch)
}

/// Compiles one CUDA C++ program text named `name` for `sm_{arch}`. A compile error is a
/// [`CudaError::Nvrtc`] carrying the program log.
pub fn compile_source(nvrtc: &Nvrtc, name: &str, source: &str, arch: u32) -> CudaResult<Compiled> {
    let src = CString::new(source).map_err(|_| CudaError::Nvrtc {
        call: "nvrtcCreateProgram",
        status: "NVRTC_ERROR_INVALID_INPUT".into(),
        code: 3,
        log: ": the source contains a NUL byte".into(),
    })?;
    let name = CString::new(name.replace('\0', "")).unwrap_or_default();
    let mut prog: NvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings, no headers (null arrays with count 0), out-pointer valid.
    let rc = unsafe {
        (nvrtc.api.nvrtcCreateProgram)(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check("nvrtcCreateProgram", rc, String::new())?;
    let program = Program { nvrtc, prog };
    let options = [
        format!("--gpu-architecture=sm_{arch}"),
        "--std=c++17".to_string(),
    ];
    let options: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).expect("options contain no NUL byte"))
        .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `prog` is live; the option pointers outlive the call.
    let rc = unsafe {
        (nvrtc.api.nvrtcCompileProgram)(
            program.prog,
            option_ptrs.len() as i32,
            option_ptrs.as_ptr(),
        )
    };
    let log = program.log();
    check("nvrtcCompileProgram", rc, format!("\n{log}"))?;
    let ptx = program.bytes(
        nvrtc.api.nvrtcGetPTXSize,
        nvrtc.api.nvrtcGetPTX,
        "nvrtcGetPTX",
    )?;
    let cubin = program.bytes(
        nvrtc.api.nvrtcGetCUBINSize,
        nvrtc.api.nvrtcGetCUBIN,
        "nvrtcGetCUBIN",
    )?;
    let ptx = String::from_utf8_lossy(ptx.strip_suffix(&[0]).unwrap_or(&ptx)).into_owned();
    Ok(Compiled { ptx, cubin, log })
}

/// A live NVRTC program, destroyed on drop.
struct Program<'a> {
    nvrtc: &'a Nvrtc,
    prog: NvrtcProgram,
}

type SizeFn = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult;
type DataFn = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult;

impl Program<'_> {
    /// The compile log without its trailing NUL.
    fn log(&self) -> String {
        match self.bytes(
            self.nvrtc.api.nvrtcGetProgramLogSize,
            self.nvrtc.api.nvrtcGetProgramLog,
            "nvrtcGetProgramLog",
        ) {
            Ok(b) => String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(&b))
                .trim_end()
                .to_string(),
            Err(e) => format!("(no log: {e})"),
        }
    }

    /// A size-then-data NVRTC output.
    fn bytes(&self, size: SizeFn, data: DataFn, call: &'static str) -> CudaResult<Vec<u8>> {
        let mut n = 0usize;
        // SAFETY: `prog` is live, `n` a valid out-pointer.
        let rc = unsafe { size(self.prog, &mut n) };
        check(call, rc, String::new())?;
        let mut buf = vec![0u8; n];
        // SAFETY: NVRTC writes exactly `n` bytes, the size it just reported.
        let rc = unsafe { data(self.prog, buf.as_mut_ptr().cast()) };
        check(call, rc, String::new())?;
        Ok(buf)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        // SAFETY: `prog` was created by nvrtcCreateProgram and is destroyed once.
        unsafe { (self.nvrtc.api.nvrtcDestroyProgram)(&mut self.prog) };
    }
}

/// Status names of `nvrtcResult` (nvrtc.h).
fn status_name(rc: NvrtcResult) -> &'static str {
    match rc {
        0 => "NVRTC_SUCCESS",
        1 => "NVRTC_ERROR_OUT_OF_MEMORY",
        2 => "NVRTC_ERROR_PROGRAM_CREATION_FAILURE",
        3 => "NVRTC_ERROR_INVALID_INPUT",
        4 => "NVRTC_ERROR_INVALID_PROGRAM",
        5 => "NVRTC_ERROR_INVALID_OPTION",
        6 => "NVRTC_ERROR_COMPILATION",
        7 => "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
        _ => "NVRTC_ERROR",
    }
}

fn check(call: &'static str, rc: NvrtcResult, log: String) -> CudaResult<()> {
    if rc == 0 {
        return Ok(());
    }
    Err(CudaError::Nvrtc {
        call,
        status: status_name(rc).to_string(),
        code: rc,
        log,
    })
}
