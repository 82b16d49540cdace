//! `with_queue` on the CANN emulator: ops of the handle launch on the caller's aclrtStream
//! (created through the same emulator library the backend loaded), share memory with the
//! backend, and bad handles are `Error::Queue`.

mod common;

use libloading::Library;
use moemla_core::{ops, Backend, CacheWriteParams, DType, Error, HostTensor};
use std::ffi::c_void;

/// The emulator library the backend loaded (dlopen of the same path: the same instance).
fn emulator() -> Library {
    common::use_emulator_unless_configured();
    // SAFETY: the emulator's initialisers are ordinary; it is already loaded by the backend.
    unsafe { Library::new(common::emulator_path()).expect("emulator library") }
}

/// A new stream on device 0, created on this thread.
fn create_stream(lib: &Library) -> *mut c_void {
    // SAFETY: the signatures are CANN's (`aclrtSetDevice(int32_t)`,
    // `aclrtCreateStream(aclrtStream *)`); out-pointer to a local.
    unsafe {
        let set: libloading::Symbol<unsafe extern "C" fn(i32) -> i32> =
            lib.get(b"aclrtSetDevice").unwrap();
        assert_eq!(set(0), 0);
        let create: libloading::Symbol<unsafe extern "C" fn(*mut *mut c_void) -> i32> =
            lib.get(b"aclrtCreateStream").unwrap();
        let mut s = std::ptr::null_mut();
        assert_eq!(create(&mut s), 0);
        s
    }
}

/// Tasks queued on `stream` and not yet run (the emulator's test export).
fn pending(lib: &Library, stream: *mut c_void) -> i64 {
    // SAFETY: `moemla_emulator_pending_tasks(void *) -> int64_t`, accepts any value.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> i64> =
            lib.get(b"moemla_emulator_pending_tasks").unwrap();
        f(stream)
    }
}

#[test]
fn a_handle_launches_on_the_callers_stream_and_shares_memory() {
    let be = common::backend();
    let lib = emulator();
    let stream = create_stream(&lib);
    // SAFETY: a live stream of this device; it outlives the handle (destroyed never).
    let handle = unsafe { be.with_queue(stream) }.unwrap();
    assert_eq!(handle.name(), be.name());
    let d = 8;
    // A cache made by the backend, written by the handle.
    let mut cache = be.alloc_zeroed(&[1, 16, 1, d].into(), DType::F16).unwrap();
    let kv = be
        .upload(&HostTensor::from_f32_as([2, d], &[1.5; 16], DType::F16).unwrap())
        .unwrap();
    let slots = be
        .upload(&HostTensor::from_slice([2], &[3i32, 9]).unwrap())
        .unwrap();
    assert_eq!(pending(&lib, stream), 0);
    ops::mla_cache_write(
        &*handle,
        &kv,
        &slots,
        &mut cache,
        &CacheWriteParams::default(),
    )
    .unwrap();
    assert!(
        pending(&lib, stream) > 0,
        "the handle's launches are queued on the caller's stream"
    );
    handle.synchronize().unwrap();
    assert_eq!(pending(&lib, stream), 0);
    let got = be.download(&cache).unwrap().to_f32_vec().unwrap();
    for slot in 0..16 {
        let want = if slot == 3 || slot == 9 { 1.5 } else { 0.0 };
        assert!(
            got[slot * d..(slot + 1) * d].iter().all(|&v| v == want),
            "slot {slot}"
        );
    }
    // The backend's own ops stay on its own stream.
    ops::mla_cache_write(&be, &kv, &slots, &mut cache, &CacheWriteParams::default()).unwrap();
    assert_eq!(pending(&lib, stream), 0);
    be.synchronize().unwrap();
    // Both count into one traffic total.
    assert_eq!(handle.traffic(), be.traffic());
}

#[test]
fn a_null_or_unknown_stream_is_a_queue_error() {
    let be = common::backend();
    for bad in [std::ptr::null_mut(), 0x1234 as *mut c_void] {
        // SAFETY: null is allowed; 0x1234 is no stream, which CANN (the emulator) reports.
        match unsafe { be.with_queue(bad) } {
            Err(Error::Queue { reason, .. }) => assert!(
                reason.contains("aclrtStream") || reason.contains("aclrtSynchronizeStream"),
                "{reason}"
            ),
            Err(other) => panic!("{bad:p}: {other}"),
            Ok(_) => panic!("{bad:p} accepted"),
        }
    }
}
