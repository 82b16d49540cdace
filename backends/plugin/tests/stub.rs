//! The loader against a stub plugin (tests/fixtures/stub_plugin.c): a device the plugin
//! cannot open, what a device reports (kind, memory, a narrow supported list with a
//! duplicate and an unknown pair), the plugin's own errors mapped to the contract's, the
//! loader's `Unsupported` for pairs the device does not list, and every buffer freed and
//! every device closed exactly once (the stub counts them).

mod common;

use common::{build, built_or_skip, fixture, library_file};
use moemla_core::{
    ops, DType, DeviceKind, Error, ExpertsParams, HostTensor, MlaDecodeParams, Op, OpSupport,
    RouteParams, VerificationKind,
};
use moemla_plugin::factory_for;
use std::ffi::c_long;

#[test]
fn a_plugin_whose_device_is_missing_is_unavailable_with_its_reason() {
    let built = build("stub_no_device", &[fixture("stub_plugin.c")], &[]);
    let Some(path) = built_or_skip(built) else {
        return;
    };
    let factory = factory_for(&path);
    assert_eq!(factory.name(), "stub");
    match factory.open() {
        Err(e) => assert_eq!(
            e,
            Error::Unavailable {
                backend: "stub".into(),
                reason: "no Acme NPU found (tried /dev/acme0)".into(),
            }
        ),
        Ok(_) => panic!("the stub has no device"),
    }
}

/// Reads one of the stub's counters.
fn counter(lib: &libloading::Library, name: &str) -> c_long {
    // SAFETY: the stub exports `long name(void)` for both counters.
    unsafe {
        let f = lib
            .get::<unsafe extern "C" fn() -> c_long>(name)
            .expect("counter");
        f()
    }
}

#[test]
fn a_device_reports_errors_and_every_buffer_and_device_is_released() {
    let built = build(
        "stub_device",
        &[fixture("stub_plugin.c")],
        &["-DSTUB_HAS_DEVICE"],
    );
    let Some(path) = built_or_skip(built) else {
        return;
    };
    let factory = factory_for(&path);
    let claimed = factory.claimed_verification();
    assert_eq!(claimed.kind, VerificationKind::Plugin);
    assert_eq!(
        claimed.detail,
        format!(
            "claimed by plugin {}, not checked by moemla: silicon; Acme NPU 1, 2026-01-01",
            library_file("stub_device")
        )
    );
    // SAFETY: the same library the factory loaded (dlopen returns the loaded one).
    let lib = unsafe { libloading::Library::new(&path) }.expect("load the stub");
    let live = || counter(&lib, "stub_live_buffers");
    let devices = || counter(&lib, "stub_open_devices");

    let backend = factory.open().expect("the stub has a device");
    assert_eq!(devices(), 1);
    let info = backend.info();
    assert_eq!(
        (info.vendor.as_str(), info.device.as_str()),
        ("Acme", "Acme NPU 1")
    );
    assert_eq!(info.device_kind, DeviceKind::Accelerator);
    assert_eq!(info.memory_bytes, Some(1 << 30));
    assert_eq!(
        info.supported,
        [
            OpSupport::new(Op::MoeRoute, DType::F32),
            OpSupport::new(Op::MoeExperts, DType::F32),
        ]
    );
    assert_eq!(info.notes[0], "device type: GPU");
    assert_eq!(
        info.notes[2..],
        [
            "device_info lists an (op, dtype) pair this moemla does not know: (9, 1), ignored",
            "Acme runtime 3.1",
        ]
    );

    let up = |dims: &[usize], values: &[f32], dtype| {
        backend
            .upload(&HostTensor::from_f32_as(dims, values, dtype).unwrap())
            .unwrap()
    };
    let logits = up(&[2, 4], &[0.5; 8], DType::F32);
    let p = RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    // Listed, but the plugin refuses these parameters: its reason comes through.
    assert_eq!(
        ops::moe_route(&*backend, &logits, None, &p).unwrap_err(),
        Error::Unsupported {
            backend: "stub".into(),
            op: Op::MoeRoute,
            what: "these parameters".into(),
            reason: "group_select=max is not implemented".into(),
        }
    );
    // Not listed: moemla answers without calling the plugin.
    let bf16_logits = up(&[2, 4], &[0.5; 8], DType::BF16);
    assert_eq!(
        ops::moe_route(&*backend, &bf16_logits, None, &p).unwrap_err(),
        Error::Unsupported {
            backend: "stub".into(),
            op: Op::MoeRoute,
            what: "BF16".into(),
            reason: "the plugin's device_info does not list it".into(),
        }
    );
    // A device failure keeps the plugin's words.
    let x = up(&[2, 4], &[1.0; 8], DType::F32);
    let w13 = up(&[1, 2, 4], &[1.0; 8], DType::F32);
    let w2 = up(&[1, 4, 1], &[1.0; 4], DType::F32);
    let ids = backend
        .upload(&HostTensor::from_slice([2, 1], &[0i32, 0]).unwrap())
        .unwrap();
    let weights = up(&[2, 1], &[1.0; 2], DType::F32);
    let got = ops::moe_experts(
        &*backend,
        &x,
        &w13,
        &w2,
        &ids,
        &weights,
        &ExpertsParams::default(),
    );
    assert_eq!(
        got.unwrap_err(),
        Error::Device {
            backend: "stub".into(),
            call: "moe_experts".into(),
            message: "MOEMLA_ERROR_DEVICE: acmeLaunch failed: status 7".into(),
        }
    );
    let q = up(&[1, 1, 1, 4], &[1.0; 4], DType::F32);
    let cache = up(&[1, 2, 1, 4], &[1.0; 8], DType::F32);
    let table = backend
        .upload(&HostTensor::from_slice([1, 1], &[0i32]).unwrap())
        .unwrap();
    let lens = backend
        .upload(&HostTensor::from_slice([1], &[2i32]).unwrap())
        .unwrap();
    let mla = MlaDecodeParams {
        softmax_scale: 0.5,
        causal: false,
        head_dim_v: 2,
        kv_format: Default::default(),
    };
    assert!(matches!(
        ops::mla_decode(&*backend, &q, &cache, &table, &lens, &mla),
        Err(Error::Unsupported {
            op: Op::MlaDecode,
            ..
        })
    ));

    // The outputs of the failed calls were freed; only the 11 uploads are alive.
    assert_eq!(live(), 11);
    // Tensors keep the device open after the backend is gone; the last one closes it.
    drop(backend);
    assert_eq!(devices(), 1);
    drop((logits, bf16_logits, x, w13, w2, ids, weights));
    drop((q, cache, table, lens));
    assert_eq!((live(), devices()), (0, 0));
}
