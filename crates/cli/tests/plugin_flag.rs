//! `moemla --plugin FILE`: a C plugin appears like any backend; one that cannot load is
//! listed as unavailable with the reason, never a crash.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moemla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(args)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_BACKEND")
        .env_remove("MOEMLA_PLUGIN_PATH")
        .output()
        .expect("run moemla")
}

fn devices(args: &[&str]) -> Vec<serde_json::Value> {
    let out = moemla(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    json.as_array().expect("a list").clone()
}

/// Compiles examples/plugin-c (as its Makefile does) with `$CC`, else `cc`.
fn example_plugin() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugin-c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}moemla_example_cli{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&compiler)
        .args([
            "-std=c99",
            "-O2",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-I",
        ])
        .arg(dir.join("../../include"))
        .args([dir.join("plugin.c"), dir.join("ops.c")])
        .arg("-o")
        .arg(&out)
        .arg("-lm")
        .status()
        .unwrap_or_else(|e| panic!("run the C compiler `{compiler}`: {e}"));
    assert!(status.success(), "{compiler} failed on examples/plugin-c");
    out
}

#[test]
fn a_plugin_that_cannot_load_is_listed_unavailable_with_the_reason() {
    let missing = std::env::temp_dir().join("no-such-dir/libacme_missing.so");
    let list = devices(&["--plugin", missing.to_str().unwrap(), "devices", "--json"]);
    let acme = (list.iter())
        .find(|d| d["name"] == "acme_missing")
        .unwrap_or_else(|| panic!("plugin listed: {list:?}"));
    assert_eq!(acme["available"], false);
    let reason = acme["reason"].as_str().unwrap();
    assert!(reason.contains("libacme_missing.so"), "{reason}");
    // The compiled-in backends are all still there, the CPU available.
    let cpu = list.iter().find(|d| d["name"] == "cpu").unwrap();
    assert_eq!(cpu["available"], true);
}

#[test]
fn the_example_c_plugin_passes_conformance_through_the_plugin_flag() {
    let plugin = example_plugin();
    let list = devices(&["--plugin", plugin.to_str().unwrap(), "devices", "--json"]);
    let example = list.iter().find(|d| d["name"] == "example_c");
    assert_eq!(example.unwrap()["available"], true, "{list:?}");

    let out = moemla(&[
        "conformance",
        "--plugin",
        plugin.to_str().unwrap(),
        "--backend",
        "example_c",
        "--require",
        "example_c",
        "--filter",
        "moe_route",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
