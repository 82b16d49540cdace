//! The loader reports a missing CANN as `Unavailable`, listing every path it tried.
//! One test function: it changes process-wide environment variables.

use moemla_ascend::AscendBackend;
use moemla_core::Error;

fn unavailable_reason() -> String {
    match AscendBackend::new() {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "ascend");
            reason
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("expected Unavailable, the backend opened"),
    }
}

#[test]
fn missing_cann_is_unavailable_with_every_path_tried() {
    std::env::remove_var("MOEMLA_ASCEND_LIB");
    std::env::set_var("MOEMLA_ASCEND_LIB_DIR", "/bogus/cann/dir");
    let reason = unavailable_reason();
    for lib in [
        "libascendcl.so",
        "libnnopbase.so",
        "libopapi.so",
        "libopapi_math.so",
        "libopapi_nn.so",
        "libopapi_cv.so",
        "libopapi_transformer.so",
    ] {
        assert!(
            reason.contains(&format!("/bogus/cann/dir/{lib}: not found")),
            "{reason}"
        );
    }

    // A directory with neither CANN nor the emulator lists every name it looked for.
    let empty = std::env::temp_dir();
    std::env::set_var("MOEMLA_ASCEND_LIB_DIR", &empty);
    let reason = unavailable_reason();
    assert!(
        reason.contains(&format!(
            "{}: not found",
            empty.join("libascendcl.so").display()
        )),
        "{reason}"
    );

    // A file that exists but is no library: the loader's own error text is passed on.
    std::env::set_var("MOEMLA_ASCEND_LIB", "/proc/self/status");
    let reason = unavailable_reason();
    assert!(reason.contains("/proc/self/status: "), "{reason}");
    assert!(!reason.contains("not found"), "{reason}");

    // A library without the CANN symbols: the missing symbol is named.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("a libc.so.6 to load");
    std::env::set_var("MOEMLA_ASCEND_LIB", libc);
    std::env::remove_var("MOEMLA_ASCEND_LIB_DIR");
    let reason = unavailable_reason();
    assert!(
        reason.contains("missing required symbol aclInit"),
        "{reason}"
    );
}
