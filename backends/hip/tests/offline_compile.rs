//! The CI check: every HIP kernel module, exactly as the backend hands it to hipRTC,
//! compiles offline with clang for MI300X (gfx942), MI250 (gfx90a) and Hygon's gfx906,
//! and the result is an AMDGPU code object for that arch holding every entry point.
//!
//! Without clang-19 the test prints why and passes, unless `MOEMLA_REQUIRE_TOOLCHAINS`
//! contains `clang-hip` (CI sets it): then a missing compiler fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// ELF `e_machine` of AMD GPUs (`EM_AMDGPU`).
const EM_AMDGPU: u16 = 224;
/// `EF_AMDGPU_MACH` mask of `e_flags` (LLVM AMDGPUUsage, "AMDGPU ELF Header").
const EF_AMDGPU_MACH: u32 = 0x0ff;

/// (arch, EF_AMDGPU_MACH value) from LLVM's AMDGPUUsage table / BinaryFormat/ELF.h.
/// gfx926 / gfx928 / gfx936 (Hygon) are not known to upstream clang-19, only to DTK's.
const ARCHS: [(&str, u32); 3] = [("gfx942", 0x04c), ("gfx90a", 0x03f), ("gfx906", 0x02f)];

/// The compiler: `$MOEMLA_HIP_CLANG`, else `clang-19`; `Err(name)` when it does not run.
fn clang() -> Result<String, String> {
    let clang = std::env::var("MOEMLA_HIP_CLANG").unwrap_or_else(|_| "clang-19".into());
    let ok = Command::new(&clang)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(clang)
    } else {
        Err(clang)
    }
}

/// A fresh folder per call (tests run in parallel threads of one process).
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("moemla-hip-offline-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `source` for `arch` with the offline shim; returns the code object bytes.
fn compile(clang: &str, dir: &Path, module: &str, source: &str, arch: &str) -> Vec<u8> {
    let shim = dir.join("moemla_hip_offline.h");
    std::fs::write(&shim, moemla_hip::kernels::OFFLINE_SHIM).unwrap();
    let input = dir.join(format!("{module}.hip"));
    std::fs::write(&input, source).unwrap();
    let output = dir.join(format!("{module}-{arch}.co"));
    let out = Command::new(clang)
        .args(["-x", "hip", "-std=c++17", "-O3"])
        .arg(format!("--offload-arch={arch}"))
        .args([
            "--cuda-device-only",
            "--no-gpu-bundle-output",
            "-nogpuinc",
            "-nogpulib",
        ])
        .arg("-include")
        .arg(&shim)
        .arg("-c")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("clang runs");
    assert!(
        out.status.success(),
        "{module} does not compile for {arch}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&output).unwrap()
}

/// Checks the ELF64 header of an AMDGPU code object: magic, class, machine, arch.
fn check_code_object(bytes: &[u8], arch: &str, mach: u32) {
    assert!(
        bytes.len() >= 64,
        "{arch}: {} bytes is no ELF64 file",
        bytes.len()
    );
    assert_eq!(&bytes[..4], b"\x7fELF", "{arch}: not an ELF file");
    assert_eq!(bytes[4], 2, "{arch}: not ELFCLASS64");
    assert_eq!(bytes[5], 1, "{arch}: not little-endian");
    let e_machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    assert_eq!(e_machine, EM_AMDGPU, "{arch}: e_machine");
    let e_flags = u32::from_le_bytes(bytes[48..52].try_into().unwrap());
    assert_eq!(
        e_flags & EF_AMDGPU_MACH,
        mach,
        "{arch}: EF_AMDGPU_MACH of e_flags {e_flags:#x}"
    );
}

/// Each entry point has a kernel descriptor symbol `<name>.kd` in the code object.
fn check_entry_points(bytes: &[u8], arch: &str, module: &str, entry_points: &[&str]) {
    for name in entry_points {
        let symbol = format!("{name}.kd\0");
        assert!(
            bytes.windows(symbol.len()).any(|w| w == symbol.as_bytes()),
            "{module} for {arch}: no kernel descriptor for {name}"
        );
    }
}

fn run(modules: &[(&str, String, Vec<&str>)]) {
    let clang = match clang() {
        Ok(clang) => clang,
        Err(name) => {
            let required = std::env::var("MOEMLA_REQUIRE_TOOLCHAINS").unwrap_or_default();
            assert!(
                !required.contains("clang-hip"),
                "{name} not found, and MOEMLA_REQUIRE_TOOLCHAINS={required} requires clang-hip \
                 (apt install clang-19 lld-19)"
            );
            eprintln!("skipped: {name} not found (apt install clang-19 lld-19)");
            return;
        }
    };
    // One thread (and folder) per arch: each clang is its own process, so the archs
    // compile side by side on CI's cores. A failing arch's panic fails the scope.
    std::thread::scope(|scope| {
        for (arch, mach) in ARCHS {
            let clang = &clang;
            scope.spawn(move || {
                let dir = scratch_dir();
                for (module, source, entry_points) in modules {
                    let code = compile(clang, &dir, module, source, arch);
                    check_code_object(&code, arch, mach);
                    check_entry_points(&code, arch, module, entry_points);
                }
                std::fs::remove_dir_all(&dir).ok();
            });
        }
    });
}

#[test]
fn every_kernel_module_compiles_for_gfx942_gfx90a_and_gfx906() {
    let modules: Vec<_> = moemla_hip::kernels::Module::ALL
        .iter()
        .map(|m| (m.name(), m.source(), m.entry_points().to_vec()))
        .collect();
    let names: Vec<_> = modules.iter().map(|m| m.0).collect();
    assert_eq!(
        names,
        [
            "moe_route",
            "moe_experts",
            "mla_decode",
            "mla_kv_quantize",
            "dsa_indexer_topk"
        ]
    );
    run(&modules);
}
