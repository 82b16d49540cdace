//! `MOEMLA_HIP_LIB` is tried first. The only test in this binary (its own process), so
//! setting the variable races with nothing.

use moemla_core::Error;
use moemla_hip::HipBackend;

#[test]
fn moemla_hip_lib_is_tried_first_and_reported() {
    let bogus = "/nonexistent/moemla-env-test/libamdhip64.so";
    // This process runs this single test: no other thread reads the environment.
    std::env::set_var("MOEMLA_HIP_LIB", bogus);
    match HipBackend::new() {
        Err(Error::Unavailable { reason, .. }) => {
            let entry = format!("{bogus} (not found)");
            assert!(reason.contains(&entry), "{reason}");
            // First in the list: either the first tried or the first not used.
            let first = reason.find("/nonexistent/moemla-env-test").unwrap();
            let other = reason.find("/opt/rocm").unwrap_or(usize::MAX);
            assert!(first < other, "{reason}");
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => eprintln!("a HIP device is present; the override was skipped for a real one"),
    }
}
