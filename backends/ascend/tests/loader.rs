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
    let every_lib = "libascendcl.so, libnnopbase.so, libopapi.so, libopapi_math.so, \
                     libopapi_nn.so, libopapi_cv.so, libopapi_transformer.so";
    assert!(
        reason.contains(&format!("/bogus/cann/dir: none of {every_lib} found")),
        "{reason}"
    );

    // A directory with neither CANN nor the emulator lists every name it looked for.
    let empty = std::env::temp_dir();
    std::env::set_var("MOEMLA_ASCEND_LIB_DIR", &empty);
    let reason = unavailable_reason();
    assert!(
        reason.contains(&format!("{}: none of {every_lib} found", empty.display())),
        "{reason}"
    );

    // The CANN roots: each root's five directories in one group, the message a few lines.
    std::env::remove_var("MOEMLA_ASCEND_LIB_DIR");
    std::env::set_var("ASCEND_HOME_PATH", "/bogus/home");
    std::env::set_var("ASCEND_TOOLKIT_HOME", "/bogus/toolkit");
    let reason = unavailable_reason();
    let op_api = "opp/built-in/op_impl/ai_core/tbe/op_api/lib/linux";
    for root in ["/bogus/home", "/bogus/toolkit"] {
        let dirs = format!(
            "{root}/{{lib64, aarch64-linux/lib64, {op_api}/aarch64, x86_64-linux/lib64, \
             {op_api}/x86_64}}"
        );
        assert!(
            reason.contains(&format!("{dirs}: none of {every_lib} found")),
            "{reason}"
        );
    }
    assert!(reason.len() < 1200, "{} chars: {reason}", reason.len());
    std::env::remove_var("ASCEND_HOME_PATH");
    std::env::remove_var("ASCEND_TOOLKIT_HOME");

    // A file that exists but is no library: dlerror's own text is passed on (libloading
    // displays only "dlopen failed"; the reason is the error's source).
    std::env::set_var("MOEMLA_ASCEND_LIB", "/proc/self/status");
    let reason = unavailable_reason();
    // SAFETY: dlopen of a file that is not a library fails before running any code.
    let err = unsafe { libloading::Library::new("/proc/self/status") }.unwrap_err();
    let dlerror = std::error::Error::source(&err)
        .expect("libloading keeps dlerror's text as the source")
        .to_string();
    assert!(
        !dlerror.is_empty() && dlerror != "dlopen failed",
        "{dlerror}"
    );
    assert!(
        reason.contains(&format!("/proc/self/status: dlopen failed: {dlerror}")),
        "{reason}"
    );
    assert!(!reason.contains("not found"), "{reason}");

    // A library without the CANN symbols: every missing required symbol is named.
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
        reason.contains("libascendcl.so: missing required symbols aclInit, aclFinalize, ")
            && reason.contains(", aclGetRecentErrMsg)"),
        "{reason}"
    );
}
