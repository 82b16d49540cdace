//! `moemla conformance --verify`: a report the CLI wrote verifies (exit 0); a tampered
//! golden file and a tampered report fail with exit code 7, naming what differs.

mod common;

use common::{assert_code, golden, moemla, temp_dir};

#[test]
fn a_written_report_verifies_and_tampering_fails_with_code_7() {
    let tmp = temp_dir("verify");
    // A small golden set: the committed f32 routing cases, copied.
    let committed = golden();
    let golden = tmp.join("golden/moe_route/f32");
    std::fs::create_dir_all(&golden).unwrap();
    for entry in std::fs::read_dir(committed.join("moe_route/f32")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), golden.join(entry.file_name())).unwrap();
    }
    let root = tmp.join("golden");
    let (root, json) = (root.to_str().unwrap(), tmp.join("r.json"));
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
    let text = assert_code(&out, 0);
    assert!(text.contains("golden set sha256 "), "{text}");

    let text = assert_code(
        &moemla(&["conformance", "--verify", json, "--golden", root]),
        0,
    );
    assert!(text.starts_with("verified "), "{text}");

    // A tampered report: one cell's status.
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    doc["results"][0]["status"] = "unsupported".into();
    let tampered = tmp.join("tampered.json");
    std::fs::write(&tampered, doc.to_string()).unwrap();
    let tampered = tampered.to_str().unwrap();
    let text = assert_code(
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
    let text = assert_code(
        &moemla(&["conformance", "--verify", json, "--golden", root]),
        7,
    );
    assert!(text.contains("moe_route/f32/v3_t1.safetensors"), "{text}");

    // An unreadable report is a usage error.
    let missing = tmp.join("none.json");
    assert_code(
        &moemla(&["conformance", "--verify", missing.to_str().unwrap()]),
        2,
    );
}
