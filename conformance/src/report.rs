//! Results: one [`Outcome`] per case x backend, gathered in a [`Report`], and the run's
//! [`Verdict`] (its [`ExitStatus`]).

use crate::baseline::BaselineReport;
use crate::compare::Comparison;
use crate::exit::ExitStatus;
use crate::provenance::{device_fingerprint, GoldenSet, GIT_COMMIT, GIT_DIRTY};
use moemla_core::{BackendInfo, DType, Op};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// The version of the JSON report's layout; bumped when a field changes meaning or goes
/// away (new fields may appear without a bump).
pub const SCHEMA_VERSION: u32 = 1;

/// The case ID of the failing cell a required backend that is unavailable (or skipped
/// cases) gets in the reports, so that they agree with the exit code.
pub const REQUIRED_CASE: &str = "(required backend)";

/// The result of one case on one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every output within tolerance.
    Pass,
    /// An output out of tolerance, a backend error or a backend panic (or, for the
    /// [`REQUIRED_CASE`] cell, a required backend that is unavailable or skipped cases).
    Fail,
    /// A malformed or unreadable case file (one whose loading panicked included), or a
    /// case whose inputs break the op's contract: the golden set is broken, not the
    /// backend.
    Error,
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
    /// The matrix cell: `PASS`, `FAIL`, `ERROR`, `unsup`, `n/a`, `mistr`.
    pub fn cell(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Error => "ERROR",
            Status::Unsupported => "unsup",
            Status::Unavailable => "n/a",
            Status::Mistrusted => "mistr",
        }
    }
}

/// One case run on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The case ID: its path relative to its golden root (`/`-separated), prefixed with
    /// `<root name>:` when the run has several roots.
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
    /// The exact worst error ratio over every comparison (see
    /// [`Comparison::worst_ratio`]; `null` in JSON if infinite, absent when nothing was
    /// compared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_ratio: Option<f64>,
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
    /// The device it ran on (`null` when unavailable).
    pub device: Option<DeviceSummary>,
}

/// The device of an available backend, as the backend reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    /// Vendor or software stack.
    pub vendor: String,
    /// Device name as the driver reports it.
    pub device: String,
    /// Accelerator, CPU or emulator.
    pub kind: String,
    /// What `--baseline` keys results by, beside the case and backend:
    /// `<backend>/<vendor>/<device>`.
    pub fingerprint: String,
    /// Device memory in bytes, where the backend knows it.
    pub memory_bytes: Option<u64>,
    /// The backend's notes: API, driver, runtime and SDK versions, contract gaps.
    pub notes: Vec<String>,
    /// [`crate::provenance::device_fingerprint`]: SHA-256 over name, vendor, device, kind,
    /// memory and notes.
    pub fingerprint_sha256: String,
    /// How the backend says it has been verified: its own claim, not something this run
    /// measured (the backend's `summary` in the JSON report is what was measured).
    pub claimed_verification: ClaimedVerification,
}

/// A backend's verification claim, as its [`BackendInfo::verification`] states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimedVerification {
    /// The kind of evidence claimed (`silicon`, `emulator`, ...).
    pub kind: String,
    /// Which device or tool, and when.
    pub detail: String,
}

impl DeviceSummary {
    /// The device summary of a backend's [`BackendInfo`].
    pub fn of(info: &BackendInfo) -> DeviceSummary {
        DeviceSummary {
            vendor: info.vendor.clone(),
            device: info.device.clone(),
            kind: format!("{:?}", info.device_kind).to_lowercase(),
            fingerprint: format!("{}/{}/{}", info.name, info.vendor, info.device),
            memory_bytes: info.memory_bytes,
            notes: info.notes.clone(),
            fingerprint_sha256: device_fingerprint(info),
            claimed_verification: ClaimedVerification {
                kind: serde_json::to_value(info.verification.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{:?}", info.verification.kind)),
                detail: info.verification.detail.clone(),
            },
        }
    }
}

/// Facts about the run itself for the reports (all empty by default).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunInfo {
    /// When the run started, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub timestamp: String,
    /// The machine's host name.
    pub hostname: String,
    /// The moemla version that ran.
    pub version: String,
    /// The git commit it was built from ([`crate::provenance::GIT_COMMIT`]; `unknown`
    /// when built without git).
    pub git_commit: String,
    /// Whether its working tree had uncommitted changes: `true`, `false` or `unknown`.
    pub git_dirty: String,
    /// The command line, one argument per entry.
    pub command_line: Vec<String>,
    /// The golden roots, as given.
    pub golden_roots: Vec<String>,
    /// `--filter` patterns.
    pub filters: Vec<String>,
    /// `--exclude` patterns.
    pub excludes: Vec<String>,
    /// `--shard i/n`, if any.
    pub shard: Option<String>,
    /// Required backends.
    pub required: Vec<String>,
    /// Required backends allowed to leave cases unsupported.
    pub allow_unsupported: Vec<String>,
    /// Wall time of the run in seconds.
    pub seconds: f64,
    /// The golden files run, with their SHA-256 and the set's
    /// ([`GoldenSet::of`]; empty unless the caller fills it in).
    pub golden: GoldenSet,
}

impl RunInfo {
    /// A run starting now on this machine: timestamp, host name, this crate's version and
    /// git commit, and the process's command line filled in.
    pub fn now() -> RunInfo {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        RunInfo {
            timestamp: utc_timestamp(secs),
            hostname: hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: GIT_COMMIT.to_string(),
            git_dirty: GIT_DIRTY.to_string(),
            command_line: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            ..RunInfo::default()
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (proleptic Gregorian, UTC).
pub fn utc_timestamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm), for dates from 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The host name: the kernel's, else `$HOSTNAME` / `$COMPUTERNAME`, else `unknown`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
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
    /// ERROR cells: malformed case files.
    pub errors: usize,
}

impl Counts {
    /// Skipped cells: unsupported plus unavailable.
    pub fn skipped(&self) -> usize {
        self.unsupported + self.unavailable
    }

    /// All cells.
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped() + self.mistrusted + self.errors
    }

    /// The summary line CI reads: `N passed, N failed, N skipped`, followed by
    /// `, N errors` and `, N mistrusted` when a cell was.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} passed, {} failed, {} skipped",
            self.passed,
            self.failed,
            self.skipped()
        );
        if self.errors > 0 {
            line += &format!(", {} errors", self.errors);
        }
        if self.mistrusted > 0 {
            line += &format!(", {} mistrusted", self.mistrusted);
        }
        line
    }

    fn add(&mut self, status: Status) {
        match status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Error => self.errors += 1,
            Status::Unsupported => self.unsupported += 1,
            Status::Unavailable => self.unavailable += 1,
            Status::Mistrusted => self.mistrusted += 1,
        }
    }
}

/// Whether a run succeeded, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// True iff no case failed or was malformed, and every required backend was available
    /// and skipped nothing it may not skip (mistrusted cells neither pass nor fail a run).
    pub ok: bool,
    /// The outcome: the exit status of the run.
    pub exit: ExitStatus,
    /// One line per reason the run failed.
    pub reasons: Vec<String>,
}

impl Verdict {
    /// A passing verdict.
    pub fn pass() -> Verdict {
        Verdict {
            ok: true,
            exit: ExitStatus::Pass,
            reasons: Vec::new(),
        }
    }

    /// Adds a reason the run failed, of outcome `exit` (the worst outcome wins).
    pub fn fail(&mut self, exit: ExitStatus, reason: String) {
        self.ok = false;
        self.exit = self.exit.max(exit);
        self.reasons.push(reason);
    }
}

/// The results of a run over one or more backends.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Facts about the run (empty unless the caller fills them in).
    pub run: RunInfo,
    /// The backends, in the order they were run.
    pub backends: Vec<BackendSummary>,
    /// One outcome per case x backend.
    pub results: Vec<Outcome>,
    /// The verdict, once [`Report::finish`] gave it.
    pub verdict: Option<Verdict>,
    /// The comparison with a baseline, if one was given.
    pub baseline: Option<BaselineReport>,
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
    ///
    /// Malformed case files ([`Status::Error`]) give [`ExitStatus::Goldens`], a required
    /// backend's problems [`ExitStatus::RequiredBackend`], failed cases on an available
    /// backend [`ExitStatus::Mismatch`].
    pub fn verdict_allowing(&self, required: &[String], allow_unsupported: &[String]) -> Verdict {
        let mut verdict = Verdict::pass();
        let malformed: BTreeSet<&str> = (self.results.iter())
            .filter(|o| o.status == Status::Error)
            .map(|o| o.case.as_str())
            .collect();
        if !malformed.is_empty() {
            verdict.fail(
                ExitStatus::Goldens,
                format!(
                    "{} malformed or unreadable case file(s): {}",
                    malformed.len(),
                    malformed.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        for b in &self.backends {
            let failed = (self.results.iter())
                .filter(|o| o.backend == b.name && o.status == Status::Fail)
                .filter(|o| o.case != REQUIRED_CASE)
                .count();
            if b.available && failed > 0 {
                let reason = format!("{failed} case(s) failed on backend `{}`", b.name);
                verdict.fail(ExitStatus::Mismatch, reason);
            }
        }
        for (_, reason) in self.required_problems(required, allow_unsupported) {
            verdict.fail(ExitStatus::RequiredBackend, reason);
        }
        verdict
    }

    /// Each required backend that was not run, is unavailable, or skipped cases it may not
    /// skip, with the reason.
    fn required_problems(
        &self,
        required: &[String],
        allow_unsupported: &[String],
    ) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for name in required {
            let reason = match self.backends.iter().find(|b| &b.name == name) {
                None => format!("required backend `{name}` was not run"),
                Some(b) if !b.available => {
                    format!("required backend `{name}` is unavailable: {}", b.detail)
                }
                Some(_) if allow_unsupported.contains(name) => continue,
                Some(_) => match self.counts(Some(name)).skipped() {
                    0 => continue,
                    skipped => format!(
                        "required backend `{name}` skipped {skipped} case(s) as unsupported"
                    ),
                },
            };
            problems.push((name.clone(), reason));
        }
        problems
    }

    /// Gives the run its verdict ([`Report::verdict_allowing`]) and makes the reports agree
    /// with it: each required backend that is unavailable, was not run or skipped cases it
    /// may not skip gets a failing [`REQUIRED_CASE`] cell with the reason (and a column,
    /// if it had none). Stores the verdict in the report and returns it.
    pub fn finish(&mut self, required: &[String], allow_unsupported: &[String]) -> Verdict {
        let verdict = self.verdict_allowing(required, allow_unsupported);
        for (name, reason) in self.required_problems(required, allow_unsupported) {
            if !self.backends.iter().any(|b| b.name == name) {
                self.backends.push(BackendSummary {
                    name: name.clone(),
                    available: false,
                    detail: "not run".to_string(),
                    device: None,
                });
            }
            self.results.push(Outcome {
                case: REQUIRED_CASE.to_string(),
                path: PathBuf::new(),
                op: None,
                dtype: None,
                backend: name,
                status: Status::Fail,
                max_abs: None,
                max_rel: None,
                worst_output: None,
                worst_index: None,
                worst_ratio: None,
                message: Some(reason),
                seconds: 0.0,
                comparisons: Vec::new(),
            });
        }
        self.verdict = Some(verdict.clone());
        verdict
    }

    /// The JSON report: `schema_version` ([`SCHEMA_VERSION`]), `outcome` and `exit_code`
    /// (from the stored verdict, else [`Report::verdict`] with nothing required),
    /// `reasons`, `run`, `summary`, `backends` (each with its `device` and own `summary`),
    /// `results` (one object per case x backend) and, with a baseline, `baseline`.
    /// Non-finite numbers are written as `null`.
    pub fn to_json(&self) -> String {
        /// Counts with `skipped` spelled out.
        #[derive(Serialize)]
        struct Summary {
            passed: usize,
            failed: usize,
            errors: usize,
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
                    errors: c.errors,
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
            schema_version: u32,
            outcome: &'static str,
            exit_code: u8,
            reasons: &'a [String],
            run: &'a RunInfo,
            summary: Summary,
            backends: Vec<Backend<'a>>,
            results: &'a [Outcome],
            #[serde(skip_serializing_if = "Option::is_none")]
            baseline: Option<&'a BaselineReport>,
        }
        let computed;
        let verdict = match &self.verdict {
            Some(v) => v,
            None => {
                computed = self.verdict(&[]);
                &computed
            }
        };
        let doc = Doc {
            schema_version: SCHEMA_VERSION,
            outcome: verdict.exit.name(),
            exit_code: verdict.exit.code(),
            reasons: &verdict.reasons,
            run: &self.run,
            summary: self.counts(None).into(),
            backends: (self.backends.iter())
                .map(|b| Backend {
                    backend: b,
                    summary: self.counts(Some(&b.name)).into(),
                })
                .collect(),
            results: &self.results,
            baseline: self.baseline.as_ref(),
        };
        serde_json::to_string_pretty(&doc).expect("a report always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::utc_timestamp;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century year divisible by 400), 12:34:56.
        assert_eq!(utc_timestamp(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(utc_timestamp(1_796_298_759), "2026-12-03T11:52:39Z");
    }
}
