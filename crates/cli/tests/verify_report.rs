//! `moemla conformance --verify`: a report the CLI wrote verifies (exit 0); a tampered
//! golden file and a tampered report fail with exit code 7, naming what differs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moemla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(args)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_ALLOW_UNSUPPORTED")
        .env_remove("MOEMLA_BACKEND")
        .env_remove("MOEMLA_GOLDEN")
        .output()
        .expect("run moemla")
}

/// The exit code and stdout, with the output shown if the code is not `want`.
fn expect(out: &Output, want: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(want),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_written_report_verifies_and_tampering_fails_with_code_7() {
    let tmp = TempDir(std::env::temp_dir().join(format!("moemla-verify-{}", std::process::id())));
    // A small golden set: the committed f32 routing cases, copied.
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/golden");
    let golden = tmp.0.join("golden/moe_route/f32");
    std::fs::create_dir_all(&golden).unwrap();
    for entry in std::fs::read_dir(committed.join("moe_route/f32")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), golden.join(entry.file_name())).unwrap();
    }
    let root = tmp.0.join("golden");
    let (root, json) = (root.to_str().unwrap(), tmp.0.join("r.json"));
    let json = json.to_str().unwrap();
    let out = moemla(&[
        "conformance",
        "--backend",
        "cpu",
        "--golden",
        root,
        "--json",
        json,
    ]);
    let text = expect(&out, 0);
    assert!(text.contains("golden set sha256 "), "{text}");

    let text = expect(
        &moemla(&["conformance", "--verify", json, "--golden", root]),
        0,
    );
    assert!(text.starts_with("verified "), "{text}");

    // A tampered report: one cell's status.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    doc["results"][0]["status"] = "unsupported".into();
    let tampered = tmp.0.join("tampered.json");
    std::fs::write(&tampered, doc.to_string()).unwrap();
    let tampered = tampered.to_str().unwrap();
    let text = expect(
        &moemla(&["conformance", "--verify", tampered, "--golden", root]),
        7,
    );
    assert!(text.contains("summary.passed"), "{text}");

    // A tampered golden file: one byte of v3_t1.
    let case = golden.join("v3_t1.safetensors");
    let mut bytes = std::fs::read(&case).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&case, bytes).unwrap();
    let text = expect(
        &moemla(&["conformance", "--verify", json, "--golden", root]),
        7,
    );
    assert!(text.contains("moe_route/f32/v3_t1.safetensors"), "{text}");

    // An unreadable report is a usage error.
    let missing = tmp.0.join("none.json");
    expect(
        &moemla(&["conformance", "--verify", missing.to_str().unwrap()]),
        2,
    );
}
