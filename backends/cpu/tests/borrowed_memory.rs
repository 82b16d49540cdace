//! Caller memory wrapped by `DeviceTensor::from_raw` is borrowed, never owned: ops read it
//! and write into it in place, and no drop of a tensor (or of the backend's buffer) frees
//! it. A counting allocator watches the caller's allocation for a deallocation.

use moemla_core::ops::{self, RouteInputs};
use moemla_core::{Backend, DType, DeviceTensor, HostTensor, RouteParams};
use moemla_cpu::{CpuBackend, CpuBuffer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting deallocations that fall in `[WATCH_START, WATCH_END)`.
struct Watching;

static WATCH_START: AtomicUsize = AtomicUsize::new(0);
static WATCH_END: AtomicUsize = AtomicUsize::new(0);
static WATCHED_FREES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to `System` unchanged; the bookkeeping touches atomics only.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let at = ptr as usize;
        if at >= WATCH_START.load(Ordering::SeqCst) && at < WATCH_END.load(Ordering::SeqCst) {
            WATCHED_FREES.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Watching = Watching;

/// A tensor over `len` elements of `memory` from element `at` (an interior pointer, which
/// no allocation starts at).
fn wrap<T>(
    cpu: &CpuBackend,
    memory: &mut [T],
    at: usize,
    dims: &[usize],
    dtype: DType,
) -> DeviceTensor {
    let ptr = memory[at..].as_mut_ptr().cast();
    // SAFETY: `memory[at..]` holds at least the tensor's elements, aligned, and outlives
    // every tensor made here (all are dropped before `memory`); nothing else touches it
    // during a call.
    unsafe { DeviceTensor::from_raw(cpu, ptr, dims, dtype) }.unwrap()
}

#[test]
fn an_op_writes_into_borrowed_caller_memory_and_nothing_frees_it() {
    let cpu = CpuBackend::new();
    // One caller allocation holds input and outputs, each at an interior offset.
    let mut arena = vec![0u32; 32];
    let start = arena.as_ptr() as usize;
    WATCH_START.store(start, Ordering::SeqCst);
    WATCH_END.store(start + 32 * 4, Ordering::SeqCst);
    let logits = [0.5f32, -1.0, 2.0, 0.25, -0.5, 1.5, 0.0, 3.0];
    for (slot, v) in arena[1..9].iter_mut().zip(logits) {
        *slot = v.to_bits();
    }
    arena[12..16].fill(0xdead_beef);
    arena[20..24].fill(0xdead_beef);
    let (logits_t, ids_t, weights_t) = {
        let ids = wrap(&cpu, &mut arena, 12, &[2, 2], DType::I32);
        let weights = wrap(&cpu, &mut arena, 20, &[2, 2], DType::F32);
        (wrap(&cpu, &mut arena, 1, &[2, 4], DType::F32), ids, weights)
    };
    for t in [&logits_t, &ids_t, &weights_t] {
        assert!(t
            .buffer::<CpuBuffer>("cpu", "test", "t")
            .unwrap()
            .is_borrowed());
    }
    let p = RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    ops::moe_route_into(&cpu, RouteInputs::new(&logits_t), &p, &ids_t, &weights_t).unwrap();
    // The same op on backend-owned copies, as the reference.
    let owned = cpu
        .upload(&HostTensor::from_slice([2, 4], &logits).unwrap())
        .unwrap();
    let want = ops::moe_route(&cpu, &owned, None, &p).unwrap();
    let want_ids = cpu.download(&want.topk_ids).unwrap().to_i32_vec().unwrap();
    let want_w = cpu
        .download(&want.topk_weights)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    assert_eq!(want_ids, vec![2, 0, 3, 1]);
    // A reshape and a clone share the borrowed buffer; dropping them frees nothing.
    let again = ids_t.reshape([4]).unwrap();
    drop((
        logits_t,
        ids_t,
        weights_t,
        again.clone(),
        again,
        owned,
        want,
    ));
    assert_eq!(WATCHED_FREES.load(Ordering::SeqCst), 0);
    // The caller's memory holds the results, next to untouched words.
    let ids: Vec<i32> = arena[12..16].iter().map(|&w| w as i32).collect();
    let weights: Vec<f32> = arena[20..24].iter().map(|&w| f32::from_bits(w)).collect();
    assert_eq!(ids, want_ids);
    assert_eq!(weights, want_w);
    assert_eq!(arena[11], 0);
    assert_eq!(arena[16], 0);
    assert_eq!(arena[9], 0);
    // The allocation is the caller's to free, exactly once.
    drop(arena);
    assert_eq!(WATCHED_FREES.load(Ordering::SeqCst), 1);
    WATCH_END.store(0, Ordering::SeqCst);
}
