//! moe_experts with random sizes, ids outside [-1, E) (i32 extremes included), weights of
//! 0 / -0 / NaN / inf, and experts whose weights hold NaN and inf.

use crate::values::{float_dtype, unit_f32, upload_as, upload_i32};
use crate::{describe, ensure, is_capability_error};
use moemla_core::{ops, Backend, DType, Error, ExpertsParams};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// One generated experts problem.
#[derive(Clone, Debug)]
pub struct ExpertsCase {
    tokens: usize,
    hidden: usize,
    inter: usize,
    experts: usize,
    k: usize,
    dtype: DType,
    /// An expert whose weights hold NaN and inf (its output is not finite).
    poisoned: Option<usize>,
    ids: Vec<i32>,
    weights: Vec<f32>,
    x: Vec<f32>,
    w13: Vec<f32>,
    w2: Vec<f32>,
}

fn id(experts: usize) -> impl Strategy<Value = i32> {
    let e = experts as i32;
    prop_oneof![
        12 => -1..e,
        1 => Just(e),
        1 => Just(-2),
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
    ]
}

fn weight() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -2.0f32..2.0,
        3 => Just(0.0f32),
        3 => Just(-0.0f32),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
    ]
}

fn case() -> impl Strategy<Value = ExpertsCase> {
    (
        1usize..5,
        1usize..34,
        1usize..34,
        1usize..6,
        1usize..5,
        float_dtype(),
    )
        .prop_flat_map(|(tokens, hidden, inter, experts, k, dtype)| {
            (
                prop::collection::vec(unit_f32(), tokens * hidden),
                prop::collection::vec(unit_f32(), experts * 2 * inter * hidden),
                prop::collection::vec(unit_f32(), experts * hidden * inter),
                prop::collection::vec(id(experts), tokens * k),
                prop::collection::vec(weight(), tokens * k),
                prop::option::of(0..experts),
            )
                .prop_map(move |(x, mut w13, w2, ids, weights, poisoned)| {
                    if let Some(e) = poisoned {
                        let rows = 2 * inter * hidden;
                        w13[e * rows] = f32::NAN;
                        w13[e * rows + rows - 1] = f32::INFINITY;
                    }
                    ExpertsCase {
                        tokens,
                        hidden,
                        inter,
                        experts,
                        k,
                        dtype,
                        x,
                        w13,
                        w2,
                        ids,
                        weights,
                        poisoned,
                    }
                })
        })
}

/// Ids outside [-1, E) are `IndexOutOfRange` at the first bad position; otherwise the call
/// succeeds, a slot with weight ±0 or id -1 contributes nothing (even from a poisoned
/// expert), and y is finite when every used slot is.
pub fn property(backend: &dyn Backend, mut runner: TestRunner) -> Result<(), String> {
    runner
        .run(&case(), |c| {
            let fail = |e: Error| TestCaseError::fail(format!("setup: {e}"));
            let (e, h, i, t, k) = (c.experts, c.hidden, c.inter, c.tokens, c.k);
            let (x, _) = upload_as(backend, &[t, h], &c.x, c.dtype).map_err(fail)?;
            let (w13, _) = upload_as(backend, &[e, 2 * i, h], &c.w13, c.dtype).map_err(fail)?;
            let (w2, _) = upload_as(backend, &[e, h, i], &c.w2, c.dtype).map_err(fail)?;
            let ids = upload_i32(backend, &[t, k], &c.ids).map_err(fail)?;
            let (weights, _) = upload_as(backend, &[t, k], &c.weights, DType::F32).map_err(fail)?;
            let result = ops::moe_experts(
                backend,
                &x,
                &w13,
                &w2,
                &ids,
                &weights,
                &ExpertsParams::default(),
            )
            .and_then(|y| backend.download(&y)?.to_f32_vec());

            let first_bad = c.ids.iter().position(|&id| id < -1 || id >= e as i32);
            let y = match (result, first_bad) {
                (Err(err), Some(pos)) => {
                    return ensure(
                        matches!(&err, Error::IndexOutOfRange { arg: "topk_ids", index, .. }
                            if *index == vec![pos / k, pos % k]),
                        || {
                            format!(
                                "id {} at {pos}: expected IndexOutOfRange there, got {err:?}",
                                c.ids[pos]
                            )
                        },
                    )
                }
                (Ok(_), Some(pos)) => {
                    return Err(TestCaseError::fail(format!(
                        "out-of-range id {} at {pos} accepted",
                        c.ids[pos]
                    )))
                }
                (Err(err), None) => {
                    return ensure(is_capability_error(&err), || {
                        format!("valid call failed: {err}")
                    })
                }
                (Ok(y), None) => y,
            };

            let used = |slot: usize| c.ids[slot] >= 0 && c.weights[slot] != 0.0;
            for token in 0..t {
                let slots = token * k..(token + 1) * k;
                let row = &y[token * h..(token + 1) * h];
                if !slots.clone().any(used) {
                    ensure(row.iter().all(|&v| v == 0.0), || {
                        format!("token {token}: every slot skipped, y = {row:?}")
                    })?;
                }
                let all_finite = slots
                    .clone()
                    .filter(|&s| used(s))
                    .all(|s| c.weights[s].is_finite() && Some(c.ids[s] as usize) != c.poisoned);
                // F16 holds at most 65504: a sum of several large slots may overflow it.
                if all_finite && c.dtype != DType::F16 {
                    ensure(row.iter().all(|v| v.is_finite()), || {
                        format!("token {token}: finite used slots gave y = {row:?}")
                    })?;
                }
            }
            Ok(())
        })
        .map_err(describe)
}
