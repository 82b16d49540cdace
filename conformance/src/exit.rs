//! How a conformance run ended, as one process exit code per kind of outcome, so a CI job
//! can tell a numeric mismatch from a broken runner or broken golden files.

use serde::Serialize;

/// The outcome of a run. When several apply, the one listed first in [`EXIT_CODES`]'s
/// precedence line wins (usage, report, goldens, required backend, mismatch, regression).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// 0: every case that ran passed (skips of backends that are not required allowed).
    Pass,
    /// 1: a case failed on an available backend (out of tolerance, a backend error or
    /// panic).
    Mismatch,
    /// 2: a usage error: an unknown backend name, a bad flag or value, an unreadable
    /// baseline.
    Usage,
    /// 3: a required backend is unavailable, or skipped cases it was not allowed to skip.
    RequiredBackend,
    /// 4: malformed or unreadable golden files, a missing golden directory, or a selection
    /// (filters, shard) with no case in it.
    Goldens,
    /// 5: a report (`--json`, `--junit`, `--html`) could not be written.
    ReportWrite,
    /// 6: `--baseline` found a new failure, a new skip or a worst-ratio growth beyond
    /// `--max-ratio-growth` (and nothing worse happened).
    Regression,
    /// 7: `--verify`: the report is malformed, of an unknown schema version, inconsistent
    /// (counts, statuses, ratios, outcome), or its golden files differ from the local set.
    Verify,
}

/// The exit codes in words, for `--help`: one line each, then the precedence.
pub const EXIT_CODES: &str = "Exit codes:
  0  every case that ran passed
  1  numeric mismatch: a case failed on an available backend
  2  usage error: unknown backend name, bad flag or value, unreadable baseline
  3  a required backend is unavailable, or skipped cases it may not skip
  4  malformed or unreadable goldens, missing golden directory, empty selection
  5  a report (--json, --junit, --html) could not be written
  6  baseline regression: new failure, new skip or worst-ratio growth (--baseline)
  7  --verify: the report does not check out (hashes, counts, statuses, schema)
When several apply, the first of 2, 5, 4, 3, 1, 6, 7 wins.";

impl ExitStatus {
    /// Every status, in code order.
    pub const ALL: [ExitStatus; 8] = [
        ExitStatus::Pass,
        ExitStatus::Mismatch,
        ExitStatus::Usage,
        ExitStatus::RequiredBackend,
        ExitStatus::Goldens,
        ExitStatus::ReportWrite,
        ExitStatus::Regression,
        ExitStatus::Verify,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Pass => 0,
            ExitStatus::Mismatch => 1,
            ExitStatus::Usage => 2,
            ExitStatus::RequiredBackend => 3,
            ExitStatus::Goldens => 4,
            ExitStatus::ReportWrite => 5,
            ExitStatus::Regression => 6,
            ExitStatus::Verify => 7,
        }
    }

    /// The name used in the JSON report's `outcome` (`pass`, `mismatch`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ExitStatus::Pass => "pass",
            ExitStatus::Mismatch => "mismatch",
            ExitStatus::Usage => "usage",
            ExitStatus::RequiredBackend => "required_backend",
            ExitStatus::Goldens => "goldens",
            ExitStatus::ReportWrite => "report_write",
            ExitStatus::Regression => "regression",
            ExitStatus::Verify => "verify",
        }
    }

    /// Precedence: higher wins when several outcomes apply.
    fn rank(self) -> u8 {
        match self {
            ExitStatus::Pass => 0,
            ExitStatus::Verify => 1,
            ExitStatus::Regression => 2,
            ExitStatus::Mismatch => 3,
            ExitStatus::RequiredBackend => 4,
            ExitStatus::Goldens => 5,
            ExitStatus::ReportWrite => 6,
            ExitStatus::Usage => 7,
        }
    }

    /// The one of `self` and `other` that wins by precedence.
    pub fn max(self, other: ExitStatus) -> ExitStatus {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ExitStatus, EXIT_CODES};

    #[test]
    fn codes_are_distinct_and_documented_in_order() {
        let codes: Vec<u8> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7]);
        for s in ExitStatus::ALL {
            assert!(EXIT_CODES.contains(&format!("\n  {}  ", s.code())), "{s:?}");
        }
        // The precedence line agrees with `max`.
        let order = [2, 5, 4, 3, 1, 6, 7, 0];
        let by_code = |c: u8| ExitStatus::ALL[c as usize];
        for (i, &hi) in order.iter().enumerate() {
            for &lo in &order[i..] {
                assert_eq!(by_code(hi).max(by_code(lo)), by_code(hi));
                assert_eq!(by_code(lo).max(by_code(hi)), by_code(hi));
            }
        }
    }
}
