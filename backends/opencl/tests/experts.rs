//! moe_experts on the OpenCL device against a plain f64 reference, and its bad-id flag.

mod common;

use common::{assert_close, backend, float_tensor, int_tensor, read_f32, tolerance};
use moemla_core::{ops, Backend, DType, Error, ExpertsParams, Op};

/// y[t] = sum_j w[t,j] * W2[e] @ (silu(W1[e] x[t]) * W3[e] x[t]), in f64.
fn reference(
    x: &[f64],
    w13: &[f64],
    w2: &[f64],
    ids: &[i32],
    w: &[f64],
    (h, i, k): (usize, usize, usize),
) -> Vec<f64> {
    let t_count = x.len() / h;
    let mut y = vec![0.0; t_count * h];
    for t in 0..t_count {
        for j in 0..k {
            let Ok(e) = usize::try_from(ids[t * k + j]) else {
                continue;
            };
            let dot = |row: usize| -> f64 {
                (0..h)
                    .map(|c| w13[(e * 2 * i + row) * h + c] * x[t * h + c])
                    .sum()
            };
            let act: Vec<f64> = (0..i)
                .map(|r| {
                    let g = dot(r);
                    g / (1.0 + (-g).exp()) * dot(i + r)
                })
                .collect();
            for c in 0..h {
                let down: f64 = (0..i).map(|r| w2[(e * h + c) * i + r] * act[r]).sum();
                y[t * h + c] += w[t * k + j] * down;
            }
        }
    }
    y
}

fn check(t: usize, h: usize, i: usize, e: usize, k: usize, ids: &[i32], dtype: DType) {
    let Some(be) = backend() else { return };
    let (x, x64) = float_tensor(&*be, &[t, h], &common::uniform(1, t * h, -1.0, 1.0), dtype);
    let (w13, w13_64) = float_tensor(
        &*be,
        &[e, 2 * i, h],
        &common::uniform(2, e * 2 * i * h, -0.3, 0.3),
        dtype,
    );
    let (w2, w2_64) = float_tensor(
        &*be,
        &[e, h, i],
        &common::uniform(3, e * h * i, -0.3, 0.3),
        dtype,
    );
    let (w, w64) = float_tensor(
        &*be,
        &[t, k],
        &common::uniform(4, t * k, 0.1, 1.0),
        DType::F32,
    );
    let topk_ids = int_tensor(&*be, &[t, k], ids);
    let y = ops::moe_experts(
        &*be,
        &x,
        &w13,
        &w2,
        &topk_ids,
        &w,
        &ExpertsParams::default(),
    )
    .unwrap();
    let want = reference(&x64, &w13_64, &w2_64, ids, &w64, (h, i, k));
    assert_close(
        &format!("y {dtype}"),
        &read_f32(&*be, &y),
        &want,
        tolerance(dtype),
    );
}

#[test]
fn ragged_sizes_with_unused_slots_in_every_dtype() {
    // H and I not multiples of the 16-wide tiles; expert 3 unused; -1 slots contribute 0.
    let ids = [0, 2, 1, -1, 2, 0, -1, -1, 1, 2];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        check(5, 40, 24, 4, 2, &ids, dtype);
    }
}

#[test]
fn one_expert_with_more_rows_than_a_block() {
    let ids: Vec<i32> = (0..40)
        .map(|n| if n % 2 == 0 { 1 } else { n % 3 })
        .collect();
    check(20, 16, 32, 3, 2, &ids, DType::F32);
}

/// The op enqueues and returns; the next synchronize reports the first bad id. In a child
/// process: the error belongs to the backend, and a parallel test's download would take it.
#[test]
fn ids_outside_minus_one_to_e_raise_the_first_bad_element() {
    common::in_child(
        "ids_outside_minus_one_to_e_raise_the_first_bad_element",
        ids_outside_minus_one_to_e,
    );
}

fn ids_outside_minus_one_to_e() {
    let Some(be) = backend() else { return };
    let (t, h, i, e, k) = (3, 8, 8, 4, 2);
    let (x, _) = float_tensor(&*be, &[t, h], &vec![0.5; t * h], DType::F32);
    let (w13, _) = float_tensor(&*be, &[e, 2 * i, h], &vec![0.1; e * 2 * i * h], DType::F32);
    let (w2, _) = float_tensor(&*be, &[e, h, i], &vec![0.1; e * h * i], DType::F32);
    let (w, _) = float_tensor(&*be, &[t, k], &vec![1.0; t * k], DType::F32);
    for (ids, at, value) in [
        ([0, 1, -2, 4, 9, 0], [1, 0], -2),
        ([0, 1, 2, 3, 1, 4], [2, 1], 4),
    ] {
        let topk_ids = int_tensor(&*be, &[t, k], &ids);
        ops::moe_experts(
            &*be,
            &x,
            &w13,
            &w2,
            &topk_ids,
            &w,
            &ExpertsParams::default(),
        )
        .unwrap();
        let err = be.synchronize().unwrap_err();
        let want = Error::IndexOutOfRange {
            op: Op::MoeExperts,
            arg: "topk_ids",
            index: at.to_vec(),
            value,
            valid: "[-1, 4)".to_string(),
        };
        assert_eq!(err, want);
    }
}

#[test]
fn zero_weight_and_minus_one_slots_skip_non_finite_experts() {
    let Some(be) = backend() else { return };
    // Expert 1's weights are NaN, expert 2's inf. Slots naming them have weight +0 or -0
    // (or id -1): they contribute nothing (never 0 * NaN); y is expert 0's slots alone.
    let (t, h, i, e, k) = (3, 20, 18, 3, 3);
    let ids = [0, 1, 2, 1, 0, -1, 2, 2, 0];
    let weights = [0.5, 0.0, -0.0, -0.0, 0.7, 0.9, 0.0, -0.0, 1.0];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let (x, x64) = float_tensor(&*be, &[t, h], &common::uniform(1, t * h, -1.0, 1.0), dtype);
        let expert = |seed: u64, n: usize| {
            let mut v = common::uniform(seed, n, -0.3, 0.3);
            v.extend(vec![f32::NAN; n]);
            v.extend(vec![f32::INFINITY; n]);
            v
        };
        let (w13, w13_64) = float_tensor(&*be, &[e, 2 * i, h], &expert(2, 2 * i * h), dtype);
        let (w2, w2_64) = float_tensor(&*be, &[e, h, i], &expert(3, h * i), dtype);
        let (w, w64) = float_tensor(&*be, &[t, k], &weights, DType::F32);
        let topk_ids = int_tensor(&*be, &[t, k], &ids);
        let params = ExpertsParams::default();
        let y = ops::moe_experts(&*be, &x, &w13, &w2, &topk_ids, &w, &params).unwrap();
        // The reference sees only the computed slots (expert 0, non-zero weight).
        let kept: Vec<i32> = ids
            .iter()
            .zip(&weights)
            .map(|(&id, &wt)| if id == 0 && wt != 0.0 { 0 } else { -1 })
            .collect();
        let want = reference(&x64, &w13_64, &w2_64, &kept, &w64, (h, i, k));
        assert!(want.iter().all(|v| v.is_finite()));
        assert_close(
            &format!("y {dtype}"),
            &read_f32(&*be, &y),
            &want,
            tolerance(dtype),
        );
    }
}
