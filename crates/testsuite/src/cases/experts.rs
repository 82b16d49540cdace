//! `moe_experts` against the reference: small, moderate (H 256, I 128, E 8, k 2, T 17),
//! empty slots and repeated ids.

use crate::compare::{check_close, ensure, Tol};
use crate::harness::Ctx;
use crate::reference;
use crate::rng::Rng;
use moemla_core::{ops, DType, ExpertWeight, ExpertsParams, Op};

/// The sizes of a `moe_experts` problem.
#[derive(Clone, Copy, Debug)]
pub struct ExpertsDims {
    /// T.
    pub tokens: usize,
    /// H.
    pub hidden: usize,
    /// I.
    pub inter: usize,
    /// E.
    pub experts: usize,
    /// k.
    pub top_k: usize,
}

/// Host data of one problem (f32, before rounding to the run dtype).
#[derive(Clone, Debug)]
pub struct ExpertsData {
    /// x [T, H].
    pub x: Vec<f32>,
    /// w13 [E, 2I, H].
    pub w13: Vec<f32>,
    /// w2 [E, H, I].
    pub w2: Vec<f32>,
}

impl ExpertsData {
    /// Random data scaled so that activations and outputs stay O(1).
    pub fn random(d: ExpertsDims, rng: &mut Rng) -> Self {
        let a13 = (3.0 / d.hidden as f64).sqrt() * 1.5;
        let a2 = (3.0 / d.inter as f64).sqrt();
        ExpertsData {
            x: rng.vec(d.tokens * d.hidden, -1.0, 1.0),
            w13: rng.vec(d.experts * 2 * d.inter * d.hidden, -a13, a13),
            w2: rng.vec(d.experts * d.hidden * d.inter, -a2, a2),
        }
    }
}

/// Runs `moe_experts` on the backend and returns `y` (as f32) and the reference `y`.
pub fn run_experts(
    ctx: &Ctx<'_>,
    dtype: DType,
    d: ExpertsDims,
    data: &ExpertsData,
    ids: &[i32],
    weights: &[f32],
) -> (Vec<f32>, Vec<f64>) {
    run_experts_packed(ctx, dtype, d, data, (ids, weights), false)
}

/// [`run_experts`], with the weights laid out by `ops::pack_expert_weights` first if
/// `pack`.
fn run_experts_packed(
    ctx: &Ctx<'_>,
    dtype: DType,
    d: ExpertsDims,
    data: &ExpertsData,
    (ids, weights): (&[i32], &[f32]),
    pack: bool,
) -> (Vec<f32>, Vec<f64>) {
    let (x, xv) = ctx.upload_as(&[d.tokens, d.hidden], &data.x, dtype);
    let (w13, w13v) = ctx.upload_as(&[d.experts, 2 * d.inter, d.hidden], &data.w13, dtype);
    let (w2, w2v) = ctx.upload_as(&[d.experts, d.hidden, d.inter], &data.w2, dtype);
    let (w13, w2) = match pack {
        true => {
            let packed = |w, kind| {
                ops::pack_expert_weights(ctx.backend, w, kind)
                    .unwrap_or_else(|e| panic!("pack_expert_weights {dtype} {d:?}: {e}"))
            };
            (
                packed(&w13, ExpertWeight::GateUp),
                packed(&w2, ExpertWeight::Down),
            )
        }
        false => (w13, w2),
    };
    let id_t = ctx.upload_i32(&[d.tokens, d.top_k], ids);
    let (w_t, wv) = ctx.upload_as(&[d.tokens, d.top_k], weights, DType::F32);
    let y = ops::moe_experts(
        ctx.backend,
        &x,
        &w13,
        &w2,
        &id_t,
        &w_t,
        &ExpertsParams::default(),
    )
    .unwrap_or_else(|e| panic!("moe_experts {dtype} {d:?}: {e}"));
    let exp = reference::moe_experts(
        &xv, &w13v, &w2v, ids, &wv, d.tokens, d.hidden, d.inter, d.top_k,
    );
    (ctx.download_f32(&y), exp)
}

/// Random ids in [0, E), with `-1` in every `minus_one_every`-th slot (0: none).
pub fn random_ids(d: ExpertsDims, rng: &mut Rng, minus_one_every: usize) -> Vec<i32> {
    (0..d.tokens * d.top_k)
        .map(|i| {
            if minus_one_every > 0 && i % minus_one_every == minus_one_every - 1 {
                -1
            } else {
                rng.below(d.experts) as i32
            }
        })
        .collect()
}

fn case(ctx: &Ctx<'_>, dtype: DType, d: ExpertsDims, seed: u64, minus_one_every: usize) {
    packed_case(ctx, dtype, d, (seed, minus_one_every), false);
}

/// [`case`], with the weights laid out by `ops::pack_expert_weights` first if `pack`.
fn packed_case(
    ctx: &Ctx<'_>,
    dtype: DType,
    d: ExpertsDims,
    (seed, minus_one_every): (u64, usize),
    pack: bool,
) {
    if !ctx.supports(Op::MoeExperts, dtype) {
        return;
    }
    let mut rng = Rng::new(seed);
    let data = ExpertsData::random(d, &mut rng);
    let ids = random_ids(d, &mut rng, minus_one_every);
    let weights = rng.vec(d.tokens * d.top_k, 0.05, 1.0);
    let (y, exp) = run_experts_packed(ctx, dtype, d, &data, (&ids, &weights), pack);
    let packed = if pack { " packed weights" } else { "" };
    ensure(check_close(
        &format!("moe_experts {dtype} {d:?}{packed} y"),
        &y,
        &exp,
        Tol::of(dtype),
    ));
}

/// T 3, H 8, I 4, E 4, k 2, one slot in three set to -1.
pub fn small(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 3,
        hidden: 8,
        inter: 4,
        experts: 4,
        top_k: 2,
    };
    case(ctx, dtype, d, 0xe1, 3);
}

/// T 17, H 256, I 128, E 8, k 2, one slot in five set to -1.
pub fn moderate(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 17,
        hidden: 256,
        inter: 128,
        experts: 8,
        top_k: 2,
    };
    case(ctx, dtype, d, 0xe2, 5);
}

/// Every slot -1: y = 0.
pub fn all_slots_empty(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 4,
        hidden: 16,
        inter: 8,
        experts: 3,
        top_k: 2,
    };
    case(ctx, dtype, d, 0xe3, 1);
}

/// The same expert in two slots of a token counts twice (the contract sums over slots).
pub fn repeated_id_counts_twice(ctx: &Ctx<'_>, dtype: DType) {
    if !ctx.supports(Op::MoeExperts, dtype) {
        return;
    }
    let d = ExpertsDims {
        tokens: 2,
        hidden: 16,
        inter: 8,
        experts: 3,
        top_k: 2,
    };
    let mut rng = Rng::new(0xe4);
    let data = ExpertsData::random(d, &mut rng);
    let (y, exp) = run_experts(ctx, dtype, d, &data, &[1, 1, 2, 0], &[0.25, 0.5, 1.0, 0.5]);
    ensure(check_close(
        "moe_experts repeated ids y",
        &y,
        &exp,
        Tol::of(dtype),
    ));
}

/// More experts than routed slots (E 16, T 2, k 2): most experts receive no token.
pub fn most_experts_idle(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 2,
        hidden: 32,
        inter: 16,
        experts: 16,
        top_k: 2,
    };
    case(ctx, dtype, d, 0xe5, 0);
}

/// One token (decode batch of 1) routed to top-8 of 32 experts, H 128, I 64.
pub fn single_token_top8(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 1,
        hidden: 128,
        inter: 64,
        experts: 32,
        top_k: 8,
    };
    case(ctx, dtype, d, 0xe6, 0);
}

/// Sizes that are no multiple of any tile (T 5, H 33, I 17, E 3, k 2).
pub fn odd_sizes(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 5,
        hidden: 33,
        inter: 17,
        experts: 3,
        top_k: 2,
    };
    case(ctx, dtype, d, 0xe7, 4);
}

/// Weights laid out by `ops::pack_expert_weights` compute the reference too: T 40 (13
/// to 27 tokens per expert), H 37, I 21 (widths that fill no layout's blocks), E 3, k 2,
/// one slot in six set to -1.
pub fn packed_weights(ctx: &Ctx<'_>, dtype: DType) {
    let d = ExpertsDims {
        tokens: 40,
        hidden: 37,
        inter: 21,
        experts: 3,
        top_k: 2,
    };
    packed_case(ctx, dtype, d, (0xe9, 6), true);
}

/// A slot with weight 0 (+0.0 and -0.0) or id -1 contributes nothing even when its expert's
/// output is not finite: expert 2's weights hold NaN and inf, and it is routed only with
/// weight 0 (the -1 slots carry NaN weights). `y` must be finite and equal the reference
/// computed with those slots removed (their ids set to -1). Every float run dtype.
pub fn zero_weight_slot_ignores_nonfinite_expert(ctx: &Ctx<'_>) {
    let d = ExpertsDims {
        tokens: 5,
        hidden: 16,
        inter: 8,
        experts: 4,
        top_k: 3,
    };
    let poisoned = 2;
    for dtype in DType::FLOATS {
        if !ctx.supports(Op::MoeExperts, dtype) {
            continue;
        }
        let mut rng = Rng::new(0xe8);
        let mut data = ExpertsData::random(d, &mut rng);
        let gate_up = 2 * d.inter * d.hidden;
        data.w13[poisoned * gate_up + 5] = f32::NAN; // a gate row
        data.w13[poisoned * gate_up + d.inter * d.hidden + 9] = f32::INFINITY; // an up row
        data.w2[(poisoned * d.hidden + 3) * d.inter + 1] = f32::NEG_INFINITY;
        // Per token (k = 3): the poisoned expert at weight +0 or -0, -1 slots with NaN
        // weights, and ordinary experts with weights in [0.05, 1).
        #[rustfmt::skip]
        let ids = [
            0, 2, 1,
            2, 3, -1,
            -1, 1, 2,
            3, 0, 1,
            2, -1, 2,
        ];
        let weights: Vec<f32> = ids
            .iter()
            .enumerate()
            .map(|(n, &id)| match id {
                -1 => f32::NAN,
                2 if n % 2 == 0 => 0.0,
                2 => -0.0,
                _ => rng.uniform(0.05, 1.0) as f32,
            })
            .collect();
        let removed: Vec<i32> = ids
            .iter()
            .map(|&e| if e == poisoned as i32 { -1 } else { e })
            .collect();
        let (y, _) = run_experts(ctx, dtype, d, &data, &ids, &weights);
        let (_, exp) = run_experts(ctx, dtype, d, &data, &removed, &weights);
        let what = format!("moe_experts {dtype} zero-weight slots of a NaN/inf expert: y");
        assert!(
            y.iter().all(|v| v.is_finite()),
            "{what} is not finite: {y:?}"
        );
        ensure(check_close(&what, &y, &exp, Tol::of(dtype)));
    }
}
