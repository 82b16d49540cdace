//! Reading ranges of device tensors into caller host tensors (`download_into`) and the
//! transfer/allocation counters (`traffic`) on the OpenCL backend. One binary of its own,
//! its tests serialized: the counters belong to the process-wide backend.

mod common;

use common::backend;
use moemla_core::{Backend, DType, HostTensor, Traffic};
use moemla_testsuite::memory;
use std::sync::{Mutex, MutexGuard};

/// Serializes this binary's tests (they read the shared backend's counters).
fn alone() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn download_into_reads_a_range_into_the_callers_tensor() {
    let _alone = alone();
    let Some(be) = backend() else { return };
    memory::download_into_reads_ranges_into_the_callers_tensor(&*be);
}

#[test]
fn traffic_counts_each_copy_and_allocation_once() {
    let _alone = alone();
    let Some(be) = backend() else { return };
    let before = be.traffic().unwrap();
    let t = be
        .upload(&HostTensor::from_slice([3], &[1i32, 2, 3]).unwrap())
        .unwrap();
    let z = be.alloc_zeroed(&[4].into(), DType::F32).unwrap();
    assert_eq!(
        be.traffic().unwrap().since(&before),
        Traffic {
            uploads: 1,
            upload_bytes: 12,
            allocations: 2,
            allocation_bytes: 12 + 16,
            ..Traffic::default()
        }
    );
    // A read into a reused host tensor: one copy, no allocation on the device.
    let before = be.traffic().unwrap();
    let mut host = HostTensor::zeros([2], DType::I32).unwrap();
    be.download_into(&t, 1, &mut host).unwrap();
    assert_eq!(host.to_i32_vec().unwrap(), vec![2, 3]);
    assert_eq!(
        be.traffic().unwrap().since(&before),
        Traffic {
            downloads: 1,
            download_bytes: 8,
            ..Traffic::default()
        }
    );
    // A device copy moves nothing over the host link; an upload_into is one upload and
    // allocates nothing on the device.
    let before = be.traffic().unwrap();
    be.copy_into(&t, 0, &t, 2, 1).unwrap();
    be.upload_into(&HostTensor::from_slice([2], &[5.0f32, 6.0]).unwrap(), &z, 1)
        .unwrap();
    assert_eq!(
        be.traffic().unwrap().since(&before),
        Traffic {
            uploads: 1,
            upload_bytes: 8,
            ..Traffic::default()
        }
    );
    assert_eq!(
        be.download(&t).unwrap().to_i32_vec().unwrap(),
        vec![1, 2, 1]
    );
    let z = be.download(&z).unwrap().to_f32_vec().unwrap();
    assert_eq!(z, vec![0.0, 5.0, 6.0, 0.0]);
}

/// Repeated `upload_into` calls allocate nothing on the device, also without a wait between
/// them, and each lands in queue order: work enqueued before it reads the old bytes, work
/// after it the new ones, and the caller may reuse its host tensor at once.
#[test]
fn repeated_upload_into_allocates_nothing_and_keeps_queue_order() {
    let _alone = alone();
    let Some(be) = backend() else { return };
    let dst = be.alloc_zeroed(&[8].into(), DType::I32).unwrap();
    let seen = be.alloc_zeroed(&[16 * 8].into(), DType::I32).unwrap();
    let mut src = HostTensor::zeros([8], DType::I32).unwrap();
    be.synchronize().unwrap();
    let before = be.traffic().unwrap();
    for step in 0..16i32 {
        // What the queue holds in dst before this step's write.
        be.copy_into(&dst, 0, &seen, 8 * step as usize, 8).unwrap();
        let values: Vec<i32> = (0..8).map(|i| 100 * (step + 1) + i).collect();
        src.as_bytes_mut()
            .copy_from_slice(HostTensor::from_slice([8], &values).unwrap().as_bytes());
        be.upload_into(&src, &dst, 0).unwrap();
        // Rewriting the host tensor after the call changes nothing on the device.
        src.as_bytes_mut().fill(0xFF);
        if step % 4 == 3 {
            be.synchronize().unwrap();
        }
    }
    assert_eq!(
        be.traffic().unwrap().since(&before),
        Traffic {
            uploads: 16,
            upload_bytes: 16 * 32,
            ..Traffic::default()
        }
    );
    let seen = be.download(&seen).unwrap().to_i32_vec().unwrap();
    for step in 0..16 {
        let want: Vec<i32> = (0..8)
            .map(|i| if step == 0 { 0 } else { 100 * step + i })
            .collect();
        assert_eq!(seen[8 * step as usize..][..8], want[..], "step {step}");
    }
    let last: Vec<i32> = (0..8).map(|i| 1600 + i).collect();
    assert_eq!(be.download(&dst).unwrap().to_i32_vec().unwrap(), last);
}
