//! The CPU reference backend passes every committed golden case, through the library API.

use moemla_conformance::{golden, load_cases, render, run, Status};
use moemla_core::{DType, Op};
use moemla_cpu::CpuBackend;
use std::collections::BTreeSet;

#[test]
fn cpu_passes_every_committed_case() {
    let dir = golden::committed_dir();
    let cases = load_cases(&[&dir]);
    // A missing or empty golden set is an Err entry, so this cannot pass vacuously.
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
    // The committed (v1) set covers every v1 op in every float dtype.
    let covered: BTreeSet<(Op, DType)> = report
        .results
        .iter()
        .filter(|o| o.status == Status::Pass)
        .map(|o| (o.op.unwrap(), o.dtype.unwrap()))
        .collect();
    for op in Op::V1 {
        for dtype in DType::FLOATS {
            assert!(
                covered.contains(&(op, dtype)),
                "no {op} {dtype} case in {dir:?}"
            );
        }
    }
    assert!(report.verdict(&["cpu".to_string()]).ok);
}

#[test]
fn the_vendor_helper_accepts_the_cpu_backend() {
    moemla_conformance::assert_committed_set_passes(&CpuBackend::new(), true);
}
