//! The report as one self-contained HTML page (`moemla conformance --html FILE`): the
//! provenance, the backends (device, fingerprint, verification claimed and measured) and
//! the case x backend matrix, each cell with its status, worst error ratio and first
//! mismatch, filterable by op, dtype and backend. Inline CSS and a small inline script,
//! no external asset, no network. The JSON report ([`Report::to_json`]) is embedded in
//! `<script type="application/json" id="report-json">`, so that a checker can compare the
//! rendered matrix with it.

use crate::provenance::shell_line;
use crate::report::{Outcome, Report, Status, REQUIRED_CASE};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Escapes text for HTML content and (double- or single-quoted) attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

/// JSON made safe inside a `<script>` element: `<`, `>` and `&` as `\u` escapes (still
/// the same JSON), so no `</script>` or `<!--` can appear in it.
fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.cell{min-width:7em}
.pass{background:#d9f2d9}.fail{background:#f8d0d0}.error{background:#f3b6e6}
.unsupported,.unavailable{background:#eee;color:#666}.mistrusted{background:#fff1c2}
.ratio{display:block;font-size:.85em;color:#444}.mismatch{display:block;font-size:.8em;color:#700}
.filters fieldset{display:inline-block;margin-right:1em;vertical-align:top}
code{word-break:break-all}tr.hidden,.col-hidden{display:none}";

/// The page's script: filters rows by op and dtype, columns by backend, and writes how
/// many rows are shown; marks the body `data-ready` once it ran.
const SCRIPT: &str = "(function(){
var boxes=document.querySelectorAll('.filters input[type=checkbox]');
function on(kind){var s={};boxes.forEach(function(b){if(b.dataset.kind===kind&&b.checked)s[b.value]=1;});return s;}
function apply(){
var ops=on('op'),dts=on('dtype'),bes=on('backend'),shown=0,rows=document.querySelectorAll('#matrix tbody tr.case');
rows.forEach(function(r){var v=(r.dataset.op in ops)&&(r.dataset.dtype in dts);r.classList.toggle('hidden',!v);if(v)shown++;});
document.querySelectorAll('#matrix [data-backend]').forEach(function(c){c.classList.toggle('col-hidden',!(c.dataset.backend in bes));});
var n=document.getElementById('shown');n.textContent=shown+' of '+rows.length+' rows shown';n.dataset.shown=shown;
}
boxes.forEach(function(b){b.addEventListener('change',apply);});
apply();document.body.dataset.ready='1';
})();";

/// A matrix row, in the text matrix's order: malformed files and the required backends'
/// cells last, then by op, dtype and case ID.
type RowKey = (bool, bool, String, String, String);

/// The op and dtype labels of a row (`-` where the case file did not say).
fn labels(o: &Outcome) -> (String, String) {
    let op = o.op.map_or("-".to_string(), |op| op.to_string());
    let dtype = o.dtype.map_or("-".to_string(), |d| d.to_string());
    (op, dtype)
}

/// A ratio for a cell (`inf` when infinite).
fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "inf".to_string()
    }
}

/// The first mismatch of a cell: the first failing element of its first failing output,
/// else its message (none for a pass, or for an unavailable backend).
fn first_mismatch(o: &Outcome) -> Option<String> {
    let failing = o.comparisons.iter().find(|c| !c.passed);
    if let Some(m) = failing.and_then(|c| c.first_failure.as_ref().map(|m| (c, m))) {
        let (c, m) = m;
        return Some(format!(
            "{} {:?}: got {}, expected {} (allowed {}){}",
            c.output,
            m.index,
            m.got,
            m.expected,
            m.allowed,
            if m.detail.is_empty() {
                String::new()
            } else {
                format!(" {}", m.detail)
            }
        ));
    }
    match o.status {
        // An unavailable backend's reason is in the backends table, once.
        Status::Pass | Status::Unavailable => None,
        _ => o.message.clone(),
    }
}

/// The report as one self-contained HTML page.
pub fn to_html(report: &Report) -> String {
    let run = &report.run;
    let counts = report.counts(None);
    let mut h =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h += "<meta name=\"viewport\" content=\"width=device-width\">\n";
    h += "<title>moemla conformance report</title>\n<style>\n";
    h += STYLE;
    h += "\n</style>\n</head>\n<body>\n<h1>moemla conformance report</h1>\n";
    let outcome = report.verdict.as_ref().map_or("pass", |v| v.exit.name());
    let _ = writeln!(
        h,
        "<p id=\"summary\" data-outcome=\"{}\" data-passed=\"{}\" data-failed=\"{}\" \
         data-errors=\"{}\" data-skipped=\"{}\" data-mistrusted=\"{}\" data-total=\"{}\">\
         outcome <b>{}</b>: {}</p>",
        escape(outcome),
        counts.passed,
        counts.failed,
        counts.errors,
        counts.skipped(),
        counts.mistrusted,
        counts.total(),
        escape(outcome),
        escape(&counts.line())
    );
    if let Some(v) = &report.verdict {
        if !v.reasons.is_empty() {
            h += "<ul id=\"reasons\">\n";
            for r in &v.reasons {
                let _ = writeln!(h, "<li>{}</li>", escape(r));
            }
            h += "</ul>\n";
        }
    }

    h += "<h2>Provenance</h2>\n<table id=\"provenance\">\n";
    let mut rows = vec![
        ("moemla version", run.version.clone()),
        ("git commit", run.git_commit.clone()),
        ("uncommitted changes", run.git_dirty.clone()),
        ("date (UTC)", run.timestamp.clone()),
        ("host", run.hostname.clone()),
        ("command line", shell_line(&run.command_line)),
        ("golden roots", run.golden_roots.join(", ")),
        ("golden set SHA-256", run.golden.set_sha256.clone()),
        ("golden files", run.golden.files.len().to_string()),
    ];
    if let Some(shard) = &run.shard {
        rows.push(("shard", shard.clone()));
    }
    for (k, v) in rows {
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            k,
            escape(&v)
        );
    }
    h += "</table>\n";

    h += "<h2>Backends</h2>\n<table id=\"backends\">\n<tr><th>backend</th><th>device</th>\
          <th>device fingerprint (SHA-256)</th><th>verification claimed</th>\
          <th>measured in this run</th></tr>\n";
    for b in &report.backends {
        let c = report.counts(Some(&b.name));
        let (device, sha, claim) = match &b.device {
            Some(d) => (
                format!("{} ({}, {})", d.device, d.vendor, d.kind),
                d.fingerprint_sha256.clone(),
                format!(
                    "claimed: {}: {}",
                    d.claimed_verification.kind, d.claimed_verification.detail
                ),
            ),
            None => (
                format!("unavailable: {}", b.detail),
                String::new(),
                String::new(),
            ),
        };
        let _ = writeln!(
            h,
            "<tr data-name=\"{}\"><th>{}</th><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{} passed of {} ({})</td></tr>",
            escape(&b.name),
            escape(&b.name),
            escape(&device),
            escape(&sha),
            escape(&claim),
            c.passed,
            c.total(),
            escape(&c.line())
        );
    }
    h += "</table>\n";

    // Filters.
    let mut ops = BTreeSet::new();
    let mut dtypes = BTreeSet::new();
    for o in &report.results {
        let (op, dtype) = labels(o);
        ops.insert(op);
        dtypes.insert(dtype);
    }
    let names: Vec<&str> = report.backends.iter().map(|b| b.name.as_str()).collect();
    h += "<h2>Matrix</h2>\n<div class=\"filters\">\n";
    let groups: [(&str, Vec<&str>); 3] = [
        ("op", ops.iter().map(String::as_str).collect()),
        ("dtype", dtypes.iter().map(String::as_str).collect()),
        ("backend", names.clone()),
    ];
    for (kind, values) in groups {
        let _ = writeln!(h, "<fieldset><legend>{kind}</legend>");
        for v in values {
            let _ = writeln!(
                h,
                "<label><input type=\"checkbox\" data-kind=\"{kind}\" value=\"{}\" checked> \
                 {}</label>",
                escape(v),
                escape(v)
            );
        }
        h += "</fieldset>\n";
    }
    h += "</div>\n<p id=\"shown\"></p>\n";

    // The matrix: one row per case, in the text matrix's order.
    let mut cells: BTreeMap<RowKey, BTreeMap<&str, &Outcome>> = BTreeMap::new();
    for o in &report.results {
        let (op, dtype) = labels(o);
        let key = (
            o.op.is_none(),
            o.case == REQUIRED_CASE,
            op,
            dtype,
            o.case.clone(),
        );
        cells.entry(key).or_default().insert(o.backend.as_str(), o);
    }
    h += "<table id=\"matrix\">\n<thead><tr><th>case</th><th>op</th><th>dtype</th>";
    for n in &names {
        let _ = write!(h, "<th data-backend=\"{}\">{}</th>", escape(n), escape(n));
    }
    h += "</tr></thead>\n<tbody>\n";
    for ((_, _, op, dtype, case), by_backend) in &cells {
        let _ = write!(
            h,
            "<tr class=\"case\" data-case=\"{}\" data-op=\"{}\" data-dtype=\"{}\"><th>{}</th>\
             <td>{}</td><td>{}</td>",
            escape(case),
            escape(op),
            escape(dtype),
            escape(case),
            escape(op),
            escape(dtype)
        );
        for n in &names {
            match by_backend.get(n) {
                None => {
                    let _ = write!(
                        h,
                        "<td data-backend=\"{}\" data-status=\"\">-</td>",
                        escape(n)
                    );
                }
                Some(o) => cell(&mut h, n, o),
            }
        }
        h += "</tr>\n";
    }
    h += "</tbody>\n<tfoot><tr><th>passed</th><td></td><td></td>";
    for n in &names {
        let c = report.counts(Some(n));
        let _ = write!(
            h,
            "<td data-backend=\"{}\" data-passed=\"{}\" data-total=\"{}\">{}/{}</td>",
            escape(n),
            c.passed,
            c.total(),
            c.passed,
            c.total()
        );
    }
    h += "</tr></tfoot>\n</table>\n";

    h += "<script type=\"application/json\" id=\"report-json\">\n";
    h += &script_json(&report.to_json());
    h += "\n</script>\n<script>\n";
    h += SCRIPT;
    h += "\n</script>\n</body>\n</html>\n";
    h
}

/// One matrix cell: status, worst ratio, first mismatch.
fn cell(h: &mut String, backend: &str, o: &Outcome) {
    let status = serde_json::to_value(o.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = write!(
        h,
        "<td class=\"cell {status}\" data-backend=\"{}\" data-status=\"{status}\"",
        escape(backend)
    );
    if let Some(r) = o.worst_ratio {
        let _ = write!(h, " data-ratio=\"{}\"", ratio(r));
    }
    let _ = write!(h, ">{}", o.status.cell());
    if let Some(r) = o.worst_ratio {
        let _ = write!(h, "<span class=\"ratio\">worst ratio {}</span>", ratio(r));
    }
    if let Some(m) = first_mismatch(o) {
        let _ = write!(h, "<span class=\"mismatch\">{}</span>", escape(&m));
    }
    *h += "</td>";
}
