//! `factories_from_env` reads `MOEMLA_PLUGIN_PATH`. The only test in this binary, so
//! setting the variable races with nothing.

mod common;

use moemla_core::Error;

#[test]
fn plugin_path_lists_the_factories() {
    std::env::remove_var(moemla_plugin::PLUGIN_PATH_ENV);
    assert!(moemla_plugin::factories_from_env().is_empty());

    let Some(path) = common::built_or_skip(common::build_example("moemla_example", &[])) else {
        return;
    };
    let list = format!("{}:/nonexistent/libacme_npu.so", path.display());
    std::env::set_var(moemla_plugin::PLUGIN_PATH_ENV, &list);
    let factories = moemla_plugin::factories_from_env();
    let names: Vec<_> = factories.iter().map(|f| f.name()).collect();
    assert_eq!(names, [common::EXAMPLE, "acme_npu"]);
    assert_eq!(factories[0].open().unwrap().name(), common::EXAMPLE);
    match factories[1].open() {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "acme_npu");
            assert!(reason.contains("/nonexistent/libacme_npu.so"), "{reason}");
        }
        other => panic!("expected Unavailable, got {:?}", other.map(|_| ())),
    }
}
