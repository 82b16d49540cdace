//! The parity matrix as text: cases (grouped by op and dtype) x backends.

use crate::provenance::shell_line;
use crate::report::{Outcome, Report, Status, REQUIRED_CASE};
use moemla_core::{DType, Op};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::PathBuf;

/// A row: sorted by op (contract order), run dtype (F32, F16, BF16), then case name.
/// Malformed files (no op) come last, then the required backends' cells.
type RowKey = (Option<Op>, Option<DType>, String, PathBuf);

/// Renders the report: the backends, the matrix, then the failures (max abs error, max rel
/// error, worst element, message), the mistrusted cells and the reasons for skipped cells.
/// Does not include the summary line ([`crate::Counts::line`]).
pub fn render(report: &Report) -> String {
    let mut s = provenance(report);
    let names: Vec<&str> = report.backends.iter().map(|b| b.name.as_str()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    s += "backends:\n";
    for b in &report.backends {
        let state = if b.available {
            "available"
        } else {
            "unavailable"
        };
        let _ = writeln!(s, "  {:<width$}  {state}: {}", b.name, b.detail);
        if let Some(d) = &b.device {
            let c = report.counts(Some(&b.name));
            let _ = writeln!(
                s,
                "  {:<width$}  device sha256 {}; verification claimed: {} ({}); measured: \
                 {}/{} passed",
                "",
                d.fingerprint_sha256,
                d.claimed_verification.kind,
                d.claimed_verification.detail,
                c.passed,
                c.total()
            );
        }
    }

    let mut cells: BTreeMap<RowKey, BTreeMap<&str, &Outcome>> = BTreeMap::new();
    for o in &report.results {
        let key = (o.op, o.dtype, o.case.clone(), o.path.clone());
        cells.entry(key).or_default().insert(o.backend.as_str(), o);
    }
    let mut rows: Vec<(&RowKey, &BTreeMap<&str, &Outcome>)> = cells.iter().collect();
    rows.sort_by_key(|((op, dtype, name, _), _)| {
        let required = name == REQUIRED_CASE;
        (op.is_none(), required, *op, *dtype, name.clone())
    });

    let label = |name: &str| name.trim_end_matches(".safetensors").to_string();
    let first = rows
        .iter()
        .map(|((_, _, n, _), _)| label(n).len() + 2)
        .max()
        .unwrap_or(0);
    let first = first.max("passed".len());
    let _ = write!(s, "\n{:<first$}", "case");
    for n in &names {
        let _ = write!(s, "  {:<w$}", n, w = n.len().max(5));
    }
    s.truncate(s.trim_end().len());
    s += "\n";
    let mut group = None;
    for ((op, dtype, name, _), by_backend) in &rows {
        let required = name == REQUIRED_CASE;
        if group != Some((*op, *dtype, required)) {
            group = Some((*op, *dtype, required));
            match (op, dtype) {
                (Some(op), Some(dtype)) => {
                    let _ = writeln!(s, "{op} {dtype}");
                }
                _ if required => s += "required backends\n",
                _ => s += "malformed case files\n",
            }
        }
        let _ = write!(s, "{:<first$}", format!("  {}", label(name)));
        for n in &names {
            let cell = by_backend.get(n).map_or("-", |o| o.status.cell());
            let _ = write!(s, "  {:<w$}", cell, w = n.len().max(5));
        }
        s.truncate(s.trim_end().len());
        s += "\n";
    }
    // Footer: passed cells out of all cells, per backend.
    let _ = write!(s, "{:<first$}", "passed");
    for n in &names {
        let c = report.counts(Some(n));
        let total = c.total();
        let _ = write!(
            s,
            "  {:<w$}",
            format!("{}/{total}", c.passed),
            w = n.len().max(5)
        );
    }
    s.truncate(s.trim_end().len());
    s += "\n";
    failures(&mut s, report);
    mistrusted(&mut s, report);
    skipped(&mut s, report);
    s
}

/// The provenance header (nothing when the report has no run facts): moemla version and
/// commit, date, host, command line, and the golden set's hash.
fn provenance(report: &Report) -> String {
    let run = &report.run;
    if run.version.is_empty() {
        return String::new();
    }
    let mut s = String::from("provenance:\n");
    let _ = writeln!(
        s,
        "  moemla {} commit {} (dirty: {})",
        run.version, run.git_commit, run.git_dirty
    );
    let _ = writeln!(s, "  date {} host {}", run.timestamp, run.hostname);
    if !run.command_line.is_empty() {
        let _ = writeln!(s, "  command: {}", shell_line(&run.command_line));
    }
    if !run.golden.files.is_empty() {
        let _ = writeln!(
            s,
            "  golden set sha256 {} ({} files)",
            run.golden.set_sha256,
            run.golden.files.len()
        );
    }
    s
}

/// The mistrusted cells, each with why its case proves nothing.
fn mistrusted(s: &mut String, report: &Report) {
    let cells: Vec<&Outcome> = (report.results.iter())
        .filter(|o| o.status == Status::Mistrusted)
        .collect();
    if cells.is_empty() {
        return;
    }
    *s += "\nmistrusted (within tolerance, but proves nothing; neither pass nor fail):\n";
    for o in cells {
        let why = o.message.as_deref().unwrap_or("mistrusted");
        let _ = writeln!(s, "  [{}] {}: {why}", o.backend, o.case);
    }
}

/// One paragraph per failing or malformed cell.
fn failures(s: &mut String, report: &Report) {
    let failed: Vec<&Outcome> = (report.results.iter())
        .filter(|o| matches!(o.status, Status::Fail | Status::Error))
        .collect();
    if failed.is_empty() {
        return;
    }
    *s += "\nfailures:\n";
    for o in failed {
        let _ = writeln!(s, "  [{}] {}", o.backend, o.case);
        if o.max_abs.is_some() || o.worst_index.is_some() {
            let _ = writeln!(
                s,
                "      max abs {}, max rel {}, worst element {}{}",
                num(o.max_abs),
                num(o.max_rel),
                o.worst_output.as_deref().unwrap_or("?"),
                o.worst_index
                    .as_ref()
                    .map_or(String::new(), |i| format!(" {i:?}")),
            );
        }
        if let Some(m) = &o.message {
            let _ = writeln!(s, "      {m}");
        }
    }
}

/// Why cells were skipped: each distinct reason once per backend, with a count.
fn skipped(s: &mut String, report: &Report) {
    let mut reasons: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut unavailable = BTreeSet::new();
    for o in &report.results {
        match o.status {
            Status::Unsupported => {
                let why = o.message.as_deref().unwrap_or("unsupported");
                *reasons.entry((o.backend.as_str(), why)).or_default() += 1;
            }
            Status::Unavailable => {
                unavailable.insert(o.backend.as_str());
            }
            _ => {}
        }
    }
    if reasons.is_empty() && unavailable.is_empty() {
        return;
    }
    *s += "\nskipped:\n";
    for ((backend, why), n) in reasons {
        let _ = writeln!(s, "  [{backend}] {n} case(s) unsupported: {why}");
    }
    for backend in unavailable {
        let n = report.counts(Some(backend)).unavailable;
        let _ = writeln!(s, "  [{backend}] {n} case(s) not run: backend unavailable");
    }
}

/// A number for the matrix (`-` when absent, `inf` when not finite).
fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if !v.is_finite() => "inf".into(),
        Some(v) => format!("{v:.3e}"),
    }
}
