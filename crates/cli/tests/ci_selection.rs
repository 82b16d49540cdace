//! What a CI pipeline scripts against beside exit codes: `--list`, `--shard`, several
//! `--golden` roots, `moemla goldens export`.

mod common;

use common::{assert_code, golden, moemla, temp_dir};

/// The lines `moemla conformance --list ARGS` prints (it must succeed).
fn list(args: &[&str]) -> Vec<String> {
    let out = moemla(&[&["conformance", "--list"], args].concat());
    assert_code(&out, 0).lines().map(str::to_string).collect()
}

#[test]
fn list_prints_case_ids_and_shards_split_them_once_each() {
    let all = list(&[]);
    assert_eq!(all.len(), 72, "the committed v1 set");
    assert!(all
        .iter()
        .all(|id| id.ends_with(".safetensors") && !id.contains(':')));
    let mut union: Vec<String> = (1..=3)
        .flat_map(|i| list(&["--shard", &format!("{i}/3")]))
        .collect();
    union.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(union, sorted);
    // Filters and excludes repeat; IDs do not depend on the folder pointed at.
    let route = list(&[
        "--filter",
        "moe_route",
        "--filter",
        "mla_decode",
        "--exclude",
        "*/bf16/*",
    ]);
    assert!(route
        .iter()
        .all(|id| !id.contains("/bf16/") && !id.starts_with("moe_experts")));
    let sub = golden().join("moe_route/f32");
    let via_sub = list(&["--golden", sub.to_str().unwrap()]);
    let via_root = list(&["--filter", "moe_route/f32/*"]);
    assert_eq!(via_sub, via_root);
}

#[test]
fn goldens_export_copies_the_set_a_copied_binary_runs() {
    let tmp = temp_dir("export");
    let dir = tmp.join("copy");
    assert_code(&moemla(&["goldens", "export", dir.to_str().unwrap()]), 0);
    let exported = list(&["--golden", dir.to_str().unwrap()]);
    assert_eq!(exported, list(&[]), "same case IDs as the committed set");
    let a = std::fs::read(dir.join(&exported[0])).unwrap();
    assert_eq!(a, std::fs::read(golden().join(&exported[0])).unwrap());
    // Not into a directory that has files.
    let again = moemla(&["goldens", "export", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    // Two roots: IDs prefixed with each root's name.
    let both = list(&[
        "--golden",
        golden().to_str().unwrap(),
        "--golden",
        dir.to_str().unwrap(),
        "--filter",
        "moe_route/f32/v2_t1*",
    ]);
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        both,
        [
            "golden:moe_route/f32/v2_t1.safetensors".to_string(),
            format!("{name}:moe_route/f32/v2_t1.safetensors"),
        ]
    );
}
