//! Handles on a caller's command queue (`Backend::with_queue`): ops, copies and downloads on
//! that queue, tensors shared with the backend, index errors reported by the handle that
//! enqueued them; unusable queues refused; and a repeated step on a queue allocating no
//! memory and making no kernel objects after its first run.

mod common;

use cl3::command_queue::{
    create_command_queue, get_command_queue_info, release_command_queue,
    CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, CL_QUEUE_REFERENCE_COUNT,
};
use cl3::context::{get_context_info, CL_CONTEXT_DEVICES};
use cl3::types::{cl_command_queue, cl_context, cl_device_id};
use common::{backend, float_tensor, int_tensor, read_f32, read_i32};
use moemla_core::ops::{self, ExpertsInputs, RouteInputs};
use moemla_core::{
    Backend, CacheWriteParams, DType, Error, ExpertsParams, HostTensor, MlaDecodeParams, Op,
    RouteParams,
};
use opencl3::context::Context;
use opencl3::device::Device;
use std::sync::{Mutex, MutexGuard};

/// Serializes this binary's tests (they count the shared backend's allocations).
fn alone() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A command queue the test owns (released on drop).
struct Queue(cl_command_queue);

impl Queue {
    /// A queue on the device of `context` with `properties`, or `None` if refused.
    fn new(context: cl_context, properties: u64) -> Option<Queue> {
        let devices: Vec<isize> = get_context_info(context, CL_CONTEXT_DEVICES)
            .unwrap()
            .into();
        let device = devices[0] as cl_device_id;
        // SAFETY: a live context and one of its devices.
        #[allow(deprecated)] // clCreateCommandQueue: the OpenCL 1.2 entry point
        let queue = unsafe { create_command_queue(context, device, properties) }.ok()?;
        Some(Queue(queue))
    }

    fn references(&self) -> u32 {
        get_command_queue_info(self.0, CL_QUEUE_REFERENCE_COUNT)
            .unwrap()
            .into()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: the test's own reference, released once.
        unsafe { release_command_queue(self.0) }.unwrap();
    }
}

fn route_params() -> RouteParams {
    RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    }
}

#[test]
fn a_handle_runs_on_the_callers_queue_and_shares_tensors_with_the_backend() {
    let _alone = alone();
    let Some(be) = backend() else { return };
    let queue = Queue::new(be.context(), 0).unwrap();
    // SAFETY: a live in-order queue of the backend's context, kept until after the handle.
    let handle = unsafe { be.with_queue(queue.0.cast()) }.unwrap();
    assert_eq!(handle.name(), be.name());
    assert_eq!(
        queue.references(),
        2,
        "the handle holds a reference of its own"
    );
    use_handle(&*be, &*handle);
    drop(handle);
    // PoCL keeps references for buffers the queue last used and commands it finished;
    // they go with the tensors (dropped above), in the background: wait for the count to
    // come back to the test's one. A leaked handle reference never does.
    let released = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        queue.references() == 1
    });
    assert!(released, "{} references left", queue.references());
}

/// Ops on `handle` (inputs made by `be`, outputs by the handle), checked against `be`.
fn use_handle(be: &dyn Backend, handle: &dyn Backend) {
    let logits = common::uniform(3, 3 * 8, -2.0, 2.0);
    let (logits_t, _) = float_tensor(be, &[3, 8], &logits, DType::F32);
    let want = ops::moe_route(be, &logits_t, None, &route_params()).unwrap();
    // Outputs made by the handle, the input by the backend: one memory.
    let ids = handle.alloc_zeroed(&[3, 2].into(), DType::I32).unwrap();
    let weights = handle.alloc_zeroed(&[3, 2].into(), DType::F32).unwrap();
    let inputs = RouteInputs::new(&logits_t);
    ops::moe_route_into(handle, inputs, &route_params(), &ids, &weights).unwrap();
    let mut got_ids = HostTensor::zeros([3, 2], DType::I32).unwrap();
    handle.download_into(&ids, 0, &mut got_ids).unwrap();
    assert_eq!(got_ids.to_i32_vec().unwrap(), read_i32(be, &want.topk_ids));
    assert_eq!(read_f32(be, &weights), read_f32(be, &want.topk_weights));

    // An index error an op on the handle meets is the handle's to report, not the backend's.
    let (h, i, e) = (4, 2, 3);
    let (x, _) = float_tensor(be, &[3, h], &[0.5; 12], DType::F32);
    let (w13, _) = float_tensor(be, &[e, 2 * i, h], &[0.25; 48], DType::F32);
    let (w2, _) = float_tensor(be, &[e, h, i], &[0.25; 24], DType::F32);
    let bad = int_tensor(be, &[3, 2], &[0, 1, 2, 7, -1, 0]);
    let y = handle.alloc_zeroed(&[3, h].into(), DType::F32).unwrap();
    let inputs = ExpertsInputs::new(&x, &w13, &w2, &bad, &weights);
    ops::moe_experts_into(handle, inputs, &ExpertsParams::default(), &y).unwrap();
    be.synchronize().unwrap();
    assert!(
        matches!(
            handle.synchronize(),
            Err(Error::IndexOutOfRange {
                op: Op::MoeExperts,
                arg: "topk_ids",
                value: 7,
                ..
            })
        ),
        "the handle reports its op's error"
    );
    handle.synchronize().unwrap();
}

#[test]
fn queues_the_backend_cannot_use_are_refused() {
    let _alone = alone();
    let Some(be) = backend() else { return };
    let refused = |handle: Result<std::sync::Arc<dyn Backend>, Error>, why: &str| match handle {
        Err(Error::Queue { backend, reason }) => {
            assert_eq!(backend, "opencl");
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("expected Error::Queue ({why}), got {:?}", other.map(|_| ())),
    };
    // SAFETY: null is refused before use.
    refused(unsafe { be.with_queue(std::ptr::null_mut()) }, "null");
    // A queue of another context on the same device.
    let devices: Vec<isize> = get_context_info(be.context(), CL_CONTEXT_DEVICES)
        .unwrap()
        .into();
    let other = Context::from_device(&Device::new(devices[0] as cl_device_id)).unwrap();
    let foreign = Queue::new(other.get(), 0).unwrap();
    // SAFETY: a live queue (of another context: refused after the query).
    refused(
        unsafe { be.with_queue(foreign.0.cast()) },
        "another OpenCL context",
    );
    assert_eq!(foreign.references(), 1, "a refused queue is not retained");
    // Out of order, where the device offers it.
    if let Some(ooo) = Queue::new(be.context(), CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) {
        // SAFETY: a live queue of the backend's context (refused after the query).
        refused(unsafe { be.with_queue(ooo.0.cast()) }, "out of order");
    }
}

/// One decode-like step on `be` into outputs made beforehand: route, experts, cache write,
/// decode; then the error check a synchronize makes.
#[test]
fn a_repeated_step_allocates_nothing_and_makes_no_kernels_after_its_first_run() {
    let _alone = alone();
    let Some(be) = backend() else { return };
    let queue = Queue::new(be.context(), 0).unwrap();
    // SAFETY: a live in-order queue of the backend's context, kept until after the handle.
    let handle = unsafe { be.with_queue(queue.0.cast()) }.unwrap();
    for run_on in [&*be as &dyn Backend, &*handle] {
        let (t, h, i, e) = (2, 8, 4, 4);
        let (logits, _) = float_tensor(
            run_on,
            &[t, e],
            &common::uniform(1, t * e, -1.0, 1.0),
            DType::BF16,
        );
        let (x, _) = float_tensor(
            run_on,
            &[t, h],
            &common::uniform(2, t * h, -1.0, 1.0),
            DType::BF16,
        );
        let (w13, _) = float_tensor(
            run_on,
            &[e, 2 * i, h],
            &common::uniform(3, e * 2 * i * h, -0.5, 0.5),
            DType::BF16,
        );
        let (w2, _) = float_tensor(
            run_on,
            &[e, h, i],
            &common::uniform(4, e * h * i, -0.5, 0.5),
            DType::BF16,
        );
        let ids = run_on.alloc_zeroed(&[t, 2].into(), DType::I32).unwrap();
        let weights = run_on.alloc_zeroed(&[t, 2].into(), DType::F32).unwrap();
        let y = run_on.alloc_zeroed(&[t, h].into(), DType::BF16).unwrap();
        let (blocks, bs, d, dv) = (2, 4, 16, 8);
        let cache = run_on
            .alloc_zeroed(&[blocks, bs, 1, d].into(), DType::BF16)
            .unwrap();
        let (kv, _) = float_tensor(
            run_on,
            &[1, d],
            &common::uniform(5, d, -1.0, 1.0),
            DType::BF16,
        );
        let slot = int_tensor(run_on, &[1], &[3]);
        let (q, _) = float_tensor(
            run_on,
            &[1, 1, 2, d],
            &common::uniform(6, 2 * d, -1.0, 1.0),
            DType::BF16,
        );
        let table = int_tensor(run_on, &[1, 2], &[1, 0]);
        let lens = int_tensor(run_on, &[1], &[4]);
        let o = run_on
            .alloc_zeroed(&[1, 1, 2, dv].into(), DType::BF16)
            .unwrap();
        let lse = run_on.alloc_zeroed(&[1, 2, 1].into(), DType::F32).unwrap();
        let mp = MlaDecodeParams {
            softmax_scale: 0.25,
            causal: false,
            head_dim_v: dv,
            kv_format: Default::default(),
        };
        let mut cache_w = cache.clone();
        let mut step = || {
            let route = RouteInputs::new(&logits);
            ops::moe_route_into(run_on, route, &route_params(), &ids, &weights).unwrap();
            let inputs = ExpertsInputs::new(&x, &w13, &w2, &ids, &weights);
            ops::moe_experts_into(run_on, inputs, &ExpertsParams::default(), &y).unwrap();
            ops::mla_cache_write(
                run_on,
                &kv,
                &slot,
                &mut cache_w,
                &CacheWriteParams::default(),
            )
            .unwrap();
            ops::mla_decode_into(run_on, &q, &cache, &table, &lens, &mp, &o, &lse).unwrap();
            run_on.synchronize().unwrap();
        };
        step();
        let (traffic, kernels, programs) = (
            be.traffic().unwrap(),
            be.kernels_made(),
            be.programs_built(),
        );
        for _ in 0..3 {
            step();
        }
        let moved = be.traffic().unwrap().since(&traffic);
        assert_eq!((moved.allocations, moved.uploads), (0, 0), "{moved}");
        // Each synchronize reads the flag words of the step's index checks, nothing else.
        assert_eq!(moved.downloads, 3, "{moved}");
        assert_eq!(
            be.kernels_made(),
            kernels,
            "no clCreateKernel after the first step"
        );
        assert_eq!(be.programs_built(), programs);
    }
}
