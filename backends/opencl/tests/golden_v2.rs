//! Every committed contract-v2 golden case (conformance/golden-v2: V4 routing, FP8 experts,
//! the FP8 latent cache, mla_kv_quantize, sparse attention, the indexer) passes on the
//! OpenCL device, all ops and run dtypes; none is skipped as unsupported.

mod common;

use moemla_conformance::{golden, load_cases, render, run};

#[test]
fn every_committed_v2_golden_case_passes() {
    let Some(be) = common::backend() else { return };
    let cases = load_cases(&[golden::committed_v2_dir()]);
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
