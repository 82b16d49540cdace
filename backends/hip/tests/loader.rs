//! Library search and device discovery without an AMD GPU: every failure is a typed
//! `Unavailable` that says what was tried.

use moemla_core::{Backend, Error};
use moemla_gpu_launch::library::SymbolTable;
use moemla_hip::flavour::{Candidate, Flavour, SearchList};
use moemla_hip::loader::{HipRtc, HipRuntime};
use moemla_hip::HipBackend;
use std::path::{Path, PathBuf};

/// Debian's libamdhip64 (package libamdhip64-5, ROCm 5.2), where installed.
const DEBIAN_HIP: &str = "/usr/lib/x86_64-linux-gnu/libamdhip64.so.5";

fn rocm(path: &str) -> Candidate {
    Candidate {
        path: PathBuf::from(path),
        flavour: Flavour::of_file(Path::new(path)),
    }
}

fn unavailable_reason(search: &SearchList) -> String {
    match HipBackend::with_search(search, 0) {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "hip");
            reason
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(b) => panic!("expected Unavailable, got a device: {:?}", b.info()),
    }
}

#[test]
fn bogus_paths_are_each_listed_with_why_they_failed() {
    let search = SearchList {
        runtime: vec![
            rocm("/nonexistent/moemla/libamdhip64.so"),
            rocm("/nonexistent/dtk/lib/libgalaxyhip.so.5"),
            rocm("libmoemla-no-such-hip.so.9"),
        ],
        hiprtc: vec![rocm("/nonexistent/moemla/libhiprtc.so")],
    };
    let reason = unavailable_reason(&search);
    assert!(
        reason.starts_with("no usable HIP runtime library; tried: "),
        "{reason}"
    );
    assert!(
        reason.contains("/nonexistent/moemla/libamdhip64.so (not found)"),
        "{reason}"
    );
    assert!(
        reason.contains("/nonexistent/dtk/lib/libgalaxyhip.so.5 (not found)"),
        "{reason}"
    );
    assert!(
        reason.contains("libmoemla-no-such-hip.so.9 (dlopen failed: "),
        "{reason}"
    );
}

#[test]
fn a_library_without_the_hip_api_is_rejected_naming_every_missing_symbol() {
    // libm is on every glibc system and exports none of the HIP runtime.
    let search = SearchList {
        runtime: vec![rocm("libm.so.6")],
        hiprtc: vec![],
    };
    let reason = unavailable_reason(&search);
    let expected = format!(
        "libm.so.6 (missing required symbols {})",
        HipRuntime::REQUIRED.join(", ")
    );
    assert!(reason.contains(&expected), "{reason}");
    assert_eq!(HipRtc::REQUIRED.len(), 8);
}

/// The runtime table requires exactly what the backend calls: no device handles, no
/// synchronous copies, no events (the mock runtime, which exports none of them, loads).
#[test]
fn the_runtime_table_requires_only_what_the_backend_calls() {
    assert_eq!(
        HipRuntime::REQUIRED,
        [
            "hipInit",
            "hipGetDeviceCount",
            "hipSetDevice",
            "hipDeviceGetName",
            "hipDeviceGetAttribute",
            "hipDeviceTotalMem",
            "hipGetErrorString",
            "hipMalloc",
            "hipFree",
            "hipMemcpyAsync",
            "hipMemsetAsync",
            "hipStreamCreate",
            "hipStreamDestroy",
            "hipStreamSynchronize",
            "hipModuleLoadData",
            "hipModuleUnload",
            "hipModuleGetFunction",
            "hipModuleLaunchKernel",
        ]
    );
    assert_eq!(
        HipRuntime::OPTIONAL,
        ["hipGetDeviceProperties", "hipGetDevicePropertiesR0600"]
    );
}

#[test]
fn debian_libamdhip64_without_a_gpu_reports_no_hip_device() {
    if !Path::new(DEBIAN_HIP).exists() {
        let required = std::env::var("MOEMLA_REQUIRE_TOOLCHAINS").unwrap_or_default();
        assert!(
            !required.contains("libamdhip64"),
            "{DEBIAN_HIP} missing but MOEMLA_REQUIRE_TOOLCHAINS={required} requires it"
        );
        eprintln!("skipped: {DEBIAN_HIP} not installed (apt install libamdhip64-dev)");
        return;
    }
    // hipRTC: no libhiprtc here, so the search falls back to the runtime itself, which
    // exports hiprtc* in ROCm 5.x.
    let search = SearchList {
        runtime: vec![
            rocm("/nonexistent/rocm/lib/libamdhip64.so"),
            rocm(DEBIAN_HIP),
        ],
        hiprtc: vec![rocm("/nonexistent/rocm/lib/libhiprtc.so")],
    };
    match HipBackend::with_search(&search, 0) {
        Err(Error::Unavailable { reason, .. }) => {
            // What ROCm 5.2 does with no GPU: hipInit fails with hipErrorInvalidDevice,
            // hipGetDeviceCount with hipErrorNoDevice and a count of 0.
            assert!(reason.starts_with("no HIP device: "), "{reason}");
            assert!(
                reason.contains("hipGetDeviceCount returned hipErrorNoDevice (100) with 0 devices"),
                "{reason}"
            );
            assert!(
                reason.contains(&format!("runtime {DEBIAN_HIP} (ROCm)")),
                "{reason}"
            );
            assert!(reason.contains(&format!("hipRTC {DEBIAN_HIP}")), "{reason}");
            assert!(
                reason.contains("not used: /nonexistent/rocm/lib/libamdhip64.so (not found)"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(backend) => {
            // A machine with an AMD GPU: the device must describe itself.
            let props = backend.props();
            assert!(props.arch.starts_with("gfx"), "{props:?}");
            assert!(props.warp_size == 32 || props.warp_size == 64, "{props:?}");
        }
    }
}
