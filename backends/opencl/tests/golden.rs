//! Every committed golden case (conformance/golden) passes on the OpenCL device, all ops
//! and all three run dtypes. This is the evidence behind `info().verification` on PoCL.

mod common;

use moemla_conformance::{golden, load_cases, render, run};

#[test]
fn every_committed_golden_case_passes() {
    let Some(be) = common::backend() else { return };
    let cases = load_cases(&[golden::committed_dir()]);
    // A missing or empty golden set is an Err entry, so this cannot pass vacuously.
    let report = run(&*be, &cases);
    println!("{}", render(&report));
    let counts = report.counts(None);
    assert_eq!(
        (counts.passed, counts.failed, counts.skipped()),
        (cases.len(), 0, 0),
        "\n{}",
        render(&report)
    );
    assert!(report.verdict(&[moemla_opencl::NAME.to_string()]).ok);
}
