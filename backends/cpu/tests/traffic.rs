//! Reading ranges of device tensors into caller host tensors (`download_into`) and the
//! transfer/allocation counters (`traffic`) on the CPU backend.

use moemla_core::{ops, Backend, DType, Error, HostTensor, RouteParams, Traffic};
use moemla_cpu::CpuBackend;
use moemla_testsuite::memory;

#[test]
fn download_into_reads_a_range_into_the_callers_tensor() {
    memory::download_into_reads_ranges_into_the_callers_tensor(&CpuBackend::new());
}

#[test]
fn traffic_counts_each_copy_and_allocation_once() {
    let cpu = CpuBackend::new();
    assert_eq!(cpu.traffic(), Some(Traffic::default()));
    let logits = cpu
        .upload(
            &HostTensor::from_slice([2, 4], &[0.5f32, 1.0, -1.0, 2.0, 0.0, 0.25, 3.0, 1.0])
                .unwrap(),
        )
        .unwrap();
    let ids = cpu.alloc_zeroed(&[2, 2].into(), DType::I32).unwrap();
    let weights = cpu.alloc_zeroed(&[2, 2].into(), DType::F32).unwrap();
    let after_setup = cpu.traffic().unwrap();
    assert_eq!(
        after_setup,
        Traffic {
            uploads: 1,
            upload_bytes: 32,
            allocations: 3,
            allocation_bytes: 32 + 16 + 16,
            ..Traffic::default()
        }
    );
    let p = RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    // The `_into` form allocates nothing; a read into a reused host tensor copies once.
    let mut host_ids = HostTensor::zeros([2, 2], DType::I32).unwrap();
    ops::moe_route_into(&cpu, ops::RouteInputs::new(&logits), &p, &ids, &weights).unwrap();
    cpu.download_into(&ids, 0, &mut host_ids).unwrap();
    assert_eq!(host_ids.to_i32_vec().unwrap(), vec![3, 1, 2, 3]);
    let step = cpu.traffic().unwrap().since(&after_setup);
    assert_eq!(
        step,
        Traffic {
            downloads: 1,
            download_bytes: 16,
            ..Traffic::default()
        }
    );
    // The allocating form counts its two outputs; upload_into counts a copy, not a buffer.
    let before = cpu.traffic().unwrap();
    ops::moe_route(&cpu, &logits, None, &p).unwrap();
    cpu.upload_into(&HostTensor::from_slice([2], &[1i32, 2]).unwrap(), &ids, 1)
        .unwrap();
    assert_eq!(
        cpu.traffic().unwrap().since(&before),
        Traffic {
            uploads: 1,
            upload_bytes: 8,
            allocations: 2,
            allocation_bytes: 32,
            ..Traffic::default()
        }
    );
    // Another backend instance counts on its own; a clone shares the count.
    assert_eq!(CpuBackend::new().traffic(), Some(Traffic::default()));
    let clone = cpu.clone();
    clone.download(&ids).unwrap();
    assert_eq!(cpu.traffic().unwrap().downloads, 2);
}

#[test]
fn the_cpu_backend_has_no_queue_to_hand_over() {
    let cpu = CpuBackend::new();
    let mut queue = 0u8;
    // SAFETY: the CPU backend never dereferences the handle (it provides no queues).
    let err = unsafe { cpu.with_queue((&mut queue as *mut u8).cast()) }.err();
    assert_eq!(
        err,
        Some(Error::NotProvided {
            backend: "cpu".into(),
            what: "with_queue"
        })
    );
}
