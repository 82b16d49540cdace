//! The HTML report: one self-contained page whose matrix has every cell of the report,
//! whose embedded JSON is the JSON report, and where a hostile case name stays text.

mod common;

use common::{fixture_set, TempDir, FIXTURE_CASES};
use moemla_conformance::html::to_html;
use moemla_conformance::provenance::GoldenSet;
use moemla_conformance::{load_roots, run, run_unavailable, Report, RunInfo};
use moemla_cpu::CpuBackend;

/// A case file name that would inject markup and script if it were not escaped.
const HOSTILE: &str = "\"><img src=x onerror=alert(1)>&amp;'</script><script>alert(2)</script>";

/// A report over the fixture set, one case renamed to [`HOSTILE`] (its file name cannot
/// hold `/`, so the closing tags are spelled in its message instead: see below).
fn report() -> (TempDir, Report) {
    let dir = TempDir::new("html");
    fixture_set(&dir.0);
    let hostile_file = HOSTILE.replace('/', "\u{2215}");
    std::fs::rename(
        dir.join("moe_route/f32/route.safetensors"),
        dir.join(&format!("moe_route/f32/{hostile_file}.safetensors")),
    )
    .unwrap();
    let cases = load_roots(&[&dir.0]);
    let mut report = run(&CpuBackend::new(), &cases);
    report.extend(run_unavailable("gpu</td>", "no <device> & none", &cases));
    report.finish(&[], &[]);
    report.run = RunInfo::now();
    report.run.golden = GoldenSet::of(&cases);
    // A message with a literal `</script>`, as a backend error could carry.
    report.results[0].message = Some(HOSTILE.to_string());
    (dir, report)
}

#[test]
fn hostile_names_and_messages_stay_text() {
    let (_dir, report) = report();
    let page = to_html(&report);
    // Only the page's own two scripts open and close; no injected element.
    assert_eq!(page.matches("<script").count(), 2, "{page}");
    assert_eq!(page.matches("</script>").count(), 2);
    assert!(!page.contains("<img"));
    assert!(!page.contains("gpu</td>"));
    assert!(page.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&amp;amp;&#39;"));
    assert!(page.contains("data-backend=\"gpu&lt;/td&gt;\""));
    // The unavailable backend's reason, escaped, once (in the backends table, not per cell).
    assert_eq!(page.matches("no &lt;device&gt; &amp; none").count(), 1);
}

#[test]
fn the_embedded_json_is_the_json_report() {
    let (_dir, report) = report();
    let page = to_html(&report);
    let open = "<script type=\"application/json\" id=\"report-json\">";
    let start = page.find(open).unwrap() + open.len();
    let end = start + page[start..].find("</script>").unwrap();
    let embedded: serde_json::Value = serde_json::from_str(&page[start..end]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(embedded, json);
}

#[test]
fn every_cell_is_in_the_matrix_with_its_status() {
    let (_dir, report) = report();
    let page = to_html(&report);
    let c = report.counts(None);
    assert_eq!(c.passed, FIXTURE_CASES);
    assert_eq!(c.unavailable, FIXTURE_CASES);
    assert_eq!(page.matches("data-status=\"pass\"").count(), FIXTURE_CASES);
    assert_eq!(
        page.matches("data-status=\"unavailable\"").count(),
        FIXTURE_CASES
    );
    assert_eq!(page.matches("<tr class=\"case\"").count(), FIXTURE_CASES);
    // Every passing cell shows its worst ratio, at most 1.
    let ratios: Vec<f64> = (page.split("data-ratio=\"").skip(1))
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(ratios.len(), FIXTURE_CASES);
    assert!(ratios.iter().all(|r| (0.0..=1.0).contains(r)), "{ratios:?}");
    // No external asset: nothing is fetched.
    for needle in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!page.contains(needle), "{needle}");
    }
    assert!(page.contains(&report.run.golden.set_sha256));
    assert!(page.contains(&format!(
        "data-passed=\"{FIXTURE_CASES}\" data-total=\"{FIXTURE_CASES}\""
    )));
}
