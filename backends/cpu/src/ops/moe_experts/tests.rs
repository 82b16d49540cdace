//! The CPU experts against a plain f64 reference.

use crate::test_util::{download_f32, upload_as, Lcg};
use crate::CpuBackend;
use moemla_core::{ops, Backend, DType, Error, ExpertsParams, HostTensor};

/// `y[t] = sum_j w[t,j] * W2[e] (silu(W1[e] x[t]) * W3[e] x[t])` in f64, written plainly.
fn reference(
    x: &[f32],
    w13: &[f32],
    w2: &[f32],
    ids: &[i32],
    weights: &[f32],
    (h, i, k): (usize, usize, usize),
) -> Vec<f64> {
    let t = x.len() / h;
    let mut y = vec![0.0f64; t * h];
    for tok in 0..t {
        let xt = &x[tok * h..(tok + 1) * h];
        for j in 0..k {
            let id = ids[tok * k + j];
            if id < 0 {
                continue;
            }
            let e = id as usize;
            let dot = |row: usize| -> f64 {
                let w = &w13[(e * 2 * i + row) * h..][..h];
                w.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let act: Vec<f64> = (0..i)
                .map(|r| {
                    let g = dot(r);
                    g / (1.0 + (-g).exp()) * dot(i + r)
                })
                .collect();
            for c in 0..h {
                let w = &w2[(e * h + c) * i..][..i];
                let d: f64 = w.iter().zip(&act).map(|(&a, &b)| a as f64 * b).sum();
                y[tok * h + c] += weights[tok * k + j] as f64 * d;
            }
        }
    }
    y
}

fn check(dtype: DType, tol: f64) {
    let cpu = CpuBackend::new();
    let (t, h, i, e, k) = (9, 256, 96, 16, 6);
    let mut rng = Lcg::new(7);
    let (x, xs) = upload_as(&cpu, &[t, h], &rng.vec(t * h, -1.0, 1.0), dtype);
    let (w13, w13s) = upload_as(
        &cpu,
        &[e, 2 * i, h],
        &rng.vec(e * 2 * i * h, -0.1, 0.1),
        dtype,
    );
    let (w2, w2s) = upload_as(&cpu, &[e, h, i], &rng.vec(e * h * i, -0.1, 0.1), dtype);
    // Token 3 picks nobody in slot 2; experts 14 and 15 are never picked.
    let ids: Vec<i32> = (0..t * k)
        .map(|n| {
            if n == 3 * k + 2 {
                -1
            } else {
                ((n * 5 + n / k) % 14) as i32
            }
        })
        .collect();
    let weights = rng.vec(t * k, 0.0, 1.0);
    let ids_t = cpu
        .upload(&HostTensor::from_slice([t, k], &ids).unwrap())
        .unwrap();
    let w_t = cpu
        .upload(&HostTensor::from_slice([t, k], &weights).unwrap())
        .unwrap();
    let y = ops::moe_experts(&cpu, &x, &w13, &w2, &ids_t, &w_t, &ExpertsParams::default()).unwrap();
    assert_eq!(y.dtype(), dtype);
    let got = download_f32(&cpu, &y);
    let want = reference(&xs, &w13s, &w2s, &ids, &weights, (h, i, k));
    let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(scale > 1e-3, "degenerate test data");
    for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (scale + w.abs()),
            "y[{n}]: {g} vs {w}"
        );
    }
}

#[test]
fn experts_match_f64_reference_in_f32() {
    check(DType::F32, 1e-5);
}

#[test]
fn experts_match_f64_reference_in_half_types() {
    // Only the output rounding separates the results (inputs are compared as stored).
    check(DType::F16, 1e-3);
    check(DType::BF16, 8e-3);
}

#[test]
fn out_of_range_id_is_reported_at_its_position() {
    let cpu = CpuBackend::new();
    let up = |dims: &[usize], n: usize| upload_as(&cpu, dims, &vec![0.5; n], DType::F32).0;
    let (x, w13, w2) = (up(&[2, 4], 8), up(&[3, 4, 4], 48), up(&[3, 4, 2], 24));
    let ids = cpu
        .upload(&HostTensor::from_slice([2, 2], &[0, 1, 2, 3]).unwrap())
        .unwrap();
    let w = up(&[2, 2], 4);
    let err =
        ops::moe_experts(&cpu, &x, &w13, &w2, &ids, &w, &ExpertsParams::default()).unwrap_err();
    match err {
        Error::IndexOutOfRange {
            arg, index, value, ..
        } => {
            assert_eq!((arg, index, value), ("topk_ids", vec![1, 1], 3));
        }
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
}

#[test]
fn zero_weight_and_empty_slots_skip_a_non_finite_expert() {
    // Expert 1's weights hold NaN (gate) and inf (down): any token it computes is NaN.
    // It is routed only with weight +0.0 or -0.0, or with id -1 (whose weight is NaN):
    // those slots contribute nothing, so y is finite and equals y without them.
    let cpu = CpuBackend::new();
    let (t, h, i, e, k) = (4, 8, 4, 3, 3);
    let mut rng = Lcg::new(17);
    let x = rng.vec(t * h, -1.0, 1.0);
    let mut w13 = rng.vec(e * 2 * i * h, -0.3, 0.3);
    let mut w2 = rng.vec(e * h * i, -0.3, 0.3);
    w13[2 * i * h + 3] = f32::NAN;
    w2[h * i + 5] = f32::INFINITY;
    let ids = [0, 1, 2, 1, 2, -1, -1, 0, 1, 2, 1, 0];
    let weights = [
        0.5,
        0.0,
        0.25,
        -0.0,
        0.75,
        f32::NAN,
        f32::NAN,
        1.0,
        0.0,
        0.5,
        -0.0,
        0.125,
    ];
    let (xd, _) = upload_as(&cpu, &[t, h], &x, DType::F32);
    let (w13d, _) = upload_as(&cpu, &[e, 2 * i, h], &w13, DType::F32);
    let (w2d, _) = upload_as(&cpu, &[e, h, i], &w2, DType::F32);
    let ids_d = cpu
        .upload(&HostTensor::from_slice([t, k], &ids).unwrap())
        .unwrap();
    let w_d = cpu
        .upload(&HostTensor::from_slice([t, k], &weights).unwrap())
        .unwrap();
    let y = ops::moe_experts(
        &cpu,
        &xd,
        &w13d,
        &w2d,
        &ids_d,
        &w_d,
        &ExpertsParams::default(),
    )
    .unwrap();
    let got = download_f32(&cpu, &y);
    // The reference without those slots: their ids set to -1.
    let kept: Vec<i32> = ids
        .iter()
        .zip(&weights)
        .map(|(&id, &w)| if w == 0.0 || id < 0 { -1 } else { id })
        .collect();
    assert!(
        !kept.contains(&1),
        "expert 1 must only sit in skipped slots"
    );
    let want = reference(&x, &w13, &w2, &kept, &weights, (h, i, k));
    for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(g.is_finite(), "y[{n}] = {g}");
        assert!(
            (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "y[{n}]: {g} vs {w}"
        );
    }
}
