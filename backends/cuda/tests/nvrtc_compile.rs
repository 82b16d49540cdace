//! CI gate: every CUDA kernel compiles through NVRTC for sm_80 and sm_90, to PTX and to
//! CUBIN, with the same sources and the same compile function the backend uses; the sm_90
//! build's w8a8 expert GEMMs run on the FP8 tensor cores (mma.sync m16n8k32 e4m3), the
//! sm_80 build's dequantize.
//!
//! NVRTC is found by the backend's loader: `MOEMLA_NVRTC_LIB` (the file, or its directory —
//! e.g. the `nvidia-cuda-nvrtc-cu12` wheel's `site-packages/nvidia/cuda_nvrtc/lib`), or
//! `libnvrtc.so.{13,12}` on `LD_LIBRARY_PATH`. Without NVRTC the tests print why and pass,
//! unless `MOEMLA_REQUIRE_TOOLCHAINS` contains `nvrtc` (CI sets it), then they fail.

use moemla_cuda::loader::Nvrtc;
use moemla_cuda::nvrtc::{compile, compile_source, Module};
use moemla_cuda::CudaError;

const ARCHS: [u32; 2] = [80, 90];

/// The FP8 tensor-core instruction of the w8a8 expert GEMMs (sm_89+).
const FP8_MMA: &str = "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32";

/// Each `.entry` of a PTX text with its body (up to the next entry), by name.
fn entries(ptx: &str) -> Vec<(&str, &str)> {
    ptx.split(".entry ")
        .skip(1)
        .map(|body| (body.split('(').next().unwrap_or(""), body))
        .collect()
}

/// Checks which expert kernels carry the FP8 tensor-core path for `arch`: on sm_89+ every
/// w8a8 GEMM (gate/up and down, every run dtype) and no other kernel; below, none.
fn check_fp8_mma(what: &str, ptx: &str, arch: u32) {
    let mut w8a8_gemms = 0;
    for (name, body) in entries(ptx) {
        let w8a8_gemm = name.starts_with("moemla_moe_gate_up_w8a8_")
            || name.starts_with("moemla_moe_down_w8a8_");
        w8a8_gemms += usize::from(w8a8_gemm);
        let want = w8a8_gemm && arch >= 89;
        assert_eq!(
            body.contains(FP8_MMA),
            want,
            "{what}: {name} {} {FP8_MMA}",
            if want { "lacks" } else { "has" }
        );
        if !want {
            assert!(!body.contains("e4m3.e4m3"), "{what}: {name} has an FP8 mma");
        }
    }
    assert_eq!(
        w8a8_gemms, 6,
        "{what}: w8a8 GEMM entry points (2 x f32/f16/bf16)"
    );
}

/// Checks that the dense-cache decode kernels stage their K tiles with `cp.async` (sm_80+:
/// every copy of a tile in flight at once) and wait for them; the FP8-cache kernels
/// dequantize as they load and so copy synchronously.
fn check_async_staging(what: &str, ptx: &str) {
    let mut dense = 0;
    for (name, body) in entries(ptx) {
        let is_dense = (name.starts_with("moemla_mla_decode_")
            || name.starts_with("moemla_mla_sparse_decode_"))
            && !name.contains("fp8");
        dense += usize::from(is_dense);
        for insn in ["cp.async.cg.shared.global", "cp.async.wait_all"] {
            assert_eq!(
                body.contains(insn),
                is_dense,
                "{what}: {name} {} {insn}",
                if is_dense { "lacks" } else { "has" }
            );
        }
    }
    assert_eq!(
        dense, 6,
        "{what}: dense decode entry points (2 x f32/f16/bf16)"
    );
}

fn nvrtc_or_skip() -> Option<Nvrtc> {
    match Nvrtc::load() {
        Ok(n) => Some(n),
        Err(why) => {
            let required = std::env::var("MOEMLA_REQUIRE_TOOLCHAINS")
                .map(|v| v.contains("nvrtc"))
                .unwrap_or(false);
            assert!(
                !required,
                "MOEMLA_REQUIRE_TOOLCHAINS requires nvrtc, but: {why}"
            );
            eprintln!("skipping the NVRTC compile test: {why}");
            None
        }
    }
}

/// Compiles `module` for `arch` and checks its PTX (target, entry points, tensor-core and
/// staging instructions) and its CUBIN (an ELF image for EM_CUDA).
fn check_module(nvrtc: &Nvrtc, module: Module, arch: u32) {
    let what = format!("{} for sm_{arch}", module.file_name());
    let c = compile(nvrtc, module, arch).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        c.ptx.contains(&format!(".target sm_{arch}")),
        "{what}: PTX target"
    );
    for entry in module.entry_points() {
        assert!(
            c.ptx.contains(&format!(".entry {entry}(")),
            "{what}: entry point {entry} missing from the PTX"
        );
    }
    // CUBIN: an ELF image for EM_CUDA (190).
    assert!(c.cubin.len() > 64, "{what}: CUBIN too small");
    assert_eq!(&c.cubin[..4], b"\x7fELF", "{what}: CUBIN is not ELF");
    assert_eq!(
        u16::from_le_bytes([c.cubin[18], c.cubin[19]]),
        190,
        "{what}: e_machine"
    );
    // The GEMM-shaped modules carry the tensor-core path (routing and the row
    // quantizer have no matrix products).
    if ![Module::MoeRoute, Module::MlaKvQuantize].contains(&module) {
        for ty in ["bf16", "f16"] {
            let insn = format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32");
            assert!(
                c.ptx.contains(&insn),
                "{what}: no {insn} (tensor-core path)"
            );
        }
    }
    if module == Module::MoeExperts {
        check_fp8_mma(&what, &c.ptx, arch);
    }
    if module == Module::MlaDecode {
        check_async_staging(&what, &c.ptx);
    }
    eprintln!(
        "{what}: PTX {} bytes, CUBIN {} bytes{}",
        c.ptx.len(),
        c.cubin.len(),
        if c.log.is_empty() {
            String::new()
        } else {
            format!(", log: {}", c.log)
        }
    );
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_to_ptx_and_cubin() {
    let Some(nvrtc) = nvrtc_or_skip() else {
        return;
    };
    let (major, minor) = nvrtc.version();
    eprintln!("NVRTC {major}.{minor} from {}", nvrtc.path);
    // One thread per arch (NVRTC's documented thread safety: concurrent calls on distinct
    // programs), so the two archs compile side by side on CI's cores; a failing arch's
    // panic fails the scope.
    std::thread::scope(|scope| {
        for arch in ARCHS {
            let nvrtc = &nvrtc;
            scope.spawn(move || {
                for module in Module::ALL {
                    check_module(nvrtc, module, arch);
                }
            });
        }
    });
}

#[test]
fn a_compile_error_carries_the_program_log() {
    let Some(nvrtc) = nvrtc_or_skip() else {
        return;
    };
    let src = "extern \"C\" __global__ void broken(float* p) { p[0] = not_declared; }";
    match compile_source(&nvrtc, "broken.cu", src, 90) {
        Err(CudaError::Nvrtc {
            call, status, log, ..
        }) => {
            assert_eq!(call, "nvrtcCompileProgram");
            assert_eq!(status, "NVRTC_ERROR_COMPILATION");
            assert!(log.contains("not_declared"), "log: {log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
