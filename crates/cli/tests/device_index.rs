//! Several devices per backend through the `moemla` binary, on PoCL: its default one CPU
//! device is `opencl:0` and `opencl:1` a clear error; with `POCL_DEVICES="pthread pthread"`
//! (two CPU devices) both are listed and `opencl:1` runs the golden cases. Without an
//! OpenCL platform the tests say so and pass, unless `MOEMLA_REQUIRE` names `opencl`.

use std::process::{Command, Output};

/// A golden case small enough to run in a debug build.
const CASE: &str = "moe_route/f32/v2_t1.safetensors";

fn moemla(pocl_devices: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moemla"));
    cmd.args(args)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_BACKEND")
        .env_remove("MOEMLA_OPENCL_DEVICE");
    match pocl_devices {
        Some(devices) => cmd.env("POCL_DEVICES", devices),
        None => cmd.env_remove("POCL_DEVICES"),
    };
    cmd.output().expect("run moemla")
}

/// `moemla devices --json`'s OpenCL entries as (id, name, available, device name).
fn opencl_devices(pocl_devices: Option<&str>) -> Vec<(String, String, bool, String)> {
    let out = moemla(pocl_devices, &["devices", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (list.as_array().unwrap().iter())
        .filter(|d| d["id"].as_str().unwrap().starts_with("opencl:"))
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["name"].as_str().unwrap().to_string(),
                d["available"].as_bool().unwrap(),
                d["info"]["device"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Whether PoCL's CPU device is here; a failure if it is not and `MOEMLA_REQUIRE` names
/// `opencl`.
fn pocl_here() -> bool {
    let listed = opencl_devices(None);
    let here = listed
        .first()
        .is_some_and(|(_, _, available, device)| *available && device.starts_with("pthread"));
    let required = std::env::var("MOEMLA_REQUIRE").is_ok_and(|r| {
        r.split(',')
            .any(|n| n.trim().eq_ignore_ascii_case("opencl"))
    });
    assert!(
        here || !required,
        "MOEMLA_REQUIRE names opencl, but PoCL's CPU device is not listed: {listed:?}"
    );
    if !here {
        eprintln!("skipped: no PoCL CPU device here ({listed:?})");
    }
    here
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pocl_default_has_opencl_0_and_opencl_1_is_an_error_naming_the_count() {
    if !pocl_here() {
        return;
    }
    let listed = opencl_devices(None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].0.as_str(), listed[0].1.as_str()),
        ("opencl:0", "opencl")
    );

    let out = moemla(
        None,
        &["conformance", "--backend", "opencl:0", "--filter", CASE],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 passed, 0 failed"), "{}", text(&out));

    let out = moemla(
        None,
        &[
            "conformance",
            "--backend",
            "opencl:1",
            "--require",
            "opencl:1",
            "--filter",
            CASE,
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(
            "required backend `opencl:1` is unavailable: `opencl` has 1 device here (opencl:0)"
        ),
        "{}",
        text(&out)
    );
}

#[test]
fn two_pocl_devices_are_both_listed_and_the_second_runs_the_golden_cases() {
    if !pocl_here() {
        return;
    }
    let two = Some("pthread pthread");
    let listed = opencl_devices(two);
    let ids: Vec<(&str, &str, bool)> = (listed.iter())
        .map(|(id, name, available, _)| (id.as_str(), name.as_str(), *available))
        .collect();
    assert_eq!(
        ids,
        [("opencl:0", "opencl", true), ("opencl:1", "opencl:1", true)],
        "{listed:?}"
    );

    // Selected by --backend and --require (names ignore case).
    let out = moemla(
        two,
        &[
            "conformance",
            "--backend",
            "OpenCL:1",
            "--require",
            "opencl:1",
            "--filter",
            CASE,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("opencl:1") && shown.contains("1 passed, 0 failed"),
        "{shown}"
    );

    // A third device required through MOEMLA_REQUIRE: missing, saying how many there are.
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["conformance", "--backend", "opencl:2", "--filter", CASE])
        .env("POCL_DEVICES", "pthread pthread")
        .env("MOEMLA_REQUIRE", "opencl:2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("`opencl` has 2 devices here (opencl:0 to opencl:1)"),
        "{}",
        text(&out)
    );
}
