//! # moemla-conformance
//!
//! The moemla conformance suite: golden cases (one `.safetensors` file each, format in
//! `docs/conformance.md`), run on any [`moemla_core::Backend`] and compared per the op
//! contract (`docs/ops.md`).
//!
//! A vendor runs the committed set on its own backend from its own CI:
//!
//! ```no_run
//! # fn demo(my_backend: &dyn moemla_core::Backend) {
//! use moemla_conformance::{golden, load_cases, run};
//! let cases = load_cases(&[golden::committed_dir()]);
//! let report = run(my_backend, &cases);
//! print!("{}", moemla_conformance::render(&report));
//! println!("{}", report.counts(None).line());
//! let verdict = report.verdict(&[my_backend.name().to_string()]);
//! assert!(verdict.ok, "{:?}", verdict.reasons);
//! # }
//! ```

pub mod baseline;
mod case;
pub mod compare;
mod exit;
mod file;
pub mod filter;
pub mod golden;
pub mod html;
mod junit;
mod matrix;
pub mod provenance;
mod report;
mod runner;
mod spec;
mod tolerance;
pub mod verify;

pub use case::{golden_root, load_case, load_cases, load_roots, Case, CaseError, CaseFile, Params};
pub use compare::{Comparison, Mismatch};
pub use exit::{ExitStatus, EXIT_CODES};
pub use file::MAX_CASE_BYTES;
pub use junit::to_junit;
pub use matrix::render;
pub use report::{
    utc_timestamp, BackendSummary, ClaimedVerification, Counts, DeviceSummary, Outcome, Report,
    RunInfo, Status, Verdict, REQUIRED_CASE, SCHEMA_VERSION,
};
pub use runner::{assert_committed_set_passes, run, run_unavailable};
pub use tolerance::Tolerance;
pub use verify::{verify, Discrepancy, Verified};
