//! Results: one [`Outcome`] per case x backend, gathered in a [`Report`].

use crate::compare::Comparison;
use moemla_core::{DType, Op};
use serde::Serialize;
use std::path::PathBuf;

/// The result of one case on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every output within tolerance.
    Pass,
    /// An output out of tolerance, a backend error, a backend panic, or a malformed case
    /// file (one whose loading panicked included).
    Fail,
    /// The backend does not implement this (op, dtype) or these parameters (skipped).
    Unsupported,
    /// The backend could not be opened on this machine (skipped).
    Unavailable,
    /// Within tolerance, but the case proves nothing: every expected float output is all
    /// zeros, so a backend that computes nothing would pass it (benchdnn's "mistrusted").
    /// Neither a pass nor a failure.
    Mistrusted,
}

impl Status {
    /// The matrix cell: `PASS`, `FAIL`, `unsup`, `n/a`, `mistr`.
    pub fn cell(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Unsupported => "unsup",
            Status::Unavailable => "n/a",
            Status::Mistrusted => "mistr",
        }
    }
}

/// One case run on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The case's path relative to its golden directory.
    pub case: String,
    /// The case file.
    pub path: PathBuf,
    /// The op (`None` when the file is too malformed to say).
    pub op: Option<Op>,
    /// The run dtype (`None` when the file is too malformed to say).
    pub dtype: Option<DType>,
    /// The backend's name.
    pub backend: String,
    /// The verdict.
    pub status: Status,
    /// Largest absolute error over the float outputs (`null` in JSON if infinite or NaN).
    pub max_abs: Option<f64>,
    /// Largest relative error over the float outputs.
    pub max_rel: Option<f64>,
    /// The output holding the worst element (the failing one, if any).
    pub worst_output: Option<String>,
    /// The worst element's index in that output.
    pub worst_index: Option<Vec<usize>>,
    /// Why it failed or was skipped (also the first/worst failing elements).
    pub message: Option<String>,
    /// Wall time of upload, op, download and comparison, in seconds.
    pub seconds: f64,
    /// Per-output details.
    pub comparisons: Vec<Comparison>,
}

/// A backend that took part in a run (a column of the matrix).
#[derive(Clone, Debug, Serialize)]
pub struct BackendSummary {
    /// Backend name.
    pub name: String,
    /// Whether it opened.
    pub available: bool,
    /// Device and verification status, or why it is unavailable.
    pub detail: String,
}

/// Cell counts of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// PASS cells.
    pub passed: usize,
    /// FAIL cells.
    pub failed: usize,
    /// Unsupported cells.
    pub unsupported: usize,
    /// Unavailable cells.
    pub unavailable: usize,
    /// Mistrusted cells (neither passed nor failed, nor skipped by the backend).
    pub mistrusted: usize,
}

impl Counts {
    /// Skipped cells: unsupported plus unavailable.
    pub fn skipped(&self) -> usize {
        self.unsupported + self.unavailable
    }

    /// The summary line CI reads: `N passed, N failed, N skipped`, followed by
    /// `, N mistrusted` when a cell was.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} passed, {} failed, {} skipped",
            self.passed,
            self.failed,
            self.skipped()
        );
        if self.mistrusted > 0 {
            line += &format!(", {} mistrusted", self.mistrusted);
        }
        line
    }

    fn add(&mut self, status: Status) {
        match status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Unsupported => self.unsupported += 1,
            Status::Unavailable => self.unavailable += 1,
            Status::Mistrusted => self.mistrusted += 1,
        }
    }
}

/// Whether a run succeeded, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// True iff no case failed on an available backend and every required backend was
    /// available and skipped nothing (mistrusted cells neither pass nor fail a run).
    pub ok: bool,
    /// One line per reason the run failed.
    pub reasons: Vec<String>,
}

/// The results of a run over one or more backends.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The backends, in the order they were run.
    pub backends: Vec<BackendSummary>,
    /// One outcome per case x backend.
    pub results: Vec<Outcome>,
}

impl Report {
    /// Appends another report's backends and results.
    pub fn extend(&mut self, other: Report) {
        self.backends.extend(other.backends);
        self.results.extend(other.results);
    }

    /// Counts over all cells, or over one backend's.
    pub fn counts(&self, backend: Option<&str>) -> Counts {
        let mut counts = Counts::default();
        self.results
            .iter()
            .filter(|o| backend.is_none_or(|b| o.backend == b))
            .for_each(|o| counts.add(o.status));
        counts
    }

    /// The run's verdict given the backends that must be available and skip nothing.
    pub fn verdict(&self, required: &[String]) -> Verdict {
        self.verdict_allowing(required, &[])
    }

    /// The run's verdict given the backends that must be available, where the backends in
    /// `allow_unsupported` may leave the cases they declare unsupported (a vendor op that
    /// cannot do some parameters, reported in the matrix with the backend's reason) while
    /// every other case must pass. Every other required backend must skip nothing.
    pub fn verdict_allowing(&self, required: &[String], allow_unsupported: &[String]) -> Verdict {
        let mut reasons = Vec::new();
        for b in &self.backends {
            let failed = self.counts(Some(&b.name)).failed;
            if b.available && failed > 0 {
                reasons.push(format!("{failed} case(s) failed on backend `{}`", b.name));
            }
        }
        for name in required {
            match self.backends.iter().find(|b| &b.name == name) {
                None => reasons.push(format!("required backend `{name}` was not run")),
                Some(b) if !b.available => reasons.push(format!(
                    "required backend `{name}` is unavailable: {}",
                    b.detail
                )),
                Some(_) if allow_unsupported.contains(name) => {}
                Some(_) => {
                    let skipped = self.counts(Some(name)).skipped();
                    if skipped > 0 {
                        reasons.push(format!(
                            "required backend `{name}` skipped {skipped} case(s) as unsupported"
                        ));
                    }
                }
            }
        }
        Verdict {
            ok: reasons.is_empty(),
            reasons,
        }
    }

    /// The JSON report: `{"summary": {...}, "backends": [...], "results": [...]}`, one
    /// result object per case x backend; each backend carries its own `summary`.
    /// Non-finite numbers are written as `null`.
    pub fn to_json(&self) -> String {
        /// Counts with `skipped` spelled out.
        #[derive(Serialize)]
        struct Summary {
            passed: usize,
            failed: usize,
            skipped: usize,
            unsupported: usize,
            unavailable: usize,
            mistrusted: usize,
        }
        impl From<Counts> for Summary {
            fn from(c: Counts) -> Summary {
                Summary {
                    passed: c.passed,
                    failed: c.failed,
                    skipped: c.skipped(),
                    unsupported: c.unsupported,
                    unavailable: c.unavailable,
                    mistrusted: c.mistrusted,
                }
            }
        }
        /// A backend with its own counts.
        #[derive(Serialize)]
        struct Backend<'a> {
            #[serde(flatten)]
            backend: &'a BackendSummary,
            summary: Summary,
        }
        #[derive(Serialize)]
        struct Doc<'a> {
            summary: Summary,
            backends: Vec<Backend<'a>>,
            results: &'a [Outcome],
        }
        let doc = Doc {
            summary: self.counts(None).into(),
            backends: (self.backends.iter())
                .map(|b| Backend {
                    backend: b,
                    summary: self.counts(Some(&b.name)).into(),
                })
                .collect(),
            results: &self.results,
        };
        serde_json::to_string_pretty(&doc).expect("a report always serializes")
    }
}
