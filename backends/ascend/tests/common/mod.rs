//! Shared test setup: the backend on the CANN C-API emulator, loaded through the normal
//! loader (`MOEMLA_ASCEND_LIB`); with `MOEMLA_ASCEND_TEST_REAL=1`, on the installed CANN.
//!
//! `moemla-cann-emulator` is a dev-dependency built as cdylib + rlib, so `cargo test`
//! has built `libmoemla_cann_emulator.so` into the target directory (`deps/`) before this
//! runs; we find it next to the test executable unless `MOEMLA_ASCEND_LIB` is already set.

#![allow(dead_code)]

use moemla_ascend::AscendBackend;
use std::path::PathBuf;
use std::sync::Once;

const SO: &str = "libmoemla_cann_emulator.so";

/// Where the library the backend loads is: `MOEMLA_ASCEND_LIB`, else in
/// `MOEMLA_ASCEND_LIB_DIR` (CANN's `libascendcl.so` or the emulator, as the loader picks),
/// else the emulator next to the test executable.
pub fn emulator_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MOEMLA_ASCEND_LIB") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("MOEMLA_ASCEND_LIB_DIR").map(PathBuf::from) {
        let cann = dir.join("libascendcl.so");
        return if cann.exists() { cann } else { dir.join(SO) };
    }
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps directory").to_path_buf();
    let candidates = [
        deps.join(SO),
        deps.parent().map(|d| d.join(SO)).unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!("{SO} not found in {candidates:?}; run `cargo build -p moemla-cann-emulator`")
        })
}

/// Points the loader at the emulator (`MOEMLA_ASCEND_LIB`) unless `MOEMLA_ASCEND_LIB` or
/// `MOEMLA_ASCEND_LIB_DIR` already says where CANN is, or `MOEMLA_ASCEND_TEST_REAL=1`
/// asks for the installed CANN (how the same tests verify a real Ascend device).
pub fn use_emulator_unless_configured() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        let real = std::env::var_os("MOEMLA_ASCEND_TEST_REAL").is_some_and(|v| v == "1");
        let configured = std::env::var_os("MOEMLA_ASCEND_LIB_DIR").is_some();
        if real || configured {
            return;
        }
        let path = emulator_path();
        // Set once, before any backend is created; tests only read it afterwards.
        std::env::set_var("MOEMLA_ASCEND_LIB", path);
    });
}

/// The Ascend backend on the emulator, or where the environment points (see
/// [`use_emulator_unless_configured`]).
pub fn backend() -> AscendBackend {
    use_emulator_unless_configured();
    AscendBackend::new()
        .expect("Ascend backend (CANN emulator, or CANN with MOEMLA_ASCEND_TEST_REAL=1)")
}

/// Deterministic pseudo-random values in [lo, hi) (xorshift), for reproducible inputs.
pub fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64) as f32
        })
        .collect()
}

/// Runs the committed golden-v2 cases of `op` in `dtype` on a fresh backend, asserts that
/// each passes, and returns (cases run, the backend's path counters).
pub fn golden_v2(op: &str, dtype: &str) -> (u64, moemla_ascend::Paths) {
    let be = backend();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conformance/golden-v2")
        .join(op)
        .join(dtype);
    let cases = moemla_conformance::load_cases(&[dir]);
    assert!(!cases.is_empty(), "no golden-v2 {op} cases for {dtype}");
    // The emulator's CANN version, when a test picked an older one.
    let cann = std::env::var("MOEMLA_CANN_EMULATOR_CANN").unwrap_or_default();
    let report = moemla_conformance::run(&be, &cases);
    for r in &report.results {
        assert_eq!(
            r.status,
            moemla_conformance::Status::Pass,
            "{} on ascend (emulated CANN {cann:?}): {:?}",
            r.case,
            r
        );
    }
    (cases.len() as u64, be.paths())
}
