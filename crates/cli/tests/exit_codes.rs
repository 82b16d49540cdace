//! `moemla conformance` exit codes, one test per code (0 pass, 1 mismatch, 2 usage, 3
//! required backend, 4 goldens, 5 report, 6 baseline regression), each checking that the
//! JSON report (where one is written) says the same.

mod common;

use common::{assert_code, golden, moemla, temp_dir};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written")).unwrap()
}

/// The JSON report's outcome and exit code.
fn outcome(doc: &Value) -> (&str, u64) {
    (
        doc["outcome"].as_str().unwrap(),
        doc["exit_code"].as_u64().unwrap(),
    )
}

const ROUTE: &str = "moe_route/f32/v2_t1.safetensors";

/// Copies the committed case [`ROUTE`] under `dir` with every expected `topk_weights`
/// value replaced by 10.0 (a numeric mismatch on any backend).
fn mismatching_case(dir: &Path) {
    let mut bytes = std::fs::read(golden().join(ROUTE)).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let tensor = &header["out.topk_weights"];
    assert_eq!(tensor["dtype"], "F32");
    let offsets = tensor["data_offsets"].as_array().unwrap();
    let (start, end) = (
        8 + len + offsets[0].as_u64().unwrap() as usize,
        8 + len + offsets[1].as_u64().unwrap() as usize,
    );
    for chunk in bytes[start..end].chunks_mut(4) {
        chunk.copy_from_slice(&10.0f32.to_le_bytes());
    }
    let path = dir.join(ROUTE);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn exit_0_when_every_case_that_ran_passed() {
    let dir = temp_dir("pass");
    let json = dir.join("r.json");
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--filter",
        "moe_route",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_code(&out, 0);
    assert_eq!(outcome(&read_json(&json)), ("pass", 0));
}

#[test]
fn exit_1_on_a_numeric_mismatch() {
    let dir = temp_dir("mismatch");
    mismatching_case(&dir.join("golden"));
    let json = dir.join("r.json");
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--golden",
        dir.join("golden").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_code(&out, 1);
    let doc = read_json(&json);
    assert_eq!(outcome(&doc), ("mismatch", 1));
    assert_eq!(doc["summary"]["failed"], 1);
    assert_eq!(doc["results"][0]["case"], ROUTE);
}

#[test]
fn exit_2_on_usage_errors_and_unknown_backend_names() {
    let cases: [&[&str]; 6] = [
        &["conformance", "--backend", "nosuch"],
        &["conformance", "--backend", "cpu", "--require", "cpu,nosuch"],
        &["conformance", "--allow-unsupported", "nosuch"],
        &["conformance", "--no-such-flag"],
        &["conformance", "--shard", "3/2"],
        &["conformance", "--max-ratio-growth", "0.5"],
    ];
    for args in cases {
        let out = moemla(args);
        assert_code(&out, 2);
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = moemla(&["conformance", "--backend", "nosuch"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend `nosuch`"));
    // Names ignore ASCII case: `CPU` is required and runs as `cpu`.
    let out = moemla(&[
        "conformance",
        "--require",
        "CPU",
        "--backend",
        "Cpu",
        "--filter",
        "moe_route",
    ]);
    assert_code(&out, 0);
    // The unknown name is an error even from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["conformance", "--backend", "cpu", "--filter", "moe_route"])
        .env("MOEMLA_REQUIRE", "cpu,typo")
        .output()
        .unwrap();
    assert_code(&out, 2);
}

#[test]
fn exit_3_when_a_required_backend_is_unavailable_and_the_reports_say_so() {
    let dir = temp_dir("required");
    let (json, junit) = (dir.join("r.json"), dir.join("r.xml"));
    let plugin = dir.join("libghost.so"); // does not exist: the `ghost` backend cannot open
    let out = moemla(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "conformance",
        "--backend",
        "cpu",
        "--require",
        "ghost",
        "--filter",
        "moe_route",
        "--json",
        json.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_code(&out, 3);
    let doc = read_json(&json);
    assert_eq!(outcome(&doc), ("required_backend", 3));
    assert_eq!(doc["summary"]["failed"], 1);
    let required = (doc["results"].as_array().unwrap().iter())
        .find(|r| r["backend"] == "ghost" && r["status"] == "fail")
        .unwrap();
    assert!(required["message"]
        .as_str()
        .unwrap()
        .contains("required backend `ghost` is unavailable"));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("failures=\"1\""), "{xml}");
    assert!(xml.contains("type=\"required-backend\""), "{xml}");
}

#[test]
fn exit_4_on_malformed_or_missing_goldens_and_empty_selections() {
    let dir = temp_dir("goldens");
    std::fs::create_dir_all(dir.join("g/moe_route")).unwrap();
    std::fs::write(dir.join("g/moe_route/bad.safetensors"), b"not a case").unwrap();
    let json = dir.join("r.json");
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--golden",
        dir.join("g").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_code(&out, 4);
    let doc = read_json(&json);
    assert_eq!(outcome(&doc), ("goldens", 4));
    assert_eq!(doc["results"][0]["status"], "error");

    let missing = dir.join("nowhere");
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--golden",
        missing.to_str().unwrap(),
    ]);
    assert_code(&out, 4);
    let out = moemla(&["conformance", "--backend", "cpu", "--filter", "no_such_op"]);
    assert_code(&out, 4);
    let out = moemla(&["conformance", "--list", "--filter", "no_such_op"]);
    assert_code(&out, 4);
}

#[test]
fn exit_5_when_a_report_cannot_be_written() {
    let dir = temp_dir("unwritable");
    let json = dir.join("no/such/dir/r.json");
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--filter",
        "moe_route",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_code(&out, 5);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write report"));
}

#[test]
fn exit_6_on_a_baseline_regression_with_a_summary_table() {
    let dir = temp_dir("baseline");
    let (old, new) = (dir.join("old.json"), dir.join("new.json"));
    let run = |baseline: &Path| {
        moemla(&[
            "conformance",
            "--backend",
            "cpu",
            "--filter",
            "mla_decode/f16/*",
            "--json",
            new.to_str().unwrap(),
            "--baseline",
            baseline.to_str().unwrap(),
        ])
    };
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--filter",
        "mla_decode/f16/*",
        "--json",
        old.to_str().unwrap(),
    ]);
    assert_code(&out, 0);
    // The same run against itself: no regression.
    assert_code(&run(&old), 0);
    assert_eq!(
        read_json(&new)["baseline"]["regressions"],
        Value::Array(vec![])
    );

    // A baseline whose worst case had a third of today's ratio: growth 3x > 2x.
    let mut doc = read_json(&old);
    let results = doc["results"].as_array_mut().unwrap();
    let worst = (results.iter_mut())
        .max_by(|a, b| {
            a["worst_ratio"]
                .as_f64()
                .partial_cmp(&b["worst_ratio"].as_f64())
                .unwrap()
        })
        .unwrap();
    let ratio = worst["worst_ratio"].as_f64().unwrap();
    assert!(
        ratio > 0.03,
        "the f16 MLA cases on cpu have a worst ratio of {ratio}"
    );
    worst["worst_ratio"] = Value::from(ratio / 3.0);
    let case = worst["case"].as_str().unwrap().to_string();
    let shrunk = dir.join("shrunk.json");
    std::fs::write(&shrunk, serde_json::to_string(&doc).unwrap()).unwrap();
    let out = run(&shrunk);
    assert_code(&out, 6);
    let report = read_json(&new);
    assert_eq!(outcome(&report), ("regression", 6));
    let regressions = report["baseline"]["regressions"].as_array().unwrap();
    assert_eq!(regressions.len(), 1);
    assert_eq!(
        (&regressions[0]["kind"], &regressions[0]["case"]),
        (&Value::from("ratio_growth"), &Value::from(case.clone()))
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = (stdout.lines())
        .find(|l| l.trim_start().starts_with("ratio growth"))
        .unwrap();
    assert!(row.contains(&case) && row.contains("cpu"), "{stdout}");
    // A looser threshold lets it through.
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--filter",
        "mla_decode/f16/*",
        "--baseline",
        shrunk.to_str().unwrap(),
        "--max-ratio-growth",
        "4",
    ]);
    assert_code(&out, 0);
    // An unreadable baseline is a usage error.
    let out = run(&dir.join("missing.json"));
    assert_code(&out, 2);
}

#[test]
fn help_lists_every_exit_code() {
    let out = moemla(&["conformance", "--help"]);
    assert_code(&out, 0);
    let help = String::from_utf8_lossy(&out.stdout);
    for code in 0..=6 {
        assert!(help.contains(&format!("\n  {code}  ")), "{help}");
    }
}
