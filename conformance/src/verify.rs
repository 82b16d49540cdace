//! Checking a published JSON report (`moemla conformance --verify REPORT.json`): its
//! schema version is known, its golden files are the local golden set's (same case IDs,
//! same SHA-256, same set hash), and its counts, statuses, ratios and outcome agree with
//! its cells. The first discrepancy is named by its field.

use crate::case::CaseFile;
use crate::exit::ExitStatus;
use crate::provenance::{GoldenFile, GoldenSet};
use crate::report::{REQUIRED_CASE, SCHEMA_VERSION};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The first thing in a report that does not check out: the field (a path into the JSON
/// document, `results[3].status`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discrepancy {
    /// Where: `schema_version`, `run.golden.files[2]`, `summary.passed`, ...
    pub field: String,
    /// What is wrong, naming the case and backend where there is one.
    pub message: String,
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What a report that verified holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Its schema version.
    pub schema_version: u64,
    /// Its cells (case x backend results).
    pub cells: usize,
    /// Its golden files, all found locally with the same hash.
    pub golden_files: usize,
    /// The golden set's SHA-256.
    pub set_sha256: String,
    /// Its outcome (`pass`, `mismatch`, ...).
    pub outcome: String,
}

/// A discrepancy at `field`.
fn bad<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, Discrepancy> {
    Err(Discrepancy {
        field: field.into(),
        message: message.into(),
    })
}

/// `v[key]` as an object, string, array, ... or a discrepancy naming `field`.
fn get<'a>(v: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a Value, Discrepancy> {
    v.get(key)
        .map_or_else(|| bad(format!("{field}{key}"), "missing"), Ok)
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Discrepancy> {
    v.as_object()
        .map_or_else(|| bad(field, "expected an object"), Ok)
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, Discrepancy> {
    v.as_str()
        .map_or_else(|| bad(field, "expected a string"), Ok)
}

fn array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, Discrepancy> {
    v.as_array()
        .map_or_else(|| bad(field, "expected an array"), Ok)
}

/// A ratio: a number, or `null` for infinity (as the report writes non-finite numbers).
fn ratio(v: &Value, field: &str) -> Result<f64, Discrepancy> {
    match v {
        Value::Null => Ok(f64::INFINITY),
        Value::Number(n) => n.as_f64().map_or_else(|| bad(field, "not a number"), Ok),
        _ => bad(field, "expected a number or null"),
    }
}

/// The statuses a cell may have, with the summary field that counts it.
const STATUSES: [(&str, &str); 6] = [
    ("pass", "passed"),
    ("fail", "failed"),
    ("error", "errors"),
    ("unsupported", "unsupported"),
    ("unavailable", "unavailable"),
    ("mistrusted", "mistrusted"),
];

/// Verifies a JSON report (its text) against the local golden files `local` (loaded with
/// [`crate::load_roots`] from the same roots the report's run used, so that case IDs
/// agree). Returns the first discrepancy, or what the report holds.
pub fn verify(report_json: &str, local: &[CaseFile]) -> Result<Verified, Discrepancy> {
    let doc: Value = match serde_json::from_str(report_json) {
        Ok(doc) => doc,
        Err(e) => return bad("(document)", format!("not JSON: {e}")),
    };
    let doc = object(&doc, "(document)")?;
    let version = get(doc, "schema_version", "")?;
    let schema_version = match version.as_u64() {
        Some(v) if (1..=u64::from(SCHEMA_VERSION)).contains(&v) => v,
        _ => {
            return bad(
                "schema_version",
                format!(
                    "{version} is not a schema version this moemla knows (1 to {SCHEMA_VERSION})"
                ),
            )
        }
    };

    // The golden set: the report's own hash of its files, then the local files.
    let run = object(get(doc, "run", "")?, "run")?;
    let Some(golden) = run.get("golden") else {
        return bad(
            "run.golden",
            "missing: the report carries no golden hashes (written before provenance)",
        );
    };
    let golden = object(golden, "run.golden")?;
    let set_sha256 = string(
        get(golden, "set_sha256", "run.golden.")?,
        "run.golden.set_sha256",
    )?;
    let mut files: Vec<GoldenFile> = Vec::new();
    for (i, f) in array(get(golden, "files", "run.golden.")?, "run.golden.files")?
        .iter()
        .enumerate()
    {
        let field = format!("run.golden.files[{i}]");
        let f = object(f, &field)?;
        let case = string(get(f, "case", &format!("{field}."))?, &field)?.to_string();
        let sha256 = match get(f, "sha256", &format!("{field}."))? {
            Value::Null => None,
            v => Some(string(v, &format!("{field}.sha256"))?.to_string()),
        };
        if files.iter().any(|g| g.case == case) {
            return bad(field, format!("case {case} is listed twice"));
        }
        files.push(GoldenFile { case, sha256 });
    }
    if files.is_empty() {
        return bad("run.golden.files", "empty: the report lists no golden file");
    }
    let recomputed = GoldenSet::set_hash(&files);
    if recomputed != set_sha256 {
        return bad(
            "run.golden.set_sha256",
            format!("{set_sha256} in the report, but its files hash to {recomputed}"),
        );
    }
    let here = GoldenSet::of(local);
    let here: BTreeMap<&str, Option<&str>> = (here.files.iter())
        .map(|f| (f.case.as_str(), f.sha256.as_deref()))
        .collect();
    for (i, f) in files.iter().enumerate() {
        let field = format!("run.golden.files[{i}]");
        match here.get(f.case.as_str()) {
            None => {
                return bad(
                    field,
                    format!("case {} is not in the local golden set", f.case),
                )
            }
            Some(local) if *local != f.sha256.as_deref() => {
                return bad(
                    field,
                    format!(
                        "case {}: sha256 {} in the report, {} here",
                        f.case,
                        f.sha256.as_deref().unwrap_or("unreadable"),
                        local.unwrap_or("unreadable")
                    ),
                )
            }
            Some(_) => {}
        }
    }

    // The backends and their cells.
    let backends = array(get(doc, "backends", "")?, "backends")?;
    let mut available: BTreeMap<&str, bool> = BTreeMap::new();
    for (k, b) in backends.iter().enumerate() {
        let field = format!("backends[{k}]");
        let b = object(b, &field)?;
        let name = string(
            get(b, "name", &format!("{field}."))?,
            &format!("{field}.name"),
        )?;
        let up = get(b, "available", &format!("{field}."))?.as_bool();
        let Some(up) = up else {
            return bad(format!("{field}.available"), "expected true or false");
        };
        if available.insert(name, up).is_some() {
            return bad(
                format!("{field}.name"),
                format!("backend `{name}` listed twice"),
            );
        }
    }
    let results = array(get(doc, "results", "")?, "results")?;
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut implied = ExitStatus::Pass;
    for (i, r) in results.iter().enumerate() {
        let field = format!("results[{i}]");
        let r = object(r, &field)?;
        let case = string(
            get(r, "case", &format!("{field}."))?,
            &format!("{field}.case"),
        )?;
        let backend = string(
            get(r, "backend", &format!("{field}."))?,
            &format!("{field}.backend"),
        )?;
        let at = format!("(case {case} on `{backend}`)");
        let status = string(
            get(r, "status", &format!("{field}."))?,
            &format!("{field}.status"),
        )?;
        if !STATUSES.iter().any(|(s, _)| *s == status) {
            return bad(
                format!("{field}.status"),
                format!("unknown status `{status}` {at}"),
            );
        }
        let Some(&up) = available.get(backend) else {
            return bad(
                format!("{field}.backend"),
                format!("`{backend}` is not among the backends {at}"),
            );
        };
        if case != REQUIRED_CASE && !files.iter().any(|f| f.case == case) {
            return bad(
                format!("{field}.case"),
                format!("{case} is not among run.golden.files"),
            );
        }
        *counts.entry((backend, status)).or_default() += 1;
        *counts.entry(("", status)).or_default() += 1;
        match status {
            "error" => implied = implied.max(ExitStatus::Goldens),
            "fail" if case == REQUIRED_CASE => implied = implied.max(ExitStatus::RequiredBackend),
            "fail" if up => implied = implied.max(ExitStatus::Mismatch),
            _ => {}
        }
        check_ratios(r, &field, &at, status)?;
    }
    check_summary(get(doc, "summary", "")?, "summary", &counts, "")?;
    for (k, b) in backends.iter().enumerate() {
        let b = object(b, "backends")?;
        let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
        let field = format!("backends[{k}].summary");
        check_summary(
            get(b, "summary", &format!("backends[{k}]."))?,
            &field,
            &counts,
            name,
        )?;
    }

    // The outcome, its exit code and reasons agree with the cells.
    let outcome = string(get(doc, "outcome", "")?, "outcome")?;
    let run_outcome = |s: &ExitStatus| s.name() == outcome && *s != ExitStatus::Verify;
    let Some(stated) = ExitStatus::ALL.into_iter().find(run_outcome) else {
        return bad("outcome", format!("unknown outcome `{outcome}`"));
    };
    let code = get(doc, "exit_code", "")?;
    if code.as_u64() != Some(u64::from(stated.code())) {
        return bad(
            "exit_code",
            format!(
                "{code}, but outcome `{outcome}` is exit code {}",
                stated.code()
            ),
        );
    }
    if stated.max(implied) != stated {
        return bad(
            "outcome",
            format!("`{outcome}`, but the cells give `{}`", implied.name()),
        );
    }
    let reasons = array(get(doc, "reasons", "")?, "reasons")?;
    if (stated == ExitStatus::Pass) != reasons.is_empty() {
        return bad(
            "reasons",
            format!("{} reason(s) for outcome `{outcome}`", reasons.len()),
        );
    }
    if stated == ExitStatus::Regression && doc.get("baseline").is_none_or(Value::is_null) {
        return bad("outcome", "`regression` without a baseline comparison");
    }
    Ok(Verified {
        schema_version,
        cells: results.len(),
        golden_files: files.len(),
        set_sha256: set_sha256.to_string(),
        outcome: outcome.to_string(),
    })
}

/// A cell's ratios agree with its status: a passing (or mistrusted) cell has every
/// comparison passed with a worst ratio of at most 1; a failed comparison's ratio is above
/// 1 (or infinite); the cell's worst ratio is the largest of its comparisons'.
fn check_ratios(
    r: &Map<String, Value>,
    field: &str,
    at: &str,
    status: &str,
) -> Result<(), Discrepancy> {
    let comparisons = match r.get("comparisons") {
        None => &Vec::new(),
        Some(c) => array(c, &format!("{field}.comparisons"))?,
    };
    let mut worst = None::<f64>;
    for (j, c) in comparisons.iter().enumerate() {
        let cf = format!("{field}.comparisons[{j}]");
        let c = object(c, &cf)?;
        let Some(passed) = get(c, "passed", &format!("{cf}."))?.as_bool() else {
            return bad(format!("{cf}.passed"), "expected true or false");
        };
        let x = ratio(
            get(c, "worst_ratio", &format!("{cf}."))?,
            &format!("{cf}.worst_ratio"),
        )?;
        if passed && x > 1.0 {
            return bad(
                format!("{cf}.worst_ratio"),
                format!("{x} > 1 in a passed comparison {at}"),
            );
        }
        if !passed && x <= 1.0 {
            return bad(
                format!("{cf}.worst_ratio"),
                format!("{x} <= 1 in a failed comparison {at}"),
            );
        }
        if !passed && matches!(status, "pass" | "mistrusted") {
            return bad(
                format!("{cf}.passed"),
                format!("false in a `{status}` cell {at}"),
            );
        }
        worst = Some(worst.map_or(x, |w: f64| w.max(x)));
    }
    let cell = match r.get("worst_ratio") {
        None => None,
        Some(v) => Some(ratio(v, &format!("{field}.worst_ratio"))?),
    };
    if cell != worst {
        let show = |v: Option<f64>| v.map_or("absent".to_string(), |v| v.to_string());
        return bad(
            format!("{field}.worst_ratio"),
            format!(
                "{} but its comparisons' worst is {} {at}",
                show(cell),
                show(worst)
            ),
        );
    }
    if status == "fail"
        && !comparisons.is_empty()
        && comparisons.iter().all(|c| c["passed"] == true)
        && r.get("message").is_none_or(Value::is_null)
    {
        return bad(
            format!("{field}.status"),
            format!("`fail` with every comparison passed and no message {at}"),
        );
    }
    Ok(())
}

/// A `summary` object equals the cells counted (for one backend, or all with `""`).
fn check_summary(
    v: &Value,
    field: &str,
    counts: &BTreeMap<(&str, &str), usize>,
    backend: &str,
) -> Result<(), Discrepancy> {
    let v = object(v, field)?;
    let count = |status: &str| counts.get(&(backend, status)).copied().unwrap_or(0);
    let mut expected: Vec<(&str, usize)> = (STATUSES.iter())
        .map(|(status, key)| (*key, count(status)))
        .collect();
    expected.push(("skipped", count("unsupported") + count("unavailable")));
    for (key, n) in expected {
        let got = get(v, key, &format!("{field}."))?;
        if got.as_u64() != Some(n as u64) {
            return bad(
                format!("{field}.{key}"),
                format!("{got} in the report, but the cells count {n}"),
            );
        }
    }
    Ok(())
}
