//! Without an OpenCL platform the backend is `Unavailable` with the reason, not a panic.
//! The check runs in a child process (the backend is opened once per process) with the
//! ICD loader pointed at an empty vendor directory.

use moemla_core::Error;
use std::process::Command;

const CHILD: &str = "MOEMLA_OPENCL_TEST_CHILD";

#[test]
fn no_platform_gives_unavailable_with_the_reason() {
    if std::env::var_os(CHILD).is_some() {
        match moemla_opencl::shared() {
            Err(Error::Unavailable { backend, reason }) => {
                assert_eq!(backend, "opencl");
                // Either no ICD loader at all, or a loader that finds no platform.
                assert!(
                    reason.contains("no OpenCL platform") || reason.contains("ICD loader"),
                    "{reason}"
                );
            }
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("expected Unavailable, but a device opened"),
        }
        return;
    }
    let empty = std::env::temp_dir().join(format!("moemla-no-icd-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["no_platform_gives_unavailable_with_the_reason", "--exact"])
        .env(CHILD, "1")
        .env("OCL_ICD_VENDORS", &empty)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&empty).ok();
    assert!(
        out.status.success(),
        "child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
