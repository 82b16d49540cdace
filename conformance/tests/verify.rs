//! `verify`: a fresh report verifies against its golden set; an edited golden byte fails
//! naming the case; an edited count, status, ratio, exit code, set hash or schema version
//! fails naming the field.

mod common;

use common::{fixture_set, TempDir, FIXTURE_CASES};
use moemla_conformance::provenance::GoldenSet;
use moemla_conformance::{load_roots, run, verify, Report, RunInfo};
use moemla_cpu::CpuBackend;
use serde_json::Value;

/// A fixture golden set and the JSON report of a CPU run over it, with provenance.
fn fresh(tag: &str) -> (TempDir, String) {
    let dir = TempDir::new(tag);
    fixture_set(&dir.0);
    let cases = load_roots(&[&dir.0]);
    let mut report: Report = run(&CpuBackend::new(), &cases);
    report.finish(&["cpu".to_string()], &[]);
    report.run = RunInfo::now();
    report.run.golden = GoldenSet::of(&cases);
    (dir, report.to_json())
}

/// The report with `edit` applied to its JSON.
fn edited(json: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut doc: Value = serde_json::from_str(json).unwrap();
    edit(&mut doc);
    serde_json::to_string(&doc).unwrap()
}

/// The field of the first discrepancy.
fn field_of(json: &str, dir: &TempDir) -> String {
    verify(json, &load_roots(&[&dir.0])).unwrap_err().field
}

#[test]
fn a_fresh_report_verifies() {
    let (dir, json) = fresh("verify-fresh");
    let v = verify(&json, &load_roots(&[&dir.0])).unwrap();
    assert_eq!((v.cells, v.golden_files), (FIXTURE_CASES, FIXTURE_CASES));
    assert_eq!(v.outcome, "pass");
    assert_eq!(
        v.set_sha256,
        GoldenSet::of(&load_roots(&[&dir.0])).set_sha256
    );
}

#[test]
fn one_edited_golden_byte_fails_naming_the_case() {
    let (dir, json) = fresh("verify-golden");
    let set = GoldenSet::of(&load_roots(&[&dir.0]));
    let victim = &set.files[2].case;
    let path = dir.join(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = verify(&json, &load_roots(&[&dir.0])).unwrap_err();
    assert_eq!(err.field, "run.golden.files[2]", "{err}");
    assert!(err.message.contains(victim.as_str()), "{err}");
}

#[test]
fn a_missing_golden_case_fails_naming_it() {
    let (dir, json) = fresh("verify-missing");
    let set = GoldenSet::of(&load_roots(&[&dir.0]));
    std::fs::remove_file(dir.join(&set.files[0].case)).unwrap();
    let err = verify(&json, &load_roots(&[&dir.0])).unwrap_err();
    assert_eq!(err.field, "run.golden.files[0]", "{err}");
    assert!(err.message.contains("not in the local golden set"), "{err}");
}

#[test]
fn an_edited_count_fails_naming_the_field() {
    let (dir, json) = fresh("verify-count");
    let total = edited(&json, |d| {
        d["summary"]["passed"] = (FIXTURE_CASES + 1).into()
    });
    assert_eq!(field_of(&total, &dir), "summary.passed");
    // A case file's metadata order varies between writes: edit the same report.
    let json2 = edited(&json, |d| d["backends"][0]["summary"]["failed"] = 1.into());
    assert_eq!(field_of(&json2, &dir), "backends[0].summary.failed");
}

#[test]
fn an_edited_status_fails_naming_the_field() {
    let (dir, json) = fresh("verify-status");
    // A failing cell whose comparisons all passed.
    let failed = edited(&json, |d| d["results"][1]["status"] = "fail".into());
    assert_eq!(field_of(&failed, &dir), "results[1].status");
    // A pass turned into a skip: the counts no longer agree.
    let skipped = edited(&json, |d| d["results"][1]["status"] = "unsupported".into());
    assert_eq!(field_of(&skipped, &dir), "summary.passed");
    let unknown = edited(&json, |d| d["results"][1]["status"] = "great".into());
    assert_eq!(field_of(&unknown, &dir), "results[1].status");
}

#[test]
fn an_edited_ratio_fails_naming_the_field() {
    let (dir, json) = fresh("verify-ratio");
    let over = edited(&json, |d| {
        d["results"][0]["comparisons"][0]["worst_ratio"] = 1.5.into()
    });
    assert_eq!(
        field_of(&over, &dir),
        "results[0].comparisons[0].worst_ratio"
    );
    // The cell's worst ratio no longer the largest of its comparisons'.
    let cell = edited(&json, |d| d["results"][0]["worst_ratio"] = 0.999.into());
    assert_eq!(field_of(&cell, &dir), "results[0].worst_ratio");
}

#[test]
fn an_edited_outcome_hash_or_schema_fails_naming_the_field() {
    let (dir, json) = fresh("verify-misc");
    let code = edited(&json, |d| d["exit_code"] = 1.into());
    assert_eq!(field_of(&code, &dir), "exit_code");
    let outcome = edited(&json, |d| {
        d["outcome"] = "mismatch".into();
        d["exit_code"] = 1.into();
    });
    assert_eq!(field_of(&outcome, &dir), "reasons");
    let set = edited(&json, |d| {
        d["run"]["golden"]["files"][0]["sha256"] = "00".repeat(32).into()
    });
    assert_eq!(field_of(&set, &dir), "run.golden.set_sha256");
    let schema = edited(&json, |d| d["schema_version"] = 99.into());
    assert_eq!(field_of(&schema, &dir), "schema_version");
    let old = edited(&json, |d| {
        d["run"].as_object_mut().unwrap().remove("golden");
    });
    assert_eq!(field_of(&old, &dir), "run.golden");
    assert_eq!(field_of("{", &dir), "(document)");
}

#[test]
fn a_failing_cell_on_a_passing_report_fails_the_outcome() {
    let (dir, json) = fresh("verify-implied");
    // A genuine-looking failure: one comparison failed, counts and ratio made consistent,
    // but the outcome still says pass.
    let json = edited(&json, |d| {
        let r = &mut d["results"][0];
        r["status"] = "fail".into();
        r["comparisons"][0]["passed"] = false.into();
        r["comparisons"][0]["worst_ratio"] = 2.0.into();
        let worst = (r["comparisons"].as_array().unwrap().iter())
            .map(|c| c["worst_ratio"].as_f64().unwrap())
            .fold(0.0, f64::max);
        r["worst_ratio"] = worst.into();
        for s in ["/summary", "/backends/0/summary"] {
            let s = d.pointer_mut(s).unwrap();
            s["passed"] = (FIXTURE_CASES - 1).into();
            s["failed"] = 1.into();
        }
    });
    assert_eq!(field_of(&json, &dir), "outcome");
}
