//! JUnit XML: `testsuites` > one `testsuite` per backend > one `testcase` per case, as CI
//! systems display natively, valid against Jenkins' xUnit `junit-10.xsd`
//! (`conformance/schema/junit-10.xsd`). A failing case has a `failure`, a malformed case
//! file an `error`, a skipped cell (unsupported, backend unavailable) a `skipped` with the
//! reason; a mistrusted cell is `skipped` with a message starting `mistrusted: `. A
//! required backend that is unavailable or skipped cases has a failing
//! [`crate::REQUIRED_CASE`] testcase ([`crate::Report::finish`]). Each suite carries the
//! run's timestamp and host name, and as properties the backend's device (and its
//! fingerprint), its verification claimed and measured, and the run's provenance: moemla
//! version, git commit, date, host, command line, the golden set's SHA-256 and one
//! `golden_sha256:<case>` per golden file.

use crate::provenance::shell_line;
use crate::report::{Outcome, Report, Status};
use std::fmt::Write;

/// The report as JUnit XML.
pub fn to_junit(report: &Report) -> String {
    let total = report.counts(None);
    let time: f64 = report.results.iter().map(|o| o.seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"moemla conformance\" tests=\"{}\" failures=\"{}\" errors=\"{}\" \
         time=\"{time:.6}\">",
        report.results.len(),
        total.failed,
        total.errors,
    );
    // JUnit's timestamp is ISO 8601 without a zone (the run's is UTC).
    let stamp = report.run.timestamp.trim_end_matches('Z');
    for (id, b) in report.backends.iter().enumerate() {
        let cases: Vec<&Outcome> = report
            .results
            .iter()
            .filter(|o| o.backend == b.name)
            .collect();
        let c = report.counts(Some(&b.name));
        let time: f64 = cases.iter().map(|o| o.seconds).sum();
        let _ = write!(
            x,
            "  <testsuite name=\"{}\" id=\"{id}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" \
             skipped=\"{}\" time=\"{time:.6}\"",
            escape(&b.name),
            cases.len(),
            c.failed,
            c.errors,
            c.skipped() + c.mistrusted
        );
        if !stamp.is_empty() {
            let _ = write!(x, " timestamp=\"{}\"", escape(stamp));
        }
        if !report.run.hostname.is_empty() {
            let _ = write!(x, " hostname=\"{}\"", escape(&report.run.hostname));
        }
        x += ">\n    <properties>\n";
        let run = &report.run;
        let mut props = vec![
            ("available".to_string(), b.available.to_string()),
            ("detail".to_string(), b.detail.clone()),
        ];
        if let Some(d) = &b.device {
            props.push(("device".into(), d.device.clone()));
            props.push(("vendor".into(), d.vendor.clone()));
            props.push(("fingerprint".into(), d.fingerprint.clone()));
            props.push(("device_sha256".into(), d.fingerprint_sha256.clone()));
            let claim = &d.claimed_verification;
            let claimed = format!("{} ({})", claim.kind, claim.detail);
            props.push(("verification_claimed".into(), claimed));
            let measured = format!("{}/{} passed", c.passed, c.total());
            props.push(("verification_measured".into(), measured));
        }
        props.extend([
            ("moemla_version".into(), run.version.clone()),
            ("git_commit".into(), run.git_commit.clone()),
            ("git_dirty".into(), run.git_dirty.clone()),
            ("date".into(), run.timestamp.clone()),
            ("host".into(), run.hostname.clone()),
            ("command_line".into(), shell_line(&run.command_line)),
            ("golden_set_sha256".into(), run.golden.set_sha256.clone()),
        ]);
        for f in &run.golden.files {
            let sha = f.sha256.as_deref().unwrap_or("unreadable").to_string();
            props.push((format!("golden_sha256:{}", f.case), sha));
        }
        for (name, value) in props {
            let _ = writeln!(
                x,
                "      <property name=\"{}\" value=\"{}\"/>",
                escape(&name),
                escape(&value)
            );
        }
        x += "    </properties>\n";
        for o in cases {
            testcase(&mut x, o);
        }
        x += "  </testsuite>\n";
    }
    x += "</testsuites>\n";
    x
}

/// One `testcase` element.
fn testcase(x: &mut String, o: &Outcome) {
    let class = match (o.op, o.dtype) {
        (Some(op), Some(dtype)) => format!("{}.{op}.{dtype}", o.backend),
        _ if o.status == Status::Fail => format!("{}.required", o.backend),
        _ => format!("{}.malformed", o.backend),
    };
    let _ = write!(
        x,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.6}\"",
        escape(&o.case),
        escape(&class),
        o.seconds
    );
    let message = escape(o.message.as_deref().unwrap_or(""));
    let element = |tag: &str, kind: &str| {
        format!(
            ">\n      <{tag} message=\"{message}\" type=\"{kind}\">{message}</{tag}>\n    </testcase>\n"
        )
    };
    match o.status {
        Status::Pass => *x += "/>\n",
        Status::Fail if o.op.is_none() => *x += &element("failure", "required-backend"),
        Status::Fail => *x += &element("failure", "mismatch"),
        Status::Error => *x += &element("error", "malformed-case"),
        Status::Unsupported | Status::Unavailable | Status::Mistrusted => {
            let label = match o.status {
                Status::Mistrusted => "mistrusted",
                Status::Unavailable => "unavailable",
                other => other.cell(),
            };
            let _ = writeln!(
                x,
                ">\n      <skipped message=\"{label}: {message}\"/>\n    </testcase>"
            );
        }
    }
}

/// Escapes text for XML content and attribute values. Characters XML 1.0 cannot carry
/// (most control characters) become U+FFFD; newlines and tabs become character references
/// so attribute values keep them.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&apos;",
            '\n' => out += "&#10;",
            '\r' => out += "&#13;",
            '\t' => out += "&#9;",
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}
