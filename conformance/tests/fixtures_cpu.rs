//! The fixture cases (expected values computed in f64 in `common`) pass on the CPU backend:
//! the baseline that makes the injected-fault tests meaningful.

mod common;

use common::{fixture_set, TempDir, FIXTURE_CASES};
use moemla_conformance::{load_cases, render, run, Status};
use moemla_cpu::CpuBackend;

#[test]
fn cpu_passes_the_fixture_cases() {
    let dir = TempDir::new("fixtures");
    fixture_set(&dir.0);
    let cases = load_cases(&[&dir.0]);
    assert_eq!(cases.len(), FIXTURE_CASES);
    let report = run(&CpuBackend::new(), &cases);
    assert!(
        report.results.iter().all(|o| o.status == Status::Pass),
        "\n{}",
        render(&report)
    );
    // Every comparison really compared something, with a finite error.
    for o in &report.results {
        assert!(o.comparisons.iter().all(|c| c.checked > 0), "{}", o.case);
        assert!(o.max_abs.unwrap().is_finite(), "{}", o.case);
        assert!(o.worst_index.is_some(), "{}", o.case);
    }
}
