//! Caller-owned memory on the CPU backend: `DeviceTensor::from_raw` over host memory, writes
//! into existing tensors (`upload_into`, `copy_into`) and the ops' `_into` forms.

use moemla_core::ops::{self, ExpertsInputs, RouteInputs};
use moemla_core::{
    Backend, DType, DeviceTensor, Error, ExpertsParams, HostTensor, MlaDecodeParams, Op,
    RouteParams,
};
use moemla_cpu::{CpuBackend, CpuBuffer};

/// A tensor over `data`, which the test keeps owning.
fn wrap<T>(cpu: &CpuBackend, data: &mut [T], dims: &[usize], dtype: DType) -> DeviceTensor {
    // SAFETY: `data` is a live, aligned host array of exactly the tensor's size that
    // outlives every use of the tensor in these tests, and nothing else touches it meanwhile.
    unsafe { DeviceTensor::from_raw(cpu, data.as_mut_ptr().cast(), dims, dtype) }.unwrap()
}

/// Softmax over `row`, then the `k` largest (index order on ties): independent reference.
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

fn route_params() -> RouteParams {
    RouteParams {
        top_k: 2,
        ..RouteParams::deepseek_v2_lite()
    }
}

#[test]
fn an_op_reads_caller_memory_and_writes_caller_outputs_in_place() {
    let cpu = CpuBackend::new();
    let mut logits = vec![0.0f32; 8];
    let (mut ids, mut weights) = (vec![-7i32; 4], vec![-7.0f32; 4]);
    let logits_t = wrap(&cpu, &mut logits, &[2, 4], DType::F32);
    let ids_t = wrap(&cpu, &mut ids, &[2, 2], DType::I32);
    let weights_t = wrap(&cpu, &mut weights, &[2, 2], DType::F32);
    let addr = |t: &DeviceTensor| t.buffer::<CpuBuffer>("cpu", "test", "t").unwrap().addr();
    let before = (addr(&ids_t), addr(&weights_t));
    for step in 0..3 {
        let rows = [
            [0.5 + step as f32, -1.0, 2.0, 0.25],
            [-0.5, 1.5 * step as f32, 0.0, 3.0],
        ];
        // The caller writes its own memory between calls; the tensor sees it.
        cpu.upload_into(
            &HostTensor::from_slice([2, 4], &rows.concat()).unwrap(),
            &logits_t,
            0,
        )
        .unwrap();
        ops::moe_route_into(
            &cpu,
            RouteInputs::new(&logits_t),
            &route_params(),
            &ids_t,
            &weights_t,
        )
        .unwrap();
        assert_eq!((addr(&ids_t), addr(&weights_t)), before);
        let (mut want_ids, mut want_w) = (vec![], vec![]);
        for row in rows {
            let (i, w) = softmax_topk(&row, 2);
            want_ids.extend(i);
            want_w.extend(w);
        }
        let got = cpu.download(&ids_t).unwrap().to_i32_vec().unwrap();
        assert_eq!(got, want_ids, "step {step}");
        let got = cpu.download(&weights_t).unwrap().to_f32_vec().unwrap();
        for (g, w) in got.iter().zip(&want_w) {
            assert!((g - w).abs() <= 1e-6, "step {step}: {got:?} vs {want_w:?}");
        }
    }
    drop((logits_t, ids_t, weights_t));
    // The caller's memory holds the last results and is still the caller's to free.
    assert_eq!(logits[7], 3.0);
    assert_eq!(
        ids,
        softmax_topk(&[2.5, -1.0, 2.0, 0.25], 2)
            .0
            .into_iter()
            .chain(softmax_topk(&[-0.5, 3.0, 0.0, 3.0], 2).0)
            .collect::<Vec<_>>()
    );
    assert!(weights.iter().all(|&w| w > 0.0 && w < 1.0));
}

#[test]
fn experts_and_decode_into_reused_outputs_match_the_allocating_ops() {
    let cpu = CpuBackend::new();
    let up = |dims: &[usize], v: Vec<f32>| {
        cpu.upload(&HostTensor::from_slice(dims, &v).unwrap())
            .unwrap()
    };
    let seq = |n: usize, s: f32| {
        (0..n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * s)
            .collect::<Vec<_>>()
    };
    let (t, h, i, e) = (3, 4, 2, 2);
    let w13 = up(&[e, 2 * i, h], seq(e * 2 * i * h, 0.1));
    let w2 = up(&[e, h, i], seq(e * h * i, 0.2));
    let ids = cpu
        .upload(&HostTensor::from_slice([t, 1], &[1i32, -1, 0]).unwrap())
        .unwrap();
    let w = up(&[t, 1], vec![0.5, 1.0, 2.0]);
    let y = cpu.alloc_zeroed(&[t, h].into(), DType::F32).unwrap();
    let y_addr = y.buffer::<CpuBuffer>("cpu", "test", "y").unwrap().addr();
    let p = ExpertsParams::default();
    for step in 0..3 {
        let x = up(&[t, h], seq(t * h, 0.3 + step as f32));
        ops::moe_experts_into(&cpu, ExpertsInputs::new(&x, &w13, &w2, &ids, &w), &p, &y).unwrap();
        let want = ops::moe_experts(&cpu, &x, &w13, &w2, &ids, &w, &p).unwrap();
        assert_eq!(cpu.download(&y).unwrap(), cpu.download(&want).unwrap());
        assert_eq!(
            y.buffer::<CpuBuffer>("cpu", "test", "y").unwrap().addr(),
            y_addr
        );
    }
    // Row 1 (id -1) is zero; the others are not.
    let got = cpu.download(&y).unwrap().to_f32_vec().unwrap();
    assert_eq!(&got[4..8], &[0.0; 4]);
    assert!(got[..4].iter().any(|&v| v != 0.0));

    let (b, hq, d, dv, bs) = (2, 2, 4, 2, 4);
    let cache = up(&[2, bs, 1, d], seq(2 * bs * d, 0.25));
    let table = cpu
        .upload(&HostTensor::from_slice([b, 1], &[1i32, 0]).unwrap())
        .unwrap();
    let lens = cpu
        .upload(&HostTensor::from_slice([b], &[3i32, 4]).unwrap())
        .unwrap();
    let p = MlaDecodeParams {
        softmax_scale: 0.5,
        causal: false,
        head_dim_v: dv,
        kv_format: Default::default(),
    };
    let o = cpu
        .alloc_zeroed(&[b, 1, hq, dv].into(), DType::F32)
        .unwrap();
    let lse = cpu.alloc_zeroed(&[b, hq, 1].into(), DType::F32).unwrap();
    for step in 0..2 {
        let q = up(&[b, 1, hq, d], seq(b * hq * d, 0.5 + step as f32));
        ops::mla_decode_into(&cpu, &q, &cache, &table, &lens, &p, &o, &lse).unwrap();
        let want = ops::mla_decode(&cpu, &q, &cache, &table, &lens, &p).unwrap();
        assert_eq!(cpu.download(&o).unwrap(), cpu.download(&want.o).unwrap());
        assert_eq!(
            cpu.download(&lse).unwrap(),
            cpu.download(&want.lse).unwrap()
        );
    }

    // Outputs are checked as the contract's.
    let x = up(&[t, h], seq(t * h, 1.0));
    let inputs = ExpertsInputs::new(&x, &w13, &w2, &ids, &w);
    let short = cpu.alloc_zeroed(&[t, h - 1].into(), DType::F32).unwrap();
    let err = ops::moe_experts_into(&cpu, inputs, &ExpertsParams::default(), &short).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dim {
                op: Op::MoeExperts,
                arg: "y",
                dim: 1,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    let bf16 = cpu.alloc_zeroed(&[t, h].into(), DType::BF16).unwrap();
    let err = ops::moe_experts_into(&cpu, inputs, &ExpertsParams::default(), &bf16).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                op: Op::MoeExperts,
                arg: "y",
                got: DType::BF16,
                ..
            }
        ),
        "{err}"
    );
    let err = ops::moe_experts_into(&cpu, inputs, &ExpertsParams::default(), &x).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input {
                op: Op::MoeExperts,
                arg: "y",
                ..
            }
        ),
        "{err}"
    );
    let err = ops::mla_decode_into(
        &cpu,
        &up(&[b, 1, hq, d], seq(16, 1.0)),
        &cache,
        &table,
        &lens,
        &p,
        &o,
        &o.reshape([b, hq, 2]).unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dim {
                op: Op::MlaDecode,
                arg: "lse",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn upload_into_and_copy_into_write_ranges_and_refuse_bad_ones() {
    let cpu = CpuBackend::new();
    let dst = cpu.alloc_zeroed(&[2, 3].into(), DType::I32).unwrap();
    cpu.upload_into(&HostTensor::from_slice([2], &[7i32, 8]).unwrap(), &dst, 3)
        .unwrap();
    let src = cpu
        .upload(&HostTensor::from_slice([4], &[1i32, 2, 3, 4]).unwrap())
        .unwrap();
    cpu.copy_into(&src, 1, &dst, 0, 2).unwrap();
    assert_eq!(
        cpu.download(&dst).unwrap().to_i32_vec().unwrap(),
        vec![2, 3, 0, 7, 8, 0]
    );
    // Overlapping ranges of one buffer (a reshape shares it).
    cpu.copy_into(&dst, 0, &dst.reshape([6]).unwrap(), 1, 4)
        .unwrap();
    assert_eq!(
        cpu.download(&dst).unwrap().to_i32_vec().unwrap(),
        vec![2, 2, 3, 0, 7, 0]
    );

    let err = cpu
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
    let err = cpu.copy_into(&src, 3, &dst, 0, 2).unwrap_err();
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
    let err = cpu.copy_into(&src, 0, &dst, usize::MAX, 2).unwrap_err();
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
    let err = cpu
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
    assert_eq!(
        cpu.download(&dst).unwrap().to_i32_vec().unwrap(),
        vec![2, 2, 3, 0, 7, 0]
    );

    // A misaligned or null pointer is refused.
    let mut bytes = vec![0u32; 4];
    let odd = unsafe { bytes.as_mut_ptr().cast::<u8>().add(1) };
    // SAFETY: the pointer is refused before any access.
    let err = unsafe { DeviceTensor::from_raw(&cpu, odd.cast(), [2], DType::F32) }.unwrap_err();
    assert!(matches!(err, Error::Tensor(_)), "{err}");
    let err =
        unsafe { DeviceTensor::from_raw(&cpu, std::ptr::null_mut(), [2], DType::F32) }.unwrap_err();
    assert!(matches!(err, Error::Tensor(_)), "{err}");
}
