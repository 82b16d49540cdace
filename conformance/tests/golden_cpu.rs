//! The CPU reference backend passes every committed golden case, through the library API.

use moemla_conformance::{golden, load_cases, render, run, Status};
use moemla_core::{DType, Op};
use moemla_cpu::CpuBackend;
use std::collections::BTreeSet;
use std::path::Path;

/// Runs the CPU backend over every case in `dir`, asserts that each one loads and passes
/// (a missing or empty set is an `Err` entry, so this cannot pass vacuously) and returns the
/// (op, run dtype) pairs the set covers.
fn cpu_passes_every_case_in(dir: &Path) -> BTreeSet<(Op, DType)> {
    let cases = load_cases(&[dir]);
    for file in &cases {
        if let Err(err) = file {
            panic!("{err}");
        }
    }
    let report = run(&CpuBackend::new(), &cases);
    let counts = report.counts(None);
    assert_eq!(
        (counts.passed, counts.failed, counts.skipped()),
        (cases.len(), 0, 0),
        "\n{}",
        render(&report)
    );
    assert!(report.verdict(&["cpu".to_string()]).ok);
    report
        .results
        .iter()
        .filter(|o| o.status == Status::Pass)
        .map(|o| (o.op.unwrap(), o.dtype.unwrap()))
        .collect()
}

#[test]
fn cpu_passes_every_committed_case() {
    let dir = golden::committed_dir();
    let covered = cpu_passes_every_case_in(&dir);
    // The committed (v1) set covers every v1 op in every float dtype.
    for op in Op::V1 {
        for dtype in DType::FLOATS {
            assert!(
                covered.contains(&(op, dtype)),
                "no {op} {dtype} case in {dir:?}"
            );
        }
    }
}

#[test]
fn the_vendor_helper_accepts_the_cpu_backend() {
    moemla_conformance::assert_committed_set_passes(&CpuBackend::new(), true);
}

#[test]
fn cpu_passes_every_committed_v2_case() {
    let dir = golden::committed_v2_dir();
    let covered = cpu_passes_every_case_in(&dir);
    // The v2 set covers every op in every float dtype, except FP8-cache-only cases that
    // need 16-bit queries (mla_decode v2).
    for op in Op::ALL {
        for dtype in DType::FLOATS {
            let fp8_only = op == Op::MlaDecode && dtype == DType::F32;
            assert_eq!(
                covered.contains(&(op, dtype)),
                !fp8_only,
                "{op} {dtype} in {dir:?}"
            );
        }
    }
}

#[test]
fn one_changed_byte_of_an_fp8_row_fails_the_case_and_is_named() {
    let path = golden::committed_v2_dir().join("mla_kv_quantize/bf16/n40_corners.safetensors");
    let mut case = moemla_conformance::load_case(&path, "n40_corners").unwrap();
    let expected = case.expected.remove("kv_fp8").unwrap();
    let (shape, dtype) = (expected.shape().clone(), expected.dtype());
    let mut bytes = expected.into_bytes();
    // Row 3, byte 514: inside the second f32 scale.
    bytes[3 * 656 + 514] ^= 0x01;
    let changed = moemla_core::HostTensor::from_bytes(shape, dtype, bytes).unwrap();
    case.expected.insert("kv_fp8".into(), changed);
    let report = run(&CpuBackend::new(), &[Ok(case)]);
    let o = &report.results[0];
    assert_eq!(o.status, Status::Fail);
    let message = o.message.as_deref().unwrap();
    assert!(
        message.contains("`kv_fp8`: 1 of 27552 bytes differ")
            && message.contains("first differing byte: 2482 (row 3, byte 514 of the row)"),
        "{message}"
    );
}
