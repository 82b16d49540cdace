//! Caller-owned memory and streams against the host-only mock HIP runtime
//! (tests/mock/mock_hip.c, whose "device memory" is host memory) plus the real hipRTC:
//! ranges written (`upload_into`, which waits for its copy), copied on the device
//! (`copy_into`, overlapping ranges through a temporary) and read (`download_into`);
//! caller memory wrapped (`from_raw`), written in place and never freed; a handle on a
//! caller's stream (`with_queue`) launching there and reporting its own index errors;
//! `mla_cache_write` writing the caller's cache in place (the mock runs its dense kernel);
//! the `_into` ops allocating nothing on a repeated call; the traffic counts.
//!
//! The only test of this binary (its own process): it sets `MOCK_HIP_LOG`. Skips without
//! clang-19 or hipRTC unless `MOEMLA_REQUIRE_TOOLCHAINS` names `clang-hip` / `hiprtc`.

mod common;

use common::{build_mock, DEBIAN_HIP};
use moemla_core::{ops, Backend, DType, DeviceTensor, Error, ExpertsParams, HostTensor, Shape};
use moemla_hip::flavour::{Candidate, Flavour, SearchList};
use moemla_hip::HipBackend;
use std::path::{Path, PathBuf};

/// The mock's second stream handle (MOCK_CALLER_STREAM in mock_hip.c).
const CALLER_STREAM: usize = 0x5000;

fn open(runtime: &Path) -> HipBackend {
    let search = SearchList {
        runtime: vec![Candidate {
            path: runtime.to_path_buf(),
            flavour: Flavour::Rocm,
        }],
        hiprtc: vec![Candidate {
            path: PathBuf::from(DEBIAN_HIP),
            flavour: Flavour::Rocm,
        }],
    };
    HipBackend::with_search(&search, 0).unwrap_or_else(|e| panic!("mock device: {e}"))
}

/// The runtime calls logged since the last look.
fn calls(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    std::fs::write(log, "").unwrap();
    text.lines().map(str::to_string).collect()
}

fn f32s(b: &dyn Backend, dims: &[usize], v: &[f32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, v).unwrap()).unwrap()
}

/// An experts call on `b` (T 3, k 2, E 4, H 64, I 32) writing `y`.
fn experts_into(b: &dyn Backend, ids: &[i32], y: &DeviceTensor) -> moemla_core::Result<()> {
    let x = f32s(b, &[3, 64], &[0.5; 3 * 64]);
    let w13 = f32s(b, &[4, 64, 64], &[0.25; 4 * 64 * 64]);
    let w2 = f32s(b, &[4, 64, 32], &[0.25; 4 * 64 * 32]);
    let ids = b
        .upload(&HostTensor::from_slice([3, 2], ids).unwrap())
        .unwrap();
    let w = f32s(b, &[3, 2], &[0.5; 6]);
    let inputs = ops::ExpertsInputs::new(&x, &w13, &w2, &ids, &w);
    ops::moe_experts_into(b, inputs, &ExpertsParams::default(), y)
}

#[test]
fn caller_memory_ranges_streams_and_into_ops_on_the_mock() {
    let dir = std::env::temp_dir().join(format!("moemla-hip-caller-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(mock) = build_mock(&dir, &[], "libmock_hip.so") else {
        return;
    };
    let log = dir.join("calls.log");
    std::env::set_var("MOCK_HIP_LOG", &log);
    let b = open(&mock);

    // Ranges: write, overlapping device copy, read back.
    let t = f32s(&b, &[2, 4], &[0.0; 8]);
    let before = b.traffic().unwrap();
    calls(&log);
    let src = HostTensor::from_slice([3], &[1.0f32, 2.0, 3.0]).unwrap();
    b.upload_into(&src, &t, 2).unwrap();
    assert_eq!(calls(&log), ["setdevice", "h2d 12", "sync"]);
    b.copy_into(&t, 2, &t, 3, 3).unwrap();
    assert_eq!(
        calls(&log),
        ["setdevice", "malloc 12", "d2d 12", "d2d 12"],
        "a device copy only enqueues"
    );
    let mut out = HostTensor::from_slice([6], &[9.0f32; 6]).unwrap();
    b.download_into(&t, 1, &mut out).unwrap();
    assert_eq!(out.to_f32_vec().unwrap(), [0.0, 1.0, 1.0, 2.0, 3.0, 0.0]);
    let moved = b.traffic().unwrap().since(&before);
    assert_eq!(
        (moved.uploads, moved.downloads, moved.allocations),
        (1, 1, 1)
    );
    assert!(matches!(
        b.copy_into(&t, 0, &t, 7, 2),
        Err(Error::OutOfBounds { arg: "dst", .. })
    ));

    // Caller memory (the mock's device memory is host memory): written in place, never
    // freed.
    b.synchronize().unwrap(); // frees the copy's temporary
    calls(&log);
    let mut mine = vec![0.0f32; 4];
    // SAFETY: `mine` holds the 16 bytes, outlives the tensor and the synchronize below.
    let wrapped =
        unsafe { DeviceTensor::from_raw(&b, mine.as_mut_ptr().cast(), [4], DType::F32) }.unwrap();
    let src = HostTensor::from_slice([2], &[5.0f32, 6.0]).unwrap();
    b.upload_into(&src, &wrapped, 1).unwrap();
    drop(wrapped);
    b.synchronize().unwrap();
    assert!(!calls(&log).iter().any(|c| c == "free"));
    assert_eq!(mine, [0.0, 5.0, 6.0, 0.0]);
    // SAFETY: refused before any use.
    let e = unsafe { DeviceTensor::from_raw(&b, std::ptr::null_mut(), [4], DType::F32) };
    assert!(matches!(e, Err(Error::Tensor(_))), "{e:?}");

    // mla_cache_write into the caller's cache (the mock runs the dense kernel): one
    // launch, nothing waited for or allocated; in place, the later row wins; a bad slot at
    // the next synchronize, its row not written.
    let mut cache = f32s(&b, &[3, 2, 1, 2], &[7.0; 12]);
    let rows = f32s(&b, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let slots = b
        .upload(&HostTensor::from_slice([3], &[4, 9, 4]).unwrap())
        .unwrap();
    b.synchronize().unwrap();
    calls(&log);
    ops::mla_cache_write(&b, &rows, &slots, &mut cache, &Default::default()).unwrap();
    let lines = calls(&log);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("moemla_mla_cache_write_dense grid=3,1,1")),
        "{lines:?}"
    );
    let waited = |l: &String| l == "sync" || l == "free" || l.starts_with("d2h");
    assert!(!lines.iter().any(waited), "{lines:?}");
    // The only allocation: the error flags' first chunk (the first index-checked op).
    let mallocs: Vec<_> = lines.iter().filter(|l| l.starts_with("malloc")).collect();
    assert_eq!(mallocs, ["malloc 4096"], "{lines:?}");
    assert!(matches!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: moemla_core::Op::MlaCacheWrite,
            arg: "slot_mapping",
            value: 9,
            ..
        })
    ));
    let mut want = [7.0f32; 12];
    want[8..10].copy_from_slice(&[5.0, 6.0]);
    assert_eq!(b.download(&cache).unwrap().to_f32_vec().unwrap(), want);

    // The _into ops: a repeated call allocates nothing.
    let y = b
        .alloc_zeroed(&Shape::new(vec![3, 64]), DType::F32)
        .unwrap();
    experts_into(&b, &[0, 3, -1, 2, 1, 1], &y).unwrap();
    b.synchronize().unwrap();
    calls(&log);
    let inputs_before = b.traffic().unwrap();
    experts_into(&b, &[0, 3, -1, 2, 1, 1], &y).unwrap();
    let lines = calls(&log);
    // Only the inputs' uploads allocate: 5 tensors, nothing for y or the workspace.
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("malloc")).count(),
        5,
        "{lines:?}"
    );
    assert_eq!(b.traffic().unwrap().since(&inputs_before).allocations, 5);

    // A handle on the caller's stream: launches there, its own errors.
    // SAFETY: the mock's caller stream handle, valid for the mock's life.
    let handle = unsafe { b.with_queue(CALLER_STREAM as *mut std::ffi::c_void) }.unwrap();
    // SAFETY: refused before any use.
    let e = unsafe { b.with_queue(std::ptr::null_mut()) }.err().unwrap();
    assert!(matches!(e, Error::Queue { .. }), "{e}");
    calls(&log);
    experts_into(handle.as_ref(), &[0, 3, -1, 9, 1, 1], &y).unwrap();
    let lines = calls(&log);
    let launches: Vec<_> = lines.iter().filter(|l| l.contains("grid=")).collect();
    assert_eq!(launches.len(), 4, "{lines:?}");
    assert!(
        launches.iter().all(|l| l.ends_with("stream=caller")),
        "{lines:?}"
    );
    b.synchronize().unwrap();
    assert!(matches!(
        handle.synchronize(),
        Err(Error::IndexOutOfRange {
            arg: "topk_ids",
            value: 9,
            ..
        })
    ));
    handle.synchronize().unwrap();
    assert_eq!(b.traffic(), handle.traffic());
    std::fs::remove_dir_all(&dir).ok();
}
