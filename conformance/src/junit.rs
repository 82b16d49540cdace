//! JUnit XML: `testsuites` > one `testsuite` per backend > one `testcase` per case, with
//! `failure` and `skipped` elements, as CI systems display natively. A mistrusted cell is
//! `skipped` with a message starting `mistrusted: `.

use crate::report::{Outcome, Report, Status};
use std::fmt::Write;

/// The report as JUnit XML.
pub fn to_junit(report: &Report) -> String {
    let total = report.counts(None);
    let time: f64 = report.results.iter().map(|o| o.seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"moemla conformance\" tests=\"{}\" failures=\"{}\" errors=\"0\" \
         skipped=\"{}\" time=\"{time:.6}\">",
        report.results.len(),
        total.failed,
        total.skipped() + total.mistrusted
    );
    for b in &report.backends {
        let cases: Vec<&Outcome> = report
            .results
            .iter()
            .filter(|o| o.backend == b.name)
            .collect();
        let c = report.counts(Some(&b.name));
        let time: f64 = cases.iter().map(|o| o.seconds).sum();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" \
             time=\"{time:.6}\">",
            escape(&b.name),
            cases.len(),
            c.failed,
            c.skipped() + c.mistrusted
        );
        let _ = writeln!(
            x,
            "    <properties><property name=\"detail\" value=\"{}\"/></properties>",
            escape(&b.detail)
        );
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
    match o.status {
        Status::Pass => *x += "/>\n",
        Status::Fail => {
            let _ = writeln!(
                x,
                ">\n      <failure message=\"{message}\" type=\"mismatch\">{message}</failure>\n    </testcase>"
            );
        }
        Status::Unsupported | Status::Unavailable | Status::Mistrusted => {
            let label = match o.status {
                Status::Mistrusted => "mistrusted",
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
