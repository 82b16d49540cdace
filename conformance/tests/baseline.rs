//! `--baseline`: cells matched by (case, backend, device fingerprint); new failures, new
//! skips and worst-ratio growth found, nothing else.

mod common;

use common::{fixture_set, TempDir, FIXTURE_CASES};
use moemla_conformance::baseline::{compare, RegressionKind, RATIO_FLOOR};
use moemla_conformance::{load_cases, run, run_unavailable, CaseFile, Report};
use moemla_core::{DType, HostTensor};
use moemla_cpu::CpuBackend;
use serde_json::Value;

/// The fixtures, loaded.
fn fixtures(dir: &TempDir) -> Vec<CaseFile> {
    fixture_set(&dir.0);
    load_cases(&[&dir.0])
}

/// `report` as a baseline file.
fn as_baseline(report: &Report) -> Vec<(String, String)> {
    vec![("old.json".to_string(), report.to_json())]
}

/// The kinds of regressions of `now` against `old`, sorted by case.
fn kinds(now: &Report, old: &[(String, String)]) -> Vec<(String, RegressionKind)> {
    let cmp = compare(now, old, 2.0).unwrap();
    let mut out: Vec<_> = (cmp.regressions.iter())
        .map(|r| (r.case.clone(), r.kind))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_same_run_has_no_regression_and_every_cell_is_compared() {
    let dir = TempDir::new("baseline-same");
    let cases = fixtures(&dir);
    let old = run(&CpuBackend::new(), &cases);
    let now = run(&CpuBackend::new(), &cases);
    let cmp = compare(&now, &as_baseline(&old), 2.0).unwrap();
    assert_eq!(
        (cmp.compared, cmp.not_in_baseline, cmp.regressions.len()),
        (FIXTURE_CASES, 0, 0)
    );
}

#[test]
fn new_failures_and_new_skips_are_regressions() {
    let dir = TempDir::new("baseline-worse");
    let mut cases = fixtures(&dir);
    let old = as_baseline(&run(&CpuBackend::new(), &cases));
    // The backend vanished: every cell a new skip, whatever device the baseline had.
    let gone = run_unavailable("cpu", "no driver", &cases);
    let got = kinds(&gone, &old);
    assert_eq!(got.len(), FIXTURE_CASES);
    assert!(got.iter().all(|(_, k)| *k == RegressionKind::NewSkip));
    // One case's expected output off by 1: a new failure, the others unchanged.
    let case = cases
        .iter_mut()
        .flatten()
        .find(|c| c.name.starts_with("mla_decode/f32/"))
        .unwrap();
    let o = &case.expected["o"];
    let shifted: Vec<f32> = o.to_f32_vec().unwrap().iter().map(|v| v + 1.0).collect();
    let shifted = HostTensor::from_f32_as(o.shape().clone(), &shifted, DType::F32).unwrap();
    case.expected.insert("o".into(), shifted);
    let name = case.name.clone();
    let broken = run(&CpuBackend::new(), &cases);
    assert_eq!(kinds(&broken, &old), [(name, RegressionKind::NewFailure)]);
    // A failure that was already there is not new.
    assert!(kinds(&broken, &as_baseline(&broken)).is_empty());
}

#[test]
fn ratio_growth_beyond_the_factor_counts_and_small_ratios_have_a_floor() {
    let dir = TempDir::new("baseline-ratio");
    let cases = fixtures(&dir);
    let now = run(&CpuBackend::new(), &cases);
    let worst = (now.results.iter())
        .max_by(|a, b| a.worst_ratio.partial_cmp(&b.worst_ratio).unwrap())
        .unwrap();
    let ratio = worst.worst_ratio.unwrap();
    assert!(ratio > 4.0 * RATIO_FLOOR, "fixture ratio {ratio}");
    let with_ratio = |case: &str, value: f64| {
        let mut doc: Value = serde_json::from_str(&now.to_json()).unwrap();
        for r in doc["results"].as_array_mut().unwrap() {
            if r["case"] == case {
                r["worst_ratio"] = Value::from(value);
            }
        }
        vec![("old.json".to_string(), doc.to_string())]
    };
    // 3x growth fails at 2x, passes at 4x.
    let old = with_ratio(&worst.case, ratio / 3.0);
    assert_eq!(
        kinds(&now, &old),
        [(worst.case.clone(), RegressionKind::RatioGrowth)]
    );
    assert!(compare(&now, &old, 4.0).unwrap().regressions.is_empty());
    // From an exact match (0) to below twice the floor: no regression.
    let small = (now.results.iter()).find(|o| o.worst_ratio.is_some_and(|r| r < 2.0 * RATIO_FLOOR));
    if let Some(small) = small {
        assert!(kinds(&now, &with_ratio(&small.case, 0.0)).is_empty());
    }
    let bigger = with_ratio(&worst.case, 0.0);
    assert_eq!(
        kinds(&now, &bigger).len(),
        1,
        "0 -> {ratio} is beyond the floor x 2"
    );
}

#[test]
fn cells_of_another_device_are_not_compared_and_bad_baselines_are_errors() {
    let dir = TempDir::new("baseline-device");
    let cases = fixtures(&dir);
    let now = run(&CpuBackend::new(), &cases);
    let mut doc: Value = serde_json::from_str(&now.to_json()).unwrap();
    doc["backends"][0]["device"]["fingerprint"] = Value::from("cpu/moemla/another machine");
    // Even a failure there would not count here.
    for r in doc["results"].as_array_mut().unwrap() {
        r["worst_ratio"] = Value::from(0.0);
    }
    let other = vec![("other.json".to_string(), doc.to_string())];
    let cmp = compare(&now, &other, 2.0).unwrap();
    assert_eq!((cmp.compared, cmp.not_in_baseline), (0, FIXTURE_CASES));

    for (text, want) in [
        ("not json", "not a JSON report"),
        ("{}", "no schema_version"),
        (
            r#"{"schema_version": 99, "results": []}"#,
            "schema_version 99",
        ),
        (r#"{"schema_version": 1}"#, "no `results` array"),
    ] {
        let err = compare(&now, &[("b.json".into(), text.into())], 2.0).unwrap_err();
        assert!(err.contains("b.json") && err.contains(want), "{err}");
    }
}
