//! The embedded kernel sources and the one compile function used both by the backend and by
//! the CI compile test (`tests/nvrtc_compile.rs`).

use crate::error::{CudaError, CudaResult};
use crate::loader::{Nvrtc, NvrtcProgram, NvrtcResult};
use std::ffi::{c_char, CString};

/// The portability header, prepended to every module.
pub const DEVICE_HEADER: &str = include_str!("../../../kernels/common/moemla_device.h");

/// One kernel module (one `.cu` file under `kernels/cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `moe_route.cu`.
    MoeRoute,
    /// `moe_experts.cu`.
    MoeExperts,
    /// `mla_decode.cu`.
    MlaDecode,
}

impl Module {
    /// Every module.
    pub const ALL: [Module; 3] = [Module::MoeRoute, Module::MoeExperts, Module::MlaDecode];

    /// The file name under `kernels/cuda`.
    pub fn file_name(self) -> &'static str {
        match self {
            Module::MoeRoute => "moe_route.cu",
            Module::MoeExperts => "moe_experts.cu",
            Module::MlaDecode => "mla_decode.cu",
        }
    }

    /// The `.cu` text.
    pub fn body(self) -> &'static str {
        match self {
            Module::MoeRoute => include_str!("../../../kernels/cuda/moe_route.cu"),
            Module::MoeExperts => include_str!("../../../kernels/cuda/moe_experts.cu"),
            Module::MlaDecode => include_str!("../../../kernels/cuda/mla_decode.cu"),
        }
    }

    /// The `extern "C"` entry points the module defines.
    pub fn entry_points(self) -> Vec<String> {
        let per_dtype = |bases: &[&str]| -> Vec<String> {
            bases
                .iter()
                .flat_map(|b| ["f32", "f16", "bf16"].map(|s| format!("{b}_{s}")))
                .collect()
        };
        match self {
            Module::MoeRoute => per_dtype(&["moemla_moe_route"]),
            Module::MoeExperts => {
                let mut v = vec!["moemla_moe_align".to_string()];
                v.extend(per_dtype(&[
                    "moemla_moe_gate_up",
                    "moemla_moe_down",
                    "moemla_moe_combine",
                ]));
                v
            }
            Module::MlaDecode => {
                let mut v = vec!["moemla_mla_check".to_string()];
                v.extend(per_dtype(&["moemla_mla_decode", "moemla_mla_combine"]));
                v
            }
        }
    }

    /// The full source given to NVRTC: the header, then the module (with a `#line` so
    /// compiler messages name the `.cu` file and its own line numbers).
    pub fn source(self) -> String {
        format!(
            "{DEVICE_HEADER}\n#line 1 \"{}\"\n{}",
            self.file_name(),
            self.body()
        )
    }
}

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
        (nvrtc.nvrtcCreateProgram)(
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
        (nvrtc.nvrtcCompileProgram)(program.prog, option_ptrs.len() as i32, option_ptrs.as_ptr())
    };
    let log = program.log();
    check("nvrtcCompileProgram", rc, format!("\n{log}"))?;
    let ptx = program.bytes(nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX, "nvrtcGetPTX")?;
    let cubin = program.bytes(
        nvrtc.nvrtcGetCUBINSize,
        nvrtc.nvrtcGetCUBIN,
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
            self.nvrtc.nvrtcGetProgramLogSize,
            self.nvrtc.nvrtcGetProgramLog,
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
        unsafe { (self.nvrtc.nvrtcDestroyProgram)(&mut self.prog) };
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
