//! Caller-owned memory on the OpenCL backend: `DeviceTensor::from_raw` over `cl_mem` buffers
//! the test creates (and releases) in the backend's context, writes into existing tensors
//! (`upload_into`, `copy_into`) and the ops' `_into` forms writing into them.

mod common;

use common::{backend, float_tensor, int_tensor, read_f32, read_i32};
use moemla_core::ops::{self, ExpertsInputs, RouteInputs, SparseDecodeInputs};
use moemla_core::{
    Backend, DType, DeviceTensor, Error, ExpertsParams, HostTensor, MlaDecodeParams, RouteParams,
    SparseDecodeParams,
};
use opencl3::memory::{CL_MEM_COPY_HOST_PTR, CL_MEM_READ_WRITE, CL_MEM_REFERENCE_COUNT};
use opencl3::types::cl_mem;
use std::ffi::c_void;

/// A buffer the test owns: created in the backend's context, released on drop.
struct CallerBuffer(cl_mem);

impl CallerBuffer {
    /// A buffer holding `bytes`.
    fn new(be: &moemla_opencl::OpenClBackend, bytes: &[u8]) -> CallerBuffer {
        // SAFETY: `bytes` is a live slice of the given size, copied during the call.
        let mem = unsafe {
            cl3::memory::create_buffer(
                be.context().cast(),
                CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                bytes.len(),
                bytes.as_ptr() as *mut c_void,
            )
        }
        .unwrap();
        CallerBuffer(mem)
    }

    /// A buffer of `n` f32 NaNs (so a result that skipped an element shows).
    fn nans(be: &moemla_opencl::OpenClBackend, n: usize) -> CallerBuffer {
        let bytes: Vec<u8> = (0..n).flat_map(|_| f32::NAN.to_le_bytes()).collect();
        CallerBuffer::new(be, &bytes)
    }

    /// The buffer as a tensor (moemla takes a reference of its own).
    fn wrap(&self, be: &dyn Backend, dims: &[usize], dtype: DType) -> DeviceTensor {
        // SAFETY: a live buffer of the backend's context, at least the tensor's size; it
        // outlives every use (the tests drop the tensors first and synchronize), and nothing
        // else uses it meanwhile.
        unsafe { DeviceTensor::from_raw(be, self.0.cast(), dims, dtype) }.unwrap()
    }

    fn references(&self) -> u32 {
        cl3::memory::get_mem_object_info(self.0, CL_MEM_REFERENCE_COUNT)
            .unwrap()
            .into()
    }

    /// Asserts that only the caller's reference is left once the tensors over the buffer
    /// are dropped. PoCL releases the references of finished commands in the background
    /// (after `clFinish` returns, later under load), so wait up to 2 s for the count to
    /// come back to one; a reference moemla leaked never does.
    fn assert_only_the_callers_reference(&self) {
        let released = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            self.references() == 1
        });
        assert!(released, "{} references left", self.references());
    }
}

impl Drop for CallerBuffer {
    fn drop(&mut self) {
        // SAFETY: the reference `new` created, released once.
        unsafe { cl3::memory::release_mem_object(self.0) }.unwrap();
    }
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Softmax over `row`, then the `k` largest (lower index on ties): independent reference.
fn softmax_topk(row: &[f32], k: usize) -> (Vec<i32>, Vec<f32>) {
    let max = row.iter().cloned().fold(f64::MIN, |m, v| m.max(v as f64));
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| e[b].partial_cmp(&e[a]).unwrap().then(a.cmp(&b)));
    let ids = idx[..k].iter().map(|&i| i as i32).collect();
    let w = idx[..k].iter().map(|&i| (e[i] / sum) as f32).collect();
    (ids, w)
}

#[test]
fn an_op_reads_caller_buffers_and_writes_caller_outputs_in_place() {
    let Some(be) = backend() else { return };
    let logits_mem = CallerBuffer::new(&be, &bytes_f32(&[0.0; 8]));
    let ids_mem = CallerBuffer::new(&be, &[0xAB; 16]);
    let weights_mem = CallerBuffer::nans(&be, 4);
    let logits = logits_mem.wrap(&*be, &[2, 4], DType::F32);
    let ids = ids_mem.wrap(&*be, &[2, 2], DType::I32);
    let weights = weights_mem.wrap(&*be, &[2, 2], DType::F32);
    assert_eq!(logits_mem.references(), 2, "moemla holds one reference");
    let params = RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    };
    for step in 0..3 {
        let rows = [
            [0.5 + step as f32, -1.0, 2.0, 0.25],
            [-0.5, 1.5 * step as f32, 0.0, 3.0],
        ];
        // The caller rewrites its input between calls; the op sees it.
        be.upload_into(
            &HostTensor::from_slice([2, 4], &rows.concat()).unwrap(),
            &logits,
            0,
        )
        .unwrap();
        ops::moe_route_into(&*be, RouteInputs::new(&logits), &params, &ids, &weights).unwrap();
        let (mut want_ids, mut want_w) = (vec![], vec![]);
        for row in rows {
            let (i, w) = softmax_topk(&row, 2);
            want_ids.extend(i);
            want_w.extend(w);
        }
        assert_eq!(read_i32(&*be, &ids), want_ids, "step {step}");
        let got = read_f32(&*be, &weights);
        for (g, w) in got.iter().zip(&want_w) {
            assert!((g - w).abs() <= 1e-6, "step {step}: {got:?} vs {want_w:?}");
        }
    }
    drop((logits, ids, weights));
    be.synchronize().unwrap();
    // moemla's reference is gone; the buffer is the caller's, holding the last results
    // (read through a fresh wrap).
    ids_mem.assert_only_the_callers_reference();
    let again = ids_mem.wrap(&*be, &[4], DType::I32);
    let (last0, _) = softmax_topk(&[2.5, -1.0, 2.0, 0.25], 2);
    let (last1, _) = softmax_topk(&[-0.5, 3.0, 0.0, 3.0], 2);
    assert_eq!(read_i32(&*be, &again), [last0, last1].concat());
}

#[test]
fn experts_and_decode_into_caller_outputs_match_the_allocating_ops() {
    let Some(be) = backend() else { return };
    let be: &dyn Backend = &*be;
    let cl = backend().unwrap();
    let seq = |n: usize, s: f32| -> Vec<f32> {
        (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * s).collect()
    };
    let (t, h, i, e) = (3, 4, 2, 2);
    let (w13, _) = float_tensor(be, &[e, 2 * i, h], &seq(e * 2 * i * h, 0.1), DType::F32);
    let (w2, _) = float_tensor(be, &[e, h, i], &seq(e * h * i, 0.2), DType::F32);
    let ids = int_tensor(be, &[t, 1], &[1, -1, 0]);
    let (w, _) = float_tensor(be, &[t, 1], &[0.5, 1.0, 2.0], DType::F32);
    // y starts as NaN: every element must be written (nothing relies on a zero fill).
    let y_mem = CallerBuffer::nans(&cl, t * h);
    let y = y_mem.wrap(be, &[t, h], DType::F32);
    let p = ExpertsParams::default();
    for step in 0..2 {
        let (x, _) = float_tensor(be, &[t, h], &seq(t * h, 0.3 + step as f32), DType::F32);
        let inputs = ExpertsInputs::new(&x, &w13, &w2, &ids, &w);
        ops::moe_experts_into(be, inputs, &p, &y).unwrap();
        let want = ops::moe_experts(be, &x, &w13, &w2, &ids, &w, &p).unwrap();
        assert_eq!(be.download(&y).unwrap(), be.download(&want).unwrap());
    }
    let got = read_f32(be, &y);
    assert_eq!(&got[4..8], &[0.0; 4], "row 1 (id -1) is zero");
    assert!(
        got[..4].iter().all(|v| v.is_finite() && *v != 0.0),
        "{got:?}"
    );

    let (b, hq, d, dv, bs) = (2, 2, 4, 2, 4);
    let (cache, _) = float_tensor(be, &[2, bs, 1, d], &seq(2 * bs * d, 0.25), DType::F32);
    let table = int_tensor(be, &[b, 1], &[1, 0]);
    let lens = int_tensor(be, &[b], &[3, 4]);
    let mp = MlaDecodeParams {
        softmax_scale: 0.5,
        causal: false,
        head_dim_v: dv,
        kv_format: Default::default(),
    };
    let o_mem = CallerBuffer::nans(&cl, b * hq * dv);
    let lse_mem = CallerBuffer::nans(&cl, b * hq);
    let (o, lse) = (
        o_mem.wrap(be, &[b, 1, hq, dv], DType::F32),
        lse_mem.wrap(be, &[b, hq, 1], DType::F32),
    );
    for step in 0..2 {
        let (q, _) = float_tensor(
            be,
            &[b, 1, hq, d],
            &seq(b * hq * d, 0.5 + step as f32),
            DType::F32,
        );
        ops::mla_decode_into(be, &q, &cache, &table, &lens, &mp, &o, &lse).unwrap();
        let want = ops::mla_decode(be, &q, &cache, &table, &lens, &mp).unwrap();
        assert_eq!(be.download(&o).unwrap(), be.download(&want.o).unwrap());
        assert_eq!(be.download(&lse).unwrap(), be.download(&want.lse).unwrap());
    }
    assert!(read_f32(be, &lse).iter().all(|v| v.is_finite()));
}

#[test]
fn sparse_decode_into_caller_outputs_matches_the_allocating_op() {
    let Some(cl) = backend() else { return };
    let be: &dyn Backend = &*cl;
    let (b, sq, hq, d, dv, topk) = (2, 2, 4, 16, 8, 5);
    let (q, _) = float_tensor(
        be,
        &[b, sq, hq, d],
        &common::uniform(7, 256, -1.0, 1.0),
        DType::F32,
    );
    let (kv, _) = float_tensor(
        be,
        &[4, 4, 1, d],
        &common::uniform(8, 256, -1.0, 1.0),
        DType::F32,
    );
    let idx: Vec<i32> = (0..b * sq * topk)
        .map(|i| (i as i32 * 5) % 17 - 1)
        .collect();
    let indices = int_tensor(be, &[b, sq, topk], &idx);
    let p = SparseDecodeParams {
        softmax_scale: 0.25,
        head_dim_v: dv,
        kv_format: Default::default(),
    };
    let o_mem = CallerBuffer::nans(&cl, b * sq * hq * dv);
    let lse_mem = CallerBuffer::nans(&cl, b * hq * sq);
    let o = o_mem.wrap(be, &[b, sq, hq, dv], DType::F32);
    let lse = lse_mem.wrap(be, &[b, hq, sq], DType::F32);
    let inputs = SparseDecodeInputs::new(&q, &kv, &indices);
    ops::mla_sparse_decode_into(be, inputs, &p, &o, &lse).unwrap();
    let want = ops::mla_sparse_decode(be, inputs, &p).unwrap();
    assert_eq!(be.download(&o).unwrap(), be.download(&want.o).unwrap());
    assert_eq!(be.download(&lse).unwrap(), be.download(&want.lse).unwrap());
    assert!(read_f32(be, &o).iter().all(|v| v.is_finite()));
}

#[test]
fn upload_into_and_copy_into_write_ranges_and_refuse_bad_ones() {
    let Some(be) = backend() else { return };
    let be: &dyn Backend = &*be;
    let dst = be.alloc_zeroed(&[2, 3].into(), DType::I32).unwrap();
    be.upload_into(&HostTensor::from_slice([2], &[7i32, 8]).unwrap(), &dst, 3)
        .unwrap();
    let src = int_tensor(be, &[4], &[1, 2, 3, 4]);
    be.copy_into(&src, 1, &dst, 0, 2).unwrap();
    assert_eq!(read_i32(be, &dst), vec![2, 3, 0, 7, 8, 0]);
    // Overlapping ranges of one buffer (a reshape shares it).
    be.copy_into(&dst, 0, &dst.reshape([6]).unwrap(), 1, 4)
        .unwrap();
    assert_eq!(read_i32(be, &dst), vec![2, 2, 3, 0, 7, 0]);
    // Empty ranges are no-ops, also at the end.
    be.copy_into(&src, 4, &dst, 6, 0).unwrap();
    be.upload_into(&HostTensor::from_slice([0], &[0i32; 0]).unwrap(), &dst, 6)
        .unwrap();

    let err = be
        .upload_into(&HostTensor::from_slice([2], &[1i32, 1]).unwrap(), &dst, 5)
        .unwrap_err();
    assert_eq!(
        err,
        Error::OutOfBounds {
            call: "upload_into",
            arg: "dst",
            offset: 5,
            len: 2,
            size: 6
        }
    );
    let err = be.copy_into(&src, 3, &dst, 0, 2).unwrap_err();
    assert_eq!(
        err,
        Error::OutOfBounds {
            call: "copy_into",
            arg: "src",
            offset: 3,
            len: 2,
            size: 4
        }
    );
    let err = be.copy_into(&src, 0, &dst, usize::MAX, 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                arg: "dst",
                offset: usize::MAX,
                ..
            }
        ),
        "{err}"
    );
    let err = be
        .upload_into(&HostTensor::from_slice([1], &[1.0f32]).unwrap(), &dst, 0)
        .unwrap_err();
    assert_eq!(
        err,
        Error::DTypeMismatch {
            call: "upload_into",
            arg: "dst",
            other: "src",
            expected: DType::F32,
            got: DType::I32
        }
    );
    // Nothing was written by the refused calls.
    assert_eq!(read_i32(be, &dst), vec![2, 2, 3, 0, 7, 0]);
}

#[test]
fn two_wraps_of_one_buffer_copy_overlapping_ranges_correctly() {
    let Some(cl) = backend() else { return };
    let be: &dyn Backend = &*cl;
    let values: Vec<u8> = (1..=8i32).flat_map(|v| v.to_le_bytes()).collect();
    let mem = CallerBuffer::new(&cl, &values);
    let a = mem.wrap(be, &[8], DType::I32);
    let b = mem.wrap(be, &[2, 4], DType::I32);
    assert!(!a.same_buffer(&b));
    be.copy_into(&a, 0, &b, 2, 5).unwrap();
    assert_eq!(read_i32(be, &a), vec![1, 2, 1, 2, 3, 4, 5, 8]);
    drop((a, b));
    be.synchronize().unwrap();
    mem.assert_only_the_callers_reference();
}

#[test]
fn wrap_raw_refuses_null_and_small_buffers() {
    let Some(cl) = backend() else { return };
    let be: &dyn Backend = &*cl;
    // SAFETY: null is refused before use.
    let err =
        unsafe { DeviceTensor::from_raw(be, std::ptr::null_mut(), [2], DType::F32) }.unwrap_err();
    assert!(
        matches!(&err, Error::Tensor(m) if m.contains("null")),
        "{err}"
    );
    let mem = CallerBuffer::new(&cl, &[0u8; 12]);
    // SAFETY: a live buffer of the backend's context; refused as too small.
    let err = unsafe { DeviceTensor::from_raw(be, mem.0.cast(), [4], DType::F32) }.unwrap_err();
    assert!(
        matches!(&err, Error::Tensor(m) if m.contains("has 12 bytes, the tensor needs 16")),
        "{err}"
    );
    assert_eq!(mem.references(), 1, "a refused wrap keeps no reference");
    // A larger buffer is fine: the tensor uses its first bytes.
    let t = mem.wrap(be, &[2], DType::F32);
    be.upload_into(
        &HostTensor::from_slice([2], &[1.5f32, -2.0]).unwrap(),
        &t,
        0,
    )
    .unwrap();
    assert_eq!(read_f32(be, &t), vec![1.5, -2.0]);
}

#[test]
fn an_index_error_of_an_into_op_comes_with_the_next_synchronize() {
    common::in_child(
        "an_index_error_of_an_into_op_comes_with_the_next_synchronize",
        || {
            let Some(cl) = backend() else { return };
            let be: &dyn Backend = &*cl;
            let (t, h, i, e) = (2, 4, 2, 2);
            let (x, _) = float_tensor(be, &[t, h], &[0.5; 8], DType::F32);
            let (w13, _) = float_tensor(be, &[e, 2 * i, h], &[0.1; 32], DType::F32);
            let (w2, _) = float_tensor(be, &[e, h, i], &[0.1; 16], DType::F32);
            let ids = int_tensor(be, &[t, 1], &[0, 5]);
            let (w, _) = float_tensor(be, &[t, 1], &[1.0, 1.0], DType::F32);
            let y_mem = CallerBuffer::nans(&cl, t * h);
            let y = y_mem.wrap(be, &[t, h], DType::F32);
            let inputs = ExpertsInputs::new(&x, &w13, &w2, &ids, &w);
            ops::moe_experts_into(be, inputs, &ExpertsParams::default(), &y).unwrap();
            let err = be.synchronize().unwrap_err();
            assert_eq!(
                err,
                Error::IndexOutOfRange {
                    op: moemla_core::Op::MoeExperts,
                    arg: "topk_ids",
                    index: vec![1, 0],
                    value: 5,
                    valid: "[-1, 2)".into(),
                }
            );
            be.synchronize().unwrap();
        },
    );
}
