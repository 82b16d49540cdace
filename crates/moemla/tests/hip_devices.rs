//! Several HIP devices through the registry: the HIP backend over the host-only mock
//! runtime (backends/hip/tests/mock/mock_hip.c, two devices by `MOCK_HIP_DEVICES=2`) and the
//! real hipRTC (Debian's ROCm 5.2 `libamdhip64.so.5`) lists `hip:0` and `hip:1`, selects
//! each, and names the device count for `hip:2`.
//!
//! The only test of this binary (its own process): it sets `MOEMLA_HIP_LIB`,
//! `MOEMLA_HIPRTC_LIB` and `MOCK_HIP_DEVICES` before the first count. Skips without
//! clang-19 or hipRTC unless `MOEMLA_REQUIRE_TOOLCHAINS` names `clang-hip` / `hiprtc`.
#![cfg(feature = "hip")]

#[path = "../../../backends/hip/tests/common/mod.rs"]
mod hip_mock;

use hip_mock::{build_mock, DEBIAN_HIP};
use moemla::core::{Error, HostTensor};
use moemla::Registry;

#[test]
fn hip_0_and_hip_1_are_listed_and_selectable_and_hip_2_names_the_count() {
    let dir = std::env::temp_dir().join(format!("moemla-hip-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(mock) = build_mock(&dir, &[], "libmock_hip.so") else {
        return;
    };
    std::env::set_var("MOEMLA_HIP_LIB", &mock);
    std::env::set_var("MOEMLA_HIPRTC_LIB", DEBIAN_HIP);
    std::env::set_var("MOCK_HIP_DEVICES", "2");

    let hip: Vec<_> = (moemla::factories().into_iter())
        .filter(|f| f.name() == "hip")
        .collect();
    let registry = Registry::new(hip);
    let listed: Vec<(String, String)> = (registry.discover().iter())
        .map(|e| {
            let opened = e.backend.as_ref().map(|b| b.name().to_string());
            (e.id(), opened.unwrap_or_else(|err| err.to_string()))
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("hip:0".to_string(), "hip".to_string()),
            ("hip:1".to_string(), "hip:1".to_string())
        ]
    );

    let zero = registry.select(Some("hip")).unwrap();
    let one = registry.select(Some("HIP:1")).unwrap();
    assert_eq!((zero.name(), one.name()), ("hip", "hip:1"));
    assert_eq!(registry.select(Some("hip:0")).unwrap().name(), "hip");
    let host = HostTensor::from_slice([2], &[5i32, 6]).unwrap();
    let on_one = one.upload(&host).unwrap();
    assert!(matches!(
        zero.download(&on_one),
        Err(Error::WrongBackend { ref expected, ref got, .. }) if expected == "hip" && got == "hip:1"
    ));

    let err = registry.select(Some("hip:2")).err().expect("no hip:2");
    assert!(
        err.to_string()
            .contains("`hip` has 2 devices here (hip:0 to hip:1)"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
