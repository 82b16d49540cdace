//! The library is lean: `moemla` with only the `cpu` feature is moemla-core and the CPU
//! backend with their dependencies — none of the tools (clap, the conformance runner, the
//! benchmarks) — and README.md states how many crates that is.

use std::collections::BTreeSet;
use std::process::Command;

/// The distinct packages ("name version") `moemla` depends on, itself included, with
/// these cargo feature arguments (normal dependencies only).
fn packages(feature_args: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--manifest-path",
            manifest,
            "-p",
            "moemla",
        ])
        .args(["-e", "normal", "--prefix", "none", "--format", "{p}"])
        .args(feature_args)
        .output()
        .expect("run cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // "serde v1.0.2 (proc-macro)", "moemla-cpu v0.1.0 (/path) (*)": name and version.
            l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn names(packages: &BTreeSet<String>) -> BTreeSet<&str> {
    packages
        .iter()
        .filter_map(|p| p.split(' ').next())
        .collect()
}

#[test]
fn cpu_only_is_core_and_the_cpu_backend_without_the_tools_and_the_readme_counts_hold() {
    let lean = packages(&["--no-default-features", "--features", "cpu"]);
    let lean_names = names(&lean);
    for wanted in ["moemla", "moemla-core", "moemla-cpu"] {
        assert!(
            lean_names.contains(wanted),
            "{wanted} missing: {lean_names:?}"
        );
    }
    for unwanted in [
        "clap",
        "moemla-cli",
        "moemla-conformance",
        "moemla-benches",
        "criterion",
        "moemla-opencl",
        "moemla-cuda",
        "moemla-hip",
        "moemla-ascend",
        "moemla-plugin",
    ] {
        assert!(
            !lean_names.contains(unwanted),
            "`moemla` with only `cpu` pulls {unwanted}: {lean_names:?}"
        );
    }

    let full = packages(&[]);
    assert!(!names(&full).contains("clap"), "{full:?}");
    assert!(lean.is_subset(&full));

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    let sentence = format!(
        "`moemla` with only the `cpu` feature is {} crates (itself included); with the \
         default features, {}.",
        lean.len(),
        full.len()
    );
    assert!(
        readme.replace('\n', " ").contains(&sentence),
        "README.md does not state the crate counts as they are; it should say:\n{sentence}"
    );
}
