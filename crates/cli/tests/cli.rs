//! The `moemla` binary end to end: what CI and integrators script against.

use std::path::PathBuf;
use std::process::{Command, Output};

fn moemla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(args)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_BACKEND")
        .output()
        .expect("run moemla")
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("moemla-cli-test-{}-{name}", std::process::id()))
}

fn json(path: &PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report written");
    std::fs::remove_file(path).ok();
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn devices_json_lists_cpu_as_available_reference() {
    let out = moemla(&["devices", "--json"]);
    assert!(out.status.success());
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpu = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "cpu")
        .expect("cpu listed");
    assert_eq!(cpu["available"], true);
    assert_eq!(cpu["info"]["verification"]["kind"], "reference");
    // Every backend says how it was verified; every unavailable one also says why.
    for d in devices.as_array().unwrap() {
        assert!(d["verification"]["kind"].is_string(), "{d}");
        if d["available"] == false {
            assert!(d["reason"].as_str().is_some_and(|r| !r.is_empty()), "{d}");
        }
    }
}

#[test]
fn conformance_on_cpu_passes_and_reports_counts() {
    let report = temp_file("conformance.json");
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--filter",
        "moe_route",
        "--json",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let summary = &json(&report)["summary"];
    let passed = summary["passed"].as_u64().unwrap();
    assert!(passed >= 9, "{summary}");
    assert_eq!(summary["failed"], 0);
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("{passed} passed, 0 failed, 0 skipped")),
        "{stdout}"
    );
}

#[test]
fn conformance_fails_when_a_required_backend_is_missing() {
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--filter",
        "moe_route",
        "--require",
        "cpu,no-such-backend",
    ]);
    assert!(!out.status.success());
}

#[test]
fn bench_quick_reports_roofline_ratios_against_measured_ceilings() {
    let report = temp_file("bench.json");
    let out = moemla(&[
        "bench",
        "--quick",
        "--backend",
        "cpu",
        "--dtype",
        "f32",
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json(&report);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "one quick case per op");
    for row in rows {
        let ratio = row["roofline_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio.is_finite(), "{row}");
        assert!(row["time_s"].as_f64().unwrap() > 0.0);
    }
    let ceilings = &doc["ceilings"][0]["ceilings"][0];
    assert!(ceilings["memory"]["rate"].as_f64().unwrap() > 0.0);
    assert!(ceilings["compute"]["rate"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rejects_an_unknown_op() {
    let out = moemla(&["bench", "--quick", "--backend", "cpu", "--op", "moe_bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("moe_bogus"));
}
