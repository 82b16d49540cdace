//! Writable ranges on the CANN emulator: upload_into, copy_into and download_into at element
//! offsets, ordered after queued work, with the shared range errors; traffic counts.

mod common;

use moemla_core::{ops, Backend, CacheWriteParams, DType, Error, HostTensor};

fn f32s(be: &impl Backend, t: &moemla_core::DeviceTensor) -> Vec<f32> {
    be.download(t).unwrap().to_f32_vec().unwrap()
}

#[test]
fn ranges_are_written_copied_and_read_at_element_offsets() {
    let be = common::backend();
    let base: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let a = be
        .upload(&HostTensor::from_slice([10], &base).unwrap())
        .unwrap();
    be.upload_into(
        &HostTensor::from_slice([3], &[70.0f32, 80.0, 90.0]).unwrap(),
        &a,
        7,
    )
    .unwrap();
    assert_eq!(
        f32s(&be, &a),
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 70.0, 80.0, 90.0]
    );
    // Across buffers.
    let b = be.alloc_zeroed(&[4].into(), DType::F32).unwrap();
    be.copy_into(&a, 2, &b, 1, 3).unwrap();
    assert_eq!(f32s(&be, &b), [0.0, 2.0, 3.0, 4.0]);
    // Overlapping ranges of one buffer behave as a copy through a temporary (memmove).
    be.copy_into(&a, 0, &a, 2, 5).unwrap();
    assert_eq!(
        f32s(&be, &a),
        [0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 70.0, 80.0, 90.0]
    );
    let mut out = HostTensor::zeros([3], DType::F32).unwrap();
    be.download_into(&a, 6, &mut out).unwrap();
    assert_eq!(out.to_f32_vec().unwrap(), [4.0, 70.0, 80.0]);
}

#[test]
fn a_bad_range_or_dtype_is_refused_and_nothing_is_written() {
    let be = common::backend();
    let a = be
        .upload(&HostTensor::from_slice([4], &[1.0f32, 2.0, 3.0, 4.0]).unwrap())
        .unwrap();
    let two = HostTensor::from_slice([2], &[9.0f32, 9.0]).unwrap();
    assert!(matches!(
        be.upload_into(&two, &a, 3),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        be.upload_into(&two, &a, usize::MAX),
        Err(Error::OutOfBounds { .. })
    ));
    let halves = HostTensor::from_f32_as([2], &[9.0, 9.0], DType::F16).unwrap();
    assert!(matches!(
        be.upload_into(&halves, &a, 0),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(matches!(
        be.copy_into(&a, 3, &a, 0, 2),
        Err(Error::OutOfBounds { .. })
    ));
    let mut out = HostTensor::zeros([5], DType::F32).unwrap();
    assert!(matches!(
        be.download_into(&a, 0, &mut out),
        Err(Error::OutOfBounds { .. })
    ));
    assert_eq!(f32s(&be, &a), [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn an_upload_into_lands_after_the_work_queued_before_it() {
    // mla_cache_write only queues its aclnn launches (the emulator runs them at the next
    // synchronize); the upload_into that follows must not be overwritten by them.
    let be = common::backend();
    let d = 8;
    let mut cache = be.alloc_zeroed(&[1, 16, 1, d].into(), DType::F16).unwrap();
    let kv = be
        .upload(&HostTensor::from_f32_as([1, d], &[1.0; 8], DType::F16).unwrap())
        .unwrap();
    let slots = be
        .upload(&HostTensor::from_slice([1], &[0i32]).unwrap())
        .unwrap();
    ops::mla_cache_write(&be, &kv, &slots, &mut cache, &CacheWriteParams::default()).unwrap();
    let two = HostTensor::from_f32_as([d], &[2.0; 8], DType::F16).unwrap();
    be.upload_into(&two, &cache, 0).unwrap();
    let got = f32s(&be, &cache);
    assert!(got[..d].iter().all(|&v| v == 2.0), "{:?}", &got[..d]);
    assert!(got[d..].iter().all(|&v| v == 0.0));
}

#[test]
fn traffic_counts_copies_and_allocations() {
    let be = common::backend();
    let a = be.alloc_zeroed(&[16].into(), DType::F32).unwrap();
    let before = be.traffic().expect("counted");
    be.upload_into(&HostTensor::from_slice([4], &[1.0f32; 4]).unwrap(), &a, 0)
        .unwrap();
    let mut out = HostTensor::zeros([2], DType::F32).unwrap();
    be.download_into(&a, 1, &mut out).unwrap();
    be.copy_into(&a, 0, &a, 8, 4).unwrap();
    let d = be.traffic().unwrap().since(&before);
    assert_eq!((d.uploads, d.upload_bytes), (1, 16));
    assert_eq!((d.downloads, d.download_bytes), (1, 8));
    assert_eq!(
        d.allocations, 0,
        "a device-side copy allocates nothing: {d}"
    );
    let _b = be.alloc_zeroed(&[3].into(), DType::F32).unwrap();
    let d = be.traffic().unwrap().since(&before);
    assert_eq!((d.allocations, d.allocation_bytes), (1, 12));
}
