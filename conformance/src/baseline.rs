//! `--baseline`: compare a run with the JSON reports of an earlier one, per (case ID,
//! backend, device fingerprint), and find what got worse.

use crate::report::{Outcome, Report, Status, SCHEMA_VERSION};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The default `--max-ratio-growth`: a worst error ratio may double before it counts as a
/// regression.
pub const DEFAULT_MAX_RATIO_GROWTH: f64 = 2.0;

/// Worst ratios below this (1% of the tolerance) are treated as this value when growth is
/// measured, so that an exact match (ratio 0) turning into a tiny rounding difference is
/// not an infinite growth.
pub const RATIO_FLOOR: f64 = 0.01;

/// What got worse in one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegressionKind {
    /// Passed (or was mistrusted) in the baseline, fails or errors now.
    NewFailure,
    /// Passed (or was mistrusted) in the baseline, skipped now.
    NewSkip,
    /// Passes in both, but the worst error ratio grew beyond the allowed factor.
    RatioGrowth,
}

impl RegressionKind {
    /// The label in the summary table.
    pub fn label(self) -> &'static str {
        match self {
            RegressionKind::NewFailure => "new failure",
            RegressionKind::NewSkip => "new skip",
            RegressionKind::RatioGrowth => "ratio growth",
        }
    }
}

/// One cell that got worse.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Regression {
    /// What got worse.
    pub kind: RegressionKind,
    /// The case ID.
    pub case: String,
    /// The backend.
    pub backend: String,
    /// The device fingerprint (`null` for an unavailable backend).
    pub device: Option<String>,
    /// The baseline's status.
    pub old_status: String,
    /// This run's status.
    pub new_status: Status,
    /// The baseline's worst ratio (`null` when none or infinite).
    pub old_ratio: Option<f64>,
    /// This run's worst ratio.
    pub new_ratio: Option<f64>,
}

/// The comparison of a run with its baseline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BaselineReport {
    /// The baseline files, as given.
    pub files: Vec<String>,
    /// The allowed worst-ratio growth factor.
    pub max_ratio_growth: f64,
    /// Cells found in both.
    pub compared: usize,
    /// Cells of this run the baseline does not have (new cases, another device).
    pub not_in_baseline: usize,
    /// Cells that got worse.
    pub regressions: Vec<Regression>,
}

/// A baseline cell: status and worst ratio (`None` when absent or infinite).
type OldCell = (String, Option<f64>);

/// The baseline's cells, keyed by (case, backend, fingerprint or `None` when the backend
/// was unavailable).
type OldCells = BTreeMap<(String, String, Option<String>), OldCell>;

/// Reads the cells of one JSON report (`text`, from `file`) into `cells`.
fn read_report(file: &str, text: &str, cells: &mut OldCells) -> Result<(), String> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| format!("baseline {file} is not a JSON report: {e}"))?;
    match doc.get("schema_version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "baseline {file} has schema_version {v}; this moemla reads {SCHEMA_VERSION}"
            ))
        }
        None => {
            return Err(format!(
                "baseline {file} has no schema_version: not a moemla conformance JSON report \
                 (or one older than schema version 1)"
            ))
        }
    }
    let mut devices: BTreeMap<String, Option<String>> = BTreeMap::new();
    for b in doc["backends"].as_array().into_iter().flatten() {
        let name = b["name"].as_str().unwrap_or_default().to_string();
        let fingerprint = b["device"]["fingerprint"].as_str().map(str::to_string);
        devices.insert(name, fingerprint);
    }
    let results = (doc["results"].as_array())
        .ok_or_else(|| format!("baseline {file} has no `results` array"))?;
    for r in results {
        let (Some(case), Some(backend), Some(status)) = (
            r["case"].as_str(),
            r["backend"].as_str(),
            r["status"].as_str(),
        ) else {
            return Err(format!(
                "baseline {file}: a result without case, backend or status: {r}"
            ));
        };
        let device = devices.get(backend).cloned().flatten();
        let key = (case.to_string(), backend.to_string(), device);
        cells.insert(key, (status.to_string(), r["worst_ratio"].as_f64()));
    }
    Ok(())
}

/// Whether a baseline status counts as a success (pass or mistrusted).
fn was_good(status: &str) -> bool {
    status == "pass" || status == "mistrusted"
}

/// Compares `report` with the baseline reports `files` (path and text each; the reports
/// of several shards may be given together). Cells are matched by (case, backend, device
/// fingerprint); an unavailable backend's cells match the baseline's cells of that
/// backend on any device. A regression is a cell that passed (or was mistrusted) and now
/// fails, errors or is skipped, or that passes in both with a worst ratio grown more than
/// `max_ratio_growth` times (ratios below [`RATIO_FLOOR`] counted as it).
///
/// A baseline that cannot be read as a report is an `Err` naming the file.
pub fn compare(
    report: &Report,
    files: &[(String, String)],
    max_ratio_growth: f64,
) -> Result<BaselineReport, String> {
    let mut old = OldCells::new();
    for (file, text) in files {
        read_report(file, text, &mut old)?;
    }
    let fingerprint = |backend: &str| {
        (report.backends.iter())
            .find(|b| b.name == backend)
            .and_then(|b| b.device.as_ref())
            .map(|d| d.fingerprint.clone())
    };
    let mut out = BaselineReport {
        files: files.iter().map(|(f, _)| f.clone()).collect(),
        max_ratio_growth,
        compared: 0,
        not_in_baseline: 0,
        regressions: Vec::new(),
    };
    for o in &report.results {
        let device = fingerprint(&o.backend);
        let found = match &device {
            Some(_) => old.get(&(o.case.clone(), o.backend.clone(), device.clone())),
            // Unavailable now: whatever device the baseline had.
            None => (old.iter())
                .find(|((c, b, _), _)| *c == o.case && *b == o.backend)
                .map(|(_, cell)| cell),
        };
        let Some((old_status, old_ratio)) = found else {
            out.not_in_baseline += 1;
            continue;
        };
        out.compared += 1;
        if let Some(kind) = regression(o, old_status, *old_ratio, max_ratio_growth) {
            out.regressions.push(Regression {
                kind,
                case: o.case.clone(),
                backend: o.backend.clone(),
                device,
                old_status: old_status.clone(),
                new_status: o.status,
                old_ratio: *old_ratio,
                new_ratio: o.worst_ratio.filter(|r| r.is_finite()),
            });
        }
    }
    Ok(out)
}

/// How cell `o` got worse than its baseline cell, if it did.
fn regression(
    o: &Outcome,
    old_status: &str,
    old_ratio: Option<f64>,
    max_growth: f64,
) -> Option<RegressionKind> {
    if !was_good(old_status) {
        return None;
    }
    match o.status {
        Status::Fail | Status::Error => Some(RegressionKind::NewFailure),
        Status::Unsupported | Status::Unavailable => Some(RegressionKind::NewSkip),
        Status::Pass | Status::Mistrusted => {
            let new = o.worst_ratio?;
            let old = old_ratio.unwrap_or(0.0).max(RATIO_FLOOR);
            (new > old * max_growth).then_some(RegressionKind::RatioGrowth)
        }
    }
}

impl BaselineReport {
    /// The summary a CI log shows: one line of counts, then a table of the regressions.
    pub fn table(&self) -> String {
        let mut s = format!(
            "baseline {} (max ratio growth {}x): {} cells compared, {} not in the baseline, \
             {} regression(s)\n",
            self.files.join(", "),
            self.max_ratio_growth,
            self.compared,
            self.not_in_baseline,
            self.regressions.len()
        );
        if self.regressions.is_empty() {
            return s;
        }
        let rows: Vec<[String; 5]> = (self.regressions.iter())
            .map(|r| {
                [
                    r.kind.label().to_string(),
                    r.backend.clone(),
                    r.case.clone(),
                    format!("{} {}", r.old_status, ratio(r.old_ratio)),
                    format!("{} {}", r.new_status.cell(), ratio(r.new_ratio)),
                ]
            })
            .collect();
        let header = ["regression", "backend", "case", "baseline", "now"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(header.map(str::to_string)).chain(rows) {
            s += " ";
            for (w, cell) in widths.iter().zip(&row) {
                let _ = write!(s, " {cell:<w$}");
            }
            s.truncate(s.trim_end().len());
            s += "\n";
        }
        s
    }
}

/// A worst ratio for the table (`-` when absent).
fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.3}"))
}
