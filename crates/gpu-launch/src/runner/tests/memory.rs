//! Writable device memory on the fake device: ranges written, copied and read in stream
//! order, caller memory wrapped and never freed, handles on a caller's stream, and the
//! traffic counts.

use super::*;

fn zeros(b: &FakeBackend, dims: &[usize]) -> DeviceTensor {
    b.alloc_zeroed(&Shape::new(dims.to_vec()), DType::F32)
        .unwrap()
}

#[test]
fn ranges_are_written_copied_and_read_in_stream_order() {
    let (b, fake) = backend();
    let t = zeros(&b, &[2, 4]);
    b.synchronize().unwrap();
    let before = b.traffic().unwrap();
    fake.take_log();
    let src = HostTensor::from_slice([3], &[1.0f32, 2.0, 3.0]).unwrap();
    b.upload_into(&src, &t, 2).unwrap();
    // Overlapping ranges of one tensor: through a temporary.
    b.copy_into(&t, 2, &t, 3, 3).unwrap();
    assert_eq!(
        fake.take_log(),
        [
            "enter",
            "upload_into 12",
            "enter",
            "alloc 12",
            "copy 12",
            "copy 12"
        ]
    );
    let mut out = HostTensor::from_slice([6], &[9.0f32; 6]).unwrap();
    b.download_into(&t, 1, &mut out).unwrap();
    assert_eq!(out.to_f32_vec().unwrap(), [0.0, 1.0, 1.0, 2.0, 3.0, 0.0]);
    let moved = b.traffic().unwrap().since(&before);
    assert_eq!(
        (
            moved.uploads,
            moved.upload_bytes,
            moved.downloads,
            moved.download_bytes
        ),
        (1, 12, 1, 24)
    );
    assert_eq!((moved.allocations, moved.allocation_bytes), (1, 12));
}

#[test]
fn bad_ranges_and_dtypes_are_errors_and_write_nothing() {
    let (b, fake) = backend();
    let t = zeros(&b, &[2, 4]);
    fake.take_log();
    let src = HostTensor::from_slice([3], &[1.0f32, 2.0, 3.0]).unwrap();
    assert!(matches!(
        b.upload_into(&src, &t, 6),
        Err(Error::OutOfBounds {
            arg: "dst",
            offset: 6,
            len: 3,
            size: 8,
            ..
        })
    ));
    let ints = HostTensor::from_slice([2], &[1i32, 2]).unwrap();
    assert!(matches!(
        b.upload_into(&ints, &t, 0),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(matches!(
        b.copy_into(&t, 0, &t, 7, 2),
        Err(Error::OutOfBounds { arg: "dst", .. })
    ));
    let mut out = HostTensor::from_slice([9], &[0.0f32; 9]).unwrap();
    assert!(matches!(
        b.download_into(&t, 0, &mut out),
        Err(Error::OutOfBounds {
            arg: "src",
            len: 9,
            ..
        })
    ));
    assert!(fake.take_log().is_empty());
}

#[test]
fn wrapped_caller_memory_is_used_in_place_and_never_freed() {
    let (b, fake) = backend();
    // The "caller's" memory: device memory made elsewhere.
    let owner = zeros(&b, &[4]);
    let ptr = b.runner.buffer(&owner, "t", "t").unwrap().addr as *mut std::ffi::c_void;
    // SAFETY: `ptr` addresses the 16 bytes of `owner`'s fake allocation, alive for the test.
    let wrapped = unsafe { DeviceTensor::from_raw(&b, ptr, [4], DType::F32) }.unwrap();
    let src = HostTensor::from_slice([2], &[5.0f32, 6.0]).unwrap();
    b.upload_into(&src, &wrapped, 1).unwrap();
    drop(wrapped);
    b.synchronize().unwrap();
    assert!(!has(&fake.take_log(), "free"));
    assert_eq!(
        b.download(&owner).unwrap().to_f32_vec().unwrap(),
        [0.0, 5.0, 6.0, 0.0]
    );
    // SAFETY: the pointers are refused before any use.
    unsafe {
        for (p, dims) in [(std::ptr::null_mut(), [4]), (ptr.wrapping_add(2), [4])] {
            let e = DeviceTensor::from_raw(&b, p, dims, DType::F32).unwrap_err();
            assert!(matches!(e, Error::Tensor(_)), "{e}");
        }
        let e = b
            .wrap_raw(ptr, 12, &Shape::new(vec![4]), DType::F32)
            .unwrap_err();
        assert!(e.to_string().contains("12 bytes"), "{e}");
    }
}

#[test]
fn a_handle_on_a_callers_stream_enqueues_there_and_reports_its_own_errors() {
    let (b, fake) = backend();
    let stream = 0x5000 as *mut std::ffi::c_void;
    // SAFETY: the fake device only records the handle.
    let handle = FakeBackend {
        runner: unsafe { b.runner.with_stream(stream) }.unwrap(),
    };
    // SAFETY: refused before any use.
    let e = unsafe { b.runner.with_stream(std::ptr::null_mut()) }
        .err()
        .unwrap();
    assert!(matches!(e, Error::Queue { .. }), "{e}");
    // Tensors are shared: the handle reads the backend's.
    let before = b.traffic().unwrap();
    let ids = i32s(&b, &[3, 2], &[0, 3, -1, 9, 1, 1]);
    fake.take_log();
    experts(&handle, &[0, 3, -1, 9, 1, 1]).unwrap();
    let log = fake.take_log();
    assert!(
        log.contains(&"launch@0x5000 moemla_moe_align".to_string()),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("launch ")), "{log:?}");
    // The handle's error is the handle's: the backend's own synchronize is clean.
    b.synchronize().unwrap();
    assert!(matches!(
        handle.synchronize(),
        Err(Error::IndexOutOfRange {
            arg: "topk_ids",
            value: 9,
            ..
        })
    ));
    assert_eq!(handle.download(&ids).unwrap().dims(), [3, 2]);
    // One count for both.
    assert!(b.traffic().unwrap().since(&before).uploads > 1);
    assert_eq!(b.traffic(), handle.traffic());
}
