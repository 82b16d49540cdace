//! `--filter` and the default golden directories.

mod common;

use common::{fixture_set, TempDir};
use moemla_conformance::filter::filter_cases;
use moemla_conformance::golden::{committed_dir, default_dirs, GOLDEN_ENV};
use moemla_conformance::load_cases;

/// Case names kept by `pattern` from the fixtures plus a malformed `moe_route/` file.
fn kept(pattern: &str) -> Vec<String> {
    let dir = TempDir::new("filter");
    fixture_set(&dir.0);
    std::fs::write(dir.join("moe_route/f32/broken.safetensors"), b"broken").unwrap();
    let names = filter_cases(load_cases(&[&dir.0]), pattern).into_iter();
    names
        .map(|c| c.map_or_else(|e| e.name, |c| c.name))
        .collect()
}

#[test]
fn filter_takes_an_op_name_or_a_path_glob() {
    assert_eq!(
        kept("mla_decode"),
        [
            "mla_decode/bf16/mla.safetensors",
            "mla_decode/f32/mla.safetensors"
        ]
    );
    assert_eq!(
        kept("moe_route"),
        [
            "moe_route/bf16/route.safetensors",
            "moe_route/f32/broken.safetensors",
            "moe_route/f32/route.safetensors"
        ]
    );
    assert_eq!(kept("*/bf16/*").len(), 3);
    assert_eq!(
        kept("moe_?????ts/f32/*"),
        ["moe_experts/f32/experts.safetensors"]
    );
    assert!(
        kept("mla").is_empty(),
        "a partial op name is a glob, and matches nothing"
    );
}

#[test]
fn golden_dirs_default_to_the_committed_set_unless_overridden() {
    // The only test in this binary that touches the environment.
    std::env::remove_var(GOLDEN_ENV);
    assert!(committed_dir().ends_with("conformance/golden"));
    assert!(
        committed_dir().is_dir(),
        "the committed golden set is missing"
    );
    // Tests run in the crate directory, which has no conformance/golden below it.
    assert_eq!(default_dirs().unwrap(), [committed_dir()]);
    let list = std::env::join_paths(["/a/golden", "/b"]).unwrap();
    std::env::set_var(GOLDEN_ENV, &list);
    assert_eq!(
        default_dirs().unwrap(),
        [std::path::PathBuf::from("/a/golden"), "/b".into()]
    );
    // Empty entries are an error naming the variable and the entry, never empty names.
    let lists: [(&[&str], &str); 3] = [
        (&["", "", ""], "number 1 of 3"), // MOEMLA_GOLDEN='::'
        (&["/a", "", "/b"], "number 2 of 3"),
        (&["/a", ""], "number 2 of 2"),
    ];
    for (entries, entry) in lists {
        let list = std::env::join_paths(entries).unwrap();
        std::env::set_var(GOLDEN_ENV, &list);
        let err = default_dirs().unwrap_err();
        assert!(
            err.contains(GOLDEN_ENV) && err.contains("empty entry"),
            "{err}"
        );
        assert!(err.contains(entry), "{list:?}: {err}");
    }
    // An empty variable is unset.
    std::env::set_var(GOLDEN_ENV, "");
    assert_eq!(default_dirs().unwrap(), [committed_dir()]);
    std::env::remove_var(GOLDEN_ENV);
}

#[test]
fn filters_and_excludes_repeat_and_shards_partition_the_selection() {
    use moemla_conformance::filter::{case_id, Selection, Shard};
    let dir = TempDir::new("selection");
    fixture_set(&dir.0);
    let ids = |selection: &Selection| -> Vec<String> {
        (selection.apply(load_cases(&[&dir.0])).iter())
            .map(|c| case_id(c).to_string())
            .collect()
    };
    let both = Selection {
        filters: vec!["moe_route".into(), "*/f32/*".into()],
        excludes: vec!["moe_experts".into()],
        shard: None,
    };
    assert_eq!(
        ids(&both),
        [
            "mla_decode/f32/mla.safetensors",
            "moe_route/bf16/route.safetensors",
            "moe_route/f32/route.safetensors",
        ]
    );
    let all = ids(&Selection::default());
    let mut union = Vec::new();
    for index in 1..=3 {
        let shard = Some(Shard { index, count: 3 });
        union.extend(ids(&Selection {
            shard,
            ..Selection::default()
        }));
    }
    union.sort();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(union, sorted, "three shards run every case exactly once");
}

#[test]
fn case_ids_are_stable_under_subfolders_and_prefixed_with_several_roots() {
    use moemla_conformance::{golden_root, load_roots};
    let dir = TempDir::new("roots");
    fixture_set(&dir.0);
    let name = |c: &moemla_conformance::CaseFile| c.as_ref().unwrap().name.clone();
    // Pointing at an op folder, a dtype folder or one file keeps the whole set's IDs.
    let sub = load_cases(&[dir.join("moe_route/f32")]);
    assert_eq!(name(&sub[0]), "moe_route/f32/route.safetensors");
    let one = load_cases(&[dir.join("moe_route/f32/route.safetensors")]);
    assert_eq!(name(&one[0]), "moe_route/f32/route.safetensors");
    assert_eq!(
        golden_root(&dir.join("moe_route/f32")),
        (dir.0.clone(), "moe_route/f32/".to_string())
    );
    // Several roots: `<root name>:` prefixes, repeats numbered.
    let root = |d: &TempDir| d.0.file_name().unwrap().to_string_lossy().into_owned();
    let private = TempDir::new("private");
    fixture_set(&private.0);
    let twin = TempDir::new("twin");
    let same_name = twin.join(&root(&dir));
    fixture_set(&same_name);
    let cases = load_roots(&[dir.0.clone(), private.0.clone(), same_name]);
    let ids: Vec<String> = cases.iter().map(name).collect();
    let first = format!("{}:mla_decode/bf16/mla.safetensors", root(&dir));
    assert_eq!(ids[0], first);
    assert!(ids.contains(&format!(
        "{}:moe_route/f32/route.safetensors",
        root(&private)
    )));
    assert!(ids.contains(&format!("{}#2:moe_route/f32/route.safetensors", root(&dir))));
    // Globs and op names still match without the prefix.
    let kept = filter_cases(cases, "moe_route/f32/*");
    assert_eq!(kept.len(), 3);
    // Files and subfolders of one set are one root: no prefix.
    let parts = load_roots(&[
        dir.join("moe_route"),
        dir.join("mla_decode/f32/mla.safetensors"),
    ]);
    let ids: Vec<String> = parts.iter().map(name).collect();
    assert_eq!(ids[0], "moe_route/bf16/route.safetensors");
    assert_eq!(ids.last().unwrap(), "mla_decode/f32/mla.safetensors");
}
