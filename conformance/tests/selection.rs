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
