//! moe_experts on the CANN emulator against a plain f64 reference of the contract.

mod common;

use moemla_core::{ops, Backend, DType, Error, ExpertsParams, HostTensor};

/// y[t] = sum_j w[t,j] * W2[e] @ (silu(W1[e] x[t]) * (W3[e] x[t])), in f64.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    w13: &[f32],
    w2: &[f32],
    ids: &[i32],
    wts: &[f32],
    t: usize,
    h: usize,
    i: usize,
    k: usize,
) -> Vec<f64> {
    let mut y = vec![0.0; t * h];
    for tok in 0..t {
        let xr = &x[tok * h..(tok + 1) * h];
        for j in 0..k {
            let e = ids[tok * k + j];
            if e < 0 {
                continue;
            }
            let e = e as usize;
            let dot = |row: &[f32]| -> f64 {
                row.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let act: Vec<f64> = (0..i)
                .map(|r| {
                    let g = dot(&w13[(e * 2 * i + r) * h..][..h]);
                    let u = dot(&w13[(e * 2 * i + i + r) * h..][..h]);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            for c in 0..h {
                let d: f64 = (0..i)
                    .map(|r| w2[(e * h + c) * i + r] as f64 * act[r])
                    .sum();
                y[tok * h + c] += wts[tok * k + j] as f64 * d;
            }
        }
    }
    y
}

fn check(dtype: DType) {
    let be = common::backend();
    let (t, h, i, e, k) = (33, 64, 32, 8, 3);
    let x = HostTensor::from_f32_as([t, h], &common::values(21, t * h, -1.0, 1.0), dtype).unwrap();
    let w13 = HostTensor::from_f32_as(
        [e, 2 * i, h],
        &common::values(22, e * 2 * i * h, -0.2, 0.2),
        dtype,
    )
    .unwrap();
    let w2 = HostTensor::from_f32_as([e, h, i], &common::values(23, e * h * i, -0.2, 0.2), dtype)
        .unwrap();
    // Every expert used, unevenly; some slots are -1 ("no expert"); expert 3 never used.
    let ids: Vec<i32> = (0..t * k)
        .map(|n| {
            if n % 7 == 5 {
                -1
            } else {
                [0, 1, 2, 4, 5, 6, 7][(n * 5 + n / 3) % 7]
            }
        })
        .collect();
    let wts = common::values(24, t * k, 0.0, 1.0);
    let y = ops::moe_experts(
        &be,
        &be.upload(&x).unwrap(),
        &be.upload(&w13).unwrap(),
        &be.upload(&w2).unwrap(),
        &be.upload(&HostTensor::from_slice([t, k], &ids).unwrap())
            .unwrap(),
        &be.upload(&HostTensor::from_slice([t, k], &wts).unwrap())
            .unwrap(),
        &ExpertsParams::default(),
    )
    .unwrap();
    assert_eq!(y.dtype(), dtype);
    let got = be.download(&y).unwrap().to_f32_vec().unwrap();
    let want = reference(
        &x.to_f32_vec().unwrap(),
        &w13.to_f32_vec().unwrap(),
        &w2.to_f32_vec().unwrap(),
        &ids,
        &wts,
        t,
        h,
        i,
        k,
    );
    let tol = match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        _ => 2e-2,
    };
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol + tol * w.abs(),
            "{dtype} y[{n}] = {g}, want {w}"
        );
    }
    assert!(want.iter().any(|w| w.abs() > 0.01), "degenerate reference");
}

#[test]
fn experts_match_reference_f32() {
    check(DType::F32);
}

#[test]
fn experts_match_reference_f16() {
    check(DType::F16);
}

#[test]
fn experts_match_reference_bf16() {
    check(DType::BF16);
}

#[test]
fn expert_id_out_of_range_is_an_index_error() {
    let be = common::backend();
    let (t, h, i, e, k) = (2, 16, 8, 4, 2);
    let up = |shape: &[usize]| {
        let n = shape.iter().product();
        be.upload(
            &HostTensor::from_f32_as(
                shape.to_vec(),
                &common::values(1, n, -1.0, 1.0),
                DType::BF16,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let ids = be
        .upload(&HostTensor::from_slice([t, k], &[0, 1, -1, 4]).unwrap())
        .unwrap();
    let wts = be
        .upload(&HostTensor::from_slice([t, k], &[0.5f32; 4]).unwrap())
        .unwrap();
    let err = ops::moe_experts(
        &be,
        &up(&[t, h]),
        &up(&[e, 2 * i, h]),
        &up(&[e, h, i]),
        &ids,
        &wts,
        &ExpertsParams::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::IndexOutOfRange { arg: "topk_ids", index, value: 4, .. } if index == &vec![1, 1]),
        "{err}"
    );
}
