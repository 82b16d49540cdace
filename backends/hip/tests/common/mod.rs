//! The host-only mock HIP runtime (tests/mock/mock_hip.c) that the HIP tests run against,
//! with the real hipRTC of Debian's ROCm 5.2. Shared by this crate's tests and, by path,
//! the `moemla` crate's registry test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's ROCm 5.2 HIP runtime, whose hipRTC the backend uses beside the mock.
pub const DEBIAN_HIP: &str = "/usr/lib/x86_64-linux-gnu/libamdhip64.so.5";

/// A missing tool: fails when `MOEMLA_REQUIRE_TOOLCHAINS` names `tool`, else says why the
/// test is skipped.
pub fn skip_or_fail(tool: &str, why: &str) {
    let required = std::env::var("MOEMLA_REQUIRE_TOOLCHAINS").unwrap_or_default();
    assert!(
        !required.contains(tool),
        "{why}, but MOEMLA_REQUIRE_TOOLCHAINS={required}"
    );
    eprintln!("skipped: {why}");
}

/// Builds the mock runtime into `dir/name` with clang-19 (or `MOEMLA_HIP_CLANG`) and
/// `defines` (`-DMOCK_R0000` for the ROCm 5 layout). `None` where hipRTC is not installed
/// or clang cannot run (a skip, or a failure where the toolchains are required).
pub fn build_mock(dir: &Path, defines: &[&str], name: &str) -> Option<PathBuf> {
    if !Path::new(DEBIAN_HIP).exists() {
        skip_or_fail("hiprtc", &format!("{DEBIAN_HIP} not installed"));
        return None;
    }
    let clang = std::env::var("MOEMLA_HIP_CLANG").unwrap_or_else(|_| "clang-19".into());
    let out = dir.join(name);
    // Both crates that include this module sit two levels below the workspace root.
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../backends/hip/tests/mock/mock_hip.c");
    let status = Command::new(&clang)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror"])
        .args(defines)
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("{clang} failed to build the mock runtime: {s}"),
        Err(e) => {
            skip_or_fail("clang-hip", &format!("{clang} not runnable ({e})"));
            None
        }
    }
}
