//! The backend never panics where the driver, NVRTC or a device is missing.

use moemla_core::{Backend, Error, VerificationKind};
use moemla_cuda::CudaBackend;

#[test]
fn constructing_the_backend_reports_unavailable_or_a_compile_only_device() {
    match CudaBackend::new() {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(!reason.is_empty());
            eprintln!("cuda unavailable here: {reason}");
        }
        Ok(b) => {
            let info = b.info();
            assert_eq!(info.name, "cuda");
            assert_eq!(info.verification.kind, VerificationKind::CompileOnly);
        }
        Err(other) => panic!("expected Unavailable or a backend, got {other}"),
    }
}
