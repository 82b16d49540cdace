//! The backend never panics where the driver, NVRTC or a device is missing.

use moemla_core::{Backend, Error, VerificationKind};
use moemla_cuda::CudaBackend;

#[test]
fn constructing_the_backend_reports_unavailable_or_a_device_with_its_verification() {
    match CudaBackend::new() {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(!reason.is_empty());
            eprintln!("cuda unavailable here: {reason}");
        }
        Ok(b) => {
            let info = b.info();
            assert_eq!(info.name, "cuda");
            // Silicon exactly on the verified device, unverified on any other.
            let (name, arch, _) = moemla_cuda::VERIFIED_ON;
            let want = if info.device == format!("{name} (sm_{arch})") {
                VerificationKind::Silicon
            } else {
                VerificationKind::Unverified
            };
            assert_eq!(info.verification.kind, want, "{}", info.device);
        }
        Err(other) => panic!("expected Unavailable or a backend, got {other}"),
    }
}

/// Devices by ordinal: the factory lists the driver's count (at least device 0), opens
/// each under its own name (`cuda`, `cuda:1`, ...), and refuses the ordinal past the last
/// naming how many there are.
#[test]
fn the_factory_lists_the_drivers_devices_by_ordinal() {
    let factory = moemla_cuda::factory();
    let count = moemla_cuda::device_count();
    assert_eq!(factory.device_count(), count.max(1));
    for i in 0..count {
        let b = factory.open_device(i).expect("a counted device opens");
        assert_eq!(b.name(), moemla_core::device_backend_name("cuda", i));
    }
    let past = factory.device_count();
    match factory.open_device(past) {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, format!("cuda:{past}"));
            let devices = if past == 1 { "device" } else { "devices" };
            assert!(
                reason.contains(&format!("`cuda` has {past} {devices} here")),
                "{reason}"
            );
        }
        other => panic!(
            "expected Unavailable, got {:?}",
            other.map(|b| b.name().to_string())
        ),
    }
}
