//! The backend's own run-time compile path (`hiprtc::compile`, as used on first launch)
//! on every kernel module, with whatever hipRTC the library search finds. No GPU needed.
//!
//! Debian's ROCm 5.2 hipRTC (package libamdhip64-5: hiprtc lives in libamdhip64.so.5)
//! knows gfx90a and gfx906; it aborts the process on gfx942 (added in ROCm 5.7), so
//! gfx942 is left to the offline clang check. Without a hipRTC the test prints why and
//! passes, unless `MOEMLA_REQUIRE_TOOLCHAINS` contains `hiprtc`.

use moemla_core::Error;
use moemla_hip::error::HipError;
use moemla_hip::flavour::SearchList;
use moemla_hip::kernels::Module;
use moemla_hip::{hiprtc, loader};

/// `EF_AMDGPU_MACH` values (LLVM AMDGPUUsage).
const ARCHS: [(&str, u32); 2] = [("gfx90a", 0x03f), ("gfx906", 0x02f)];

fn libraries() -> Option<loader::Libraries> {
    match loader::load(&SearchList::from_env()) {
        Ok(libs) => Some(libs),
        Err(why) => {
            let required = std::env::var("MOEMLA_REQUIRE_TOOLCHAINS").unwrap_or_default();
            assert!(
                !required.contains("hiprtc"),
                "no hipRTC, but required: {why}"
            );
            eprintln!("skipped: {why}");
            None
        }
    }
}

#[test]
fn hiprtc_compiles_every_module_for_gfx90a_and_gfx906_and_reports_errors_with_the_log() {
    let Some(libs) = libraries() else { return };
    for (arch, mach) in ARCHS {
        for module in Module::ALL {
            let name = module.name();
            let code = hiprtc::compile(&libs.rtc, name, &module.source(), arch)
                .unwrap_or_else(|e| panic!("{name} for {arch}: {e}"));
            assert_eq!(&code[..4], b"\x7fELF", "{name} for {arch}");
            assert_eq!(u16::from_le_bytes([code[18], code[19]]), 224, "EM_AMDGPU");
            let e_flags = u32::from_le_bytes(code[48..52].try_into().unwrap());
            assert_eq!(
                e_flags & 0xff,
                mach,
                "{name} for {arch}: e_flags {e_flags:#x}"
            );
            for entry in module.entry_points() {
                let symbol = format!("{entry}.kd\0");
                assert!(
                    code.windows(symbol.len()).any(|w| w == symbol.as_bytes()),
                    "{name} for {arch}: no kernel descriptor for {entry}"
                );
            }
        }
    }
    // The device's gcnArchName carries target features; they reach the code object
    // (EF_AMDGPU_FEATURE_XNACK_OFF_V4 0x200 | EF_AMDGPU_FEATURE_SRAMECC_ON_V4 0xc00).
    let route = Module::MoeRoute;
    let code = hiprtc::compile(
        &libs.rtc,
        route.name(),
        &route.source(),
        "gfx90a:sramecc+:xnack-",
    )
    .unwrap_or_else(|e| panic!("moe_route for gfx90a:sramecc+:xnack-: {e}"));
    let e_flags = u32::from_le_bytes(code[48..52].try_into().unwrap());
    assert_eq!(e_flags & 0xfff, 0xe3f, "e_flags {e_flags:#x}");

    // A source hipRTC cannot take (a NUL byte) is refused before the call.
    let err = hiprtc::compile(&libs.rtc, "nul", "a\0b", "gfx90a").unwrap_err();
    assert!(
        err.to_string()
            .contains("the source contains a NUL byte at 1"),
        "{err}"
    );

    // A compile error comes back typed, with hipRTC's log naming the problem.
    let broken = format!(
        "{}\nextern \"C\" __global__ void broken() {{ undeclared_thing(); }}\n",
        moemla_gpu_launch::module::DEVICE_HEADER
    );
    let err = hiprtc::compile(&libs.rtc, "broken", &broken, "gfx90a").unwrap_err();
    assert!(
        matches!(
            err,
            HipError::Rtc {
                call: "hiprtcCompileProgram",
                ..
            }
        ),
        "{err}"
    );
    let err: Error = err.into();
    match err {
        Error::Device {
            backend,
            call,
            message,
        } => {
            assert_eq!(
                (backend.as_str(), call.as_str()),
                ("hip", "hiprtcCompileProgram")
            );
            assert!(message.contains("undeclared_thing"), "{message}");
        }
        other => panic!("expected Error::Device, got {other}"),
    }
}
