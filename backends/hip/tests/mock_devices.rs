//! Several HIP devices, by ordinal, against the host-only mock runtime
//! (tests/mock/mock_hip.c) reporting two devices (`MOCK_HIP_DEVICES=2`) and the real hipRTC
//! (Debian's ROCm 5.2 `libamdhip64.so.5`): the factory lists `hip:0` and `hip:1`, opens
//! each under its own name, refuses a tensor of one on the other, and says how many devices
//! there are for `hip:2`.
//!
//! The only test of this binary (its own process): it sets `MOEMLA_HIP_LIB`,
//! `MOEMLA_HIPRTC_LIB` and `MOCK_HIP_DEVICES` before the first count. Skips without
//! clang-19 or hipRTC unless `MOEMLA_REQUIRE_TOOLCHAINS` names `clang-hip` / `hiprtc`.

mod common;

use common::{build_mock, DEBIAN_HIP};
use moemla_core::{Error, HostTensor};

#[test]
fn two_mock_devices_are_listed_opened_by_ordinal_and_keep_their_tensors() {
    let dir = std::env::temp_dir().join(format!("moemla-hip-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(mock) = build_mock(&dir, &[], "libmock_hip.so") else {
        return;
    };
    std::env::set_var("MOEMLA_HIP_LIB", &mock);
    std::env::set_var("MOEMLA_HIPRTC_LIB", DEBIAN_HIP);
    std::env::set_var("MOCK_HIP_DEVICES", "2");

    let factory = moemla_hip::factory();
    assert_eq!(moemla_hip::device_count(), 2);
    assert_eq!(factory.device_count(), 2);
    let zero = factory.open_device(0).expect("hip:0 opens");
    let one = factory.open_device(1).expect("hip:1 opens");
    assert_eq!((zero.name(), one.name()), ("hip", "hip:1"));
    assert_eq!(one.info().name, "hip:1");
    assert_eq!(
        factory.open().unwrap().name(),
        "hip",
        "`hip` alone is device 0"
    );

    // Each device keeps its tensors: a round trip on hip:1, a WrongBackend on hip:0.
    let host = HostTensor::from_slice([3], &[1i32, -2, 3]).unwrap();
    let on_one = one.upload(&host).unwrap();
    assert_eq!(on_one.backend(), "hip:1");
    assert_eq!(one.download(&on_one).unwrap(), host);
    assert_eq!(
        zero.download(&on_one).unwrap_err(),
        Error::WrongBackend {
            op: "download",
            arg: "tensor",
            expected: "hip".into(),
            got: "hip:1".into(),
        }
    );
    let on_zero = zero.upload(&host).unwrap();
    assert!(matches!(
        one.download(&on_zero),
        Err(Error::WrongBackend { ref expected, ref got, .. }) if expected == "hip:1" && got == "hip"
    ));

    // There is no third device: the error says how many there are.
    match factory.open_device(2) {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "hip:2");
            assert!(
                reason.contains("`hip` has 2 devices here (hip:0 to hip:1)"),
                "{reason}"
            );
        }
        other => panic!(
            "expected Unavailable, got {:?}",
            other.map(|b| b.name().to_string())
        ),
    }
    // Asked directly (past the factory's count), the runtime's own refusal names hip:2.
    let search = moemla_hip::flavour::SearchList::from_env();
    match moemla_hip::HipBackend::with_search(&search, 2) {
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "hip:2");
            assert!(
                reason.contains("HIP device 2 requested, 2 present"),
                "{reason}"
            );
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("hip:2 opened on a two-device runtime"),
    }
    std::fs::remove_dir_all(&dir).ok();
}
