//! `moe_experts` properties: linear in topk_weights; a weight of 0 or an id of -1
//! contributes nothing.

use crate::cases::experts::{run_experts, ExpertsData, ExpertsDims};
use crate::compare::{check_close, Tol};
use crate::harness::Ctx;
use crate::rng::Rng;
use moemla_core::{DType, Op};
use proptest::prelude::*;

fn problems(dtypes: Vec<DType>) -> impl Strategy<Value = (DType, ExpertsDims, u64)> {
    let dims = (
        1usize..=4,
        prop::sample::select(vec![4usize, 8, 16, 20, 33]),
        prop::sample::select(vec![2usize, 4, 8, 12, 17]),
        1usize..=6,
        1usize..=3,
    )
        .prop_map(|(tokens, hidden, inter, experts, top_k)| ExpertsDims {
            tokens,
            hidden,
            inter,
            experts,
            top_k,
        });
    (prop::sample::select(dtypes), dims, any::<u64>())
}

/// y(a * w) = a * y(w).
pub fn linear_in_weights(ctx: &Ctx<'_>) {
    let dtypes = ctx.float_dtypes(Op::MoeExperts);
    if dtypes.is_empty() {
        return;
    }
    let strategy = (problems(dtypes), -2.0f32..2.0);
    ctx.check_property(
        "moe_experts linear in topk_weights",
        strategy,
        |((dtype, d, seed), a)| {
            let mut rng = Rng::new(seed);
            let data = ExpertsData::random(d, &mut rng);
            let ids: Vec<i32> = (0..d.tokens * d.top_k)
                .map(|_| rng.below(d.experts + 1) as i32 - 1)
                .collect();
            let w = rng.vec(d.tokens * d.top_k, 0.0, 1.0);
            let aw: Vec<f32> = w.iter().map(|v| a * v).collect();
            let (y, _) = run_experts(ctx, dtype, d, &data, &ids, &w);
            let (y_scaled, _) = run_experts(ctx, dtype, d, &data, &ids, &aw);
            let exp: Vec<f64> = y.iter().map(|&v| a as f64 * v as f64).collect();
            check_close(
                &format!("{dtype} {d:?} y(a w) vs a y(w), a = {a}"),
                &y_scaled,
                &exp,
                Tol::of(dtype),
            )
        },
    );
}

/// Slots with id -1 (whatever their weight) or weight 0 (whatever their expert) leave y
/// as if the slot were absent.
pub fn masked_slots_contribute_nothing(ctx: &Ctx<'_>) {
    let dtypes = ctx.float_dtypes(Op::MoeExperts);
    if dtypes.is_empty() {
        return;
    }
    ctx.check_property(
        "moe_experts masked slots",
        problems(dtypes),
        |(dtype, d, seed)| {
            let mut rng = Rng::new(seed);
            let data = ExpertsData::random(d, &mut rng);
            let n = d.tokens * d.top_k;
            let ids: Vec<i32> = (0..n).map(|_| rng.below(d.experts) as i32).collect();
            let w = rng.vec(n, 0.1, 1.0);
            let masked: Vec<bool> = (0..n).map(|_| rng.below(3) == 0).collect();
            // The reference of the -1 run skips the masked slots: it is y without them.
            let minus_one_ids: Vec<i32> = (0..n)
                .map(|i| if masked[i] { -1 } else { ids[i] })
                .collect();
            let big_w: Vec<f32> = (0..n).map(|i| if masked[i] { 1e4 } else { w[i] }).collect();
            let zero_w: Vec<f32> = (0..n).map(|i| if masked[i] { 0.0 } else { w[i] }).collect();
            let (y_minus_one, exp) = run_experts(ctx, dtype, d, &data, &minus_one_ids, &big_w);
            check_close(
                &format!("{dtype} {d:?} id -1 slots {masked:?}"),
                &y_minus_one,
                &exp,
                Tol::of(dtype),
            )?;
            let (y_zero, _) = run_experts(ctx, dtype, d, &data, &ids, &zero_w);
            check_close(
                &format!("{dtype} {d:?} weight 0 slots {masked:?}"),
                &y_zero,
                &exp,
                Tol::of(dtype),
            )
        },
    );
}
