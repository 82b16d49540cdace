//! Loading plugins: what moemla shows for a good plugin, and that every kind of bad file
//! (wrong ABI major, not a library, no entry point, NULL table, a table that ends early)
//! is `Error::Unavailable` with the reason, never a crash.

mod common;

use common::{build, build_example, built_or_skip, fixture, library_file, EXAMPLE};
use moemla_core::{ops, Error, HostTensor, OpSupport, RouteParams, ScoreFunc, VerificationKind};
use moemla_plugin::factory_for;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The reason of an `Unavailable` error from opening `path`'s factory, which must be
/// named `name`.
fn unavailable_reason(path: &Path, name: &str) -> String {
    let factory = factory_for(path);
    assert_eq!(factory.name(), name, "factory name for {}", path.display());
    assert_eq!(
        factory.claimed_verification().kind,
        VerificationKind::Unverified,
        "an unloadable plugin claims nothing"
    );
    match factory.open() {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, name);
            reason
        }
        Err(other) => panic!("{}: expected Unavailable, got {other}", path.display()),
        Ok(_) => panic!("{}: opened, expected Unavailable", path.display()),
    }
}

/// What `dlopen` (through libloading) says about `path`: the text the reason must carry.
fn dlopen_error(path: &Path) -> String {
    // SAFETY: the test only asks for the error of a file that is not a loadable library
    // (no initialiser can run).
    let err = unsafe { libloading::Library::new(path) }.expect_err("must not load");
    std::error::Error::source(&err)
        .expect("libloading keeps dlerror's text as the source")
        .to_string()
}

#[test]
fn the_example_plugin_is_listed_with_its_own_name_and_marked_claim() {
    let Some(path) = built_or_skip(build_example("moemla_example", &[])) else {
        return;
    };
    let factory = factory_for(&path);
    assert_eq!(factory.name(), EXAMPLE);
    let claimed = factory.claimed_verification();
    assert_eq!(claimed.kind, VerificationKind::Plugin);
    let file = library_file("moemla_example");
    assert!(
        claimed.detail.starts_with(&format!(
            "claimed by plugin {file}, not checked by moemla: unverified; "
        )),
        "{}",
        claimed.detail
    );
    let backend = factory.open().expect("open the example plugin");
    let info = backend.info();
    assert_eq!(info.name, EXAMPLE);
    assert_eq!(backend.name(), EXAMPLE);
    assert_eq!(info.vendor, "moemla example plugin (C99)");
    assert_eq!(info.device, "host CPU");
    assert_eq!(info.memory_bytes, None);
    assert_eq!(info.verification, *claimed);
    let listed: HashSet<_> = info.supported.iter().copied().collect();
    let all: HashSet<_> = OpSupport::all_v1().into_iter().collect();
    assert_eq!(listed, all);
    assert_eq!(info.notes[0], "device type: CPU");
    assert!(
        info.notes[1].contains("(ABI 1.0; this moemla: 1.0)"),
        "{:?}",
        info.notes
    );
    assert!(
        info.notes[2].starts_with("single-threaded scalar C99"),
        "{:?}",
        info.notes
    );
}

#[test]
fn a_wrong_major_version_is_unavailable_with_the_reason() {
    let built = build_example("moemla_example_major99", &["-DMOEMLA_EXAMPLE_ABI_MAJOR=99"]);
    let Some(path) = built_or_skip(built) else {
        return;
    };
    let reason = unavailable_reason(&path, "moemla_example_major99");
    assert!(
        reason.contains("plugin ABI 99.0 is incompatible with this moemla (plugin ABI 1.0)"),
        "{reason}"
    );
    assert!(reason.contains(&path.display().to_string()), "{reason}");
}

#[test]
fn a_newer_minor_version_is_accepted() {
    let built = build_example("moemla_example_minor7", &["-DMOEMLA_EXAMPLE_ABI_MINOR=7"]);
    let Some(path) = built_or_skip(built) else {
        return;
    };
    let backend = factory_for(&path).open().expect("a newer minor opens");
    let notes = backend.info().notes;
    assert!(
        notes[1].contains("(ABI 1.7; this moemla: 1.0)"),
        "{notes:?}"
    );
    // And it computes: two tokens, four experts, softmax top-2 without groups.
    let logits = [0.0f32, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0];
    let logits = backend
        .upload(&HostTensor::from_slice([2, 4], &logits).unwrap())
        .unwrap();
    let p = RouteParams {
        score_func: ScoreFunc::Softmax,
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    let out = ops::moe_route(&*backend, &logits, None, &p).expect("moe_route");
    let ids = backend
        .download(&out.topk_ids)
        .unwrap()
        .to_i32_vec()
        .unwrap();
    let weights = backend
        .download(&out.topk_weights)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    assert_eq!(ids, [3, 2, 0, 1]);
    let z: f64 = (0..4).map(|i| f64::from(i).exp()).sum();
    let want = [
        3f64.exp() / z,
        2f64.exp() / z,
        3f64.exp() / z,
        2f64.exp() / z,
    ];
    for (got, want) in weights.iter().zip(want) {
        assert!(
            (f64::from(*got) - want).abs() < 1e-6,
            "{weights:?} vs {want}"
        );
    }
}

#[test]
fn a_table_that_ends_before_a_required_function_is_unavailable() {
    // What a table of an older minor looks like: its struct_size ends after `synchronize`.
    // The loader must read nothing past it.
    let size = "-DMOEMLA_EXAMPLE_API_STRUCT_SIZE=MOEMLA_STRUCT_SIZE(MoemlaPluginApi,synchronize)";
    let Some(path) = built_or_skip(build_example("moemla_example_short", &[size])) else {
        return;
    };
    let reason = unavailable_reason(&path, "moemla_example_short");
    assert!(
        reason.contains("the function table (ABI 1.0, struct_size")
            && reason.contains("lacks `moe_route`, which ABI 1.0 requires"),
        "{reason}"
    );
}

#[test]
fn a_table_too_small_for_its_version_fields_is_unavailable() {
    let built = build_example(
        "moemla_example_tiny",
        &["-DMOEMLA_EXAMPLE_API_STRUCT_SIZE=4"],
    );
    let Some(path) = built_or_skip(built) else {
        return;
    };
    let reason = unavailable_reason(&path, "moemla_example_tiny");
    assert!(
        reason.contains("the function table's struct_size is 4, smaller than its version fields"),
        "{reason}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_unavailable_with_dlerrors_text() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moemla-plugin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(library_file("not_a_library"));
    std::fs::write(&path, "this is a text file, not a shared library\n").unwrap();
    let reason = unavailable_reason(&path, "not_a_library");
    let dlerror = dlopen_error(&path);
    assert!(
        reason.starts_with(&format!("cannot load {}: dlopen failed: ", path.display())),
        "{reason}"
    );
    assert!(
        reason.contains(&dlerror),
        "{reason:?} lacks dlerror's {dlerror:?}"
    );
}

#[test]
fn a_missing_file_is_unavailable_with_dlerrors_text() {
    let path = Path::new("/nonexistent/moemla/libghost_npu.so.1");
    let reason = unavailable_reason(path, "ghost_npu");
    let dlerror = dlopen_error(path);
    assert!(
        reason.contains(&dlerror),
        "{reason:?} lacks dlerror's {dlerror:?}"
    );
}

#[test]
fn a_library_without_the_entry_point_is_unavailable_with_dlerrors_text() {
    let built = build("no_entry_point", &[fixture("no_entry_point.c")], &[]);
    let Some(path) = built_or_skip(built) else {
        return;
    };
    let reason = unavailable_reason(&path, "no_entry_point");
    assert!(
        reason.contains("is not a moemla plugin: it does not export `moemla_plugin_get_api`"),
        "{reason}"
    );
    // dlsym's own words name the symbol (glibc: "...: undefined symbol: moemla_plugin_get_api").
    assert!(reason.contains("dlsym failed: "), "{reason}");
    assert!(
        reason.matches("moemla_plugin_get_api").count() >= 2,
        "dlerror's text names the symbol too: {reason}"
    );
}

#[test]
fn a_null_table_is_unavailable() {
    let Some(path) = built_or_skip(build("null_table", &[fixture("null_table.c")], &[])) else {
        return;
    };
    let reason = unavailable_reason(&path, "null_table");
    assert!(
        reason.ends_with("`moemla_plugin_get_api` returned NULL"),
        "{reason}"
    );
}

#[test]
fn each_open_is_its_own_device_and_tensors_do_not_cross() {
    let Some(path) = built_or_skip(build_example("moemla_example", &[])) else {
        return;
    };
    let factory = factory_for(&path);
    let a = factory.open().unwrap();
    let b = factory.open().unwrap();
    let logits = a
        .upload(&HostTensor::from_slice([1, 4], &[0.0f32, 1.0, 2.0, 3.0]).unwrap())
        .unwrap();
    let p = RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    let err = ops::moe_route(&*b, &logits, None, &p).unwrap_err();
    assert_eq!(
        err,
        Error::WrongBackend {
            op: "moe_route",
            arg: "logits",
            expected: format!("{EXAMPLE} (this device)"),
            got: format!("{EXAMPLE} (another device of the same plugin)"),
        }
    );
    assert!(b.download(&logits).is_err(), "download from another device");
    // The tensor keeps its device open after its backend is gone.
    drop(a);
    drop(b);
    drop(logits);
}

#[test]
fn path_lists_give_one_factory_per_file_in_order() {
    let Some(path) = built_or_skip(build_example("moemla_example", &[])) else {
        return;
    };
    let list = std::env::join_paths([
        path.as_path(),
        Path::new(""),
        Path::new("/nonexistent/libghost.so"),
    ])
    .unwrap();
    let factories = moemla_plugin::factories_from_path_list(&list);
    let names: Vec<_> = factories.iter().map(|f| f.name()).collect();
    assert_eq!(names, [EXAMPLE, "ghost"]);
    assert!(factories[0].open().is_ok());
    assert!(matches!(
        factories[1].open(),
        Err(Error::Unavailable { .. })
    ));
}
