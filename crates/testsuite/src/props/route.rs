//! `moe_route` properties: ids unique and inside the best groups, top-k by selection
//! score, weights equal to the unbiased scores (renormalised when asked) times the scale.

use crate::compare::Tol;
use crate::harness::Ctx;
use crate::rng::Rng;
use moemla_core::{ops, DType, GroupSelect, Op, RouteParams, ScoreFunc};
use proptest::prelude::*;

/// A generated routing problem.
#[derive(Clone, Debug)]
struct Input {
    dtype: DType,
    tokens: usize,
    n_group: usize,
    group_size: usize,
    params: RouteParams,
    with_bias: bool,
    seed: u64,
}

fn inputs(dtypes: Vec<DType>) -> impl Strategy<Value = Input> {
    let shape = (
        1usize..=3,
        prop::sample::select(vec![1usize, 2, 3, 4, 8]),
        prop::sample::select(vec![2usize, 3, 4, 5, 6, 20, 32]),
    );
    let flags = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    (
        prop::sample::select(dtypes),
        shape,
        flags,
        0.5f64..3.0,
        any::<u64>(),
    )
        .prop_map(
            |(
                dtype,
                (tokens, n_group, group_size),
                (sigmoid, top2, renormalize, with_bias),
                scale,
                seed,
            )| {
                let mut rng = Rng::new(seed);
                let topk_group = 1 + rng.below(n_group);
                let top_k = 1 + rng.below((topk_group * group_size).min(8));
                let params = RouteParams {
                    score_func: if sigmoid {
                        ScoreFunc::Sigmoid
                    } else {
                        ScoreFunc::Softmax
                    },
                    top_k,
                    n_group,
                    topk_group,
                    group_select: if top2 {
                        GroupSelect::Top2Sum
                    } else {
                        GroupSelect::Max
                    },
                    renormalize,
                    routed_scaling_factor: scale,
                };
                Input {
                    dtype,
                    tokens,
                    n_group,
                    group_size,
                    params,
                    with_bias,
                    seed,
                }
            },
        )
}

/// Routing output satisfies the contract's properties for any parameters.
pub fn properties(ctx: &Ctx<'_>) {
    let dtypes = ctx.float_dtypes(Op::MoeRoute);
    if dtypes.is_empty() {
        return;
    }
    ctx.check_property("moe_route properties", inputs(dtypes), |input| {
        check(ctx, &input)
    });
}

fn check(ctx: &Ctx<'_>, input: &Input) -> Result<(), String> {
    let p = &input.params;
    let experts = input.n_group * input.group_size;
    let mut rng = Rng::new(input.seed ^ 0x9e37);
    let (logits_d, logits) = ctx.upload_as(
        &[input.tokens, experts],
        &rng.vec(input.tokens * experts, -4.0, 4.0),
        input.dtype,
    );
    let (bias_d, bias) = ctx.upload_as(&[experts], &rng.vec(experts, -0.5, 0.5), DType::F32);
    let bias_used = input.with_bias.then_some(&bias_d);
    let out = ops::moe_route(ctx.backend, &logits_d, bias_used, p).map_err(|e| e.to_string())?;
    let ids = ctx.download_i32(&out.topk_ids);
    let weights = ctx.download_f32(&out.topk_weights);
    let k = p.top_k;
    for t in 0..input.tokens {
        let row = &logits[t * experts..(t + 1) * experts];
        let s = scores(row, p.score_func);
        let sel: Vec<f64> = (0..experts)
            .map(|e| s[e] + if input.with_bias { bias[e] } else { 0.0 })
            .collect();
        let eps = 1e-5 * (s.iter().fold(0.0f64, |m, v| m.max(*v)) + 0.5);
        let row_ids = &ids[t * k..(t + 1) * k];
        let mut chosen: Vec<usize> = Vec::new();
        for &id in row_ids {
            if id < 0 || id as usize >= experts || chosen.contains(&(id as usize)) {
                return Err(format!(
                    "token {t}: ids {row_ids:?} not unique ids in [0, {experts})"
                ));
            }
            chosen.push(id as usize);
        }
        // Groups: every chosen expert lies in a group scoring at least the topk_group-th
        // best group score, and at most topk_group groups are used.
        let gs = input.group_size;
        let group_scores: Vec<f64> = (0..input.n_group)
            .map(|g| group_score(&sel[g * gs..(g + 1) * gs], p.group_select))
            .collect();
        let mut sorted = group_scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[p.topk_group - 1] - eps;
        let mut used_groups: Vec<usize> = chosen.iter().map(|&e| e / gs).collect();
        used_groups.sort_unstable();
        used_groups.dedup();
        if used_groups.len() > p.topk_group
            || used_groups.iter().any(|&g| group_scores[g] < threshold)
        {
            return Err(format!("token {t}: ids {row_ids:?} use groups {used_groups:?} with scores {group_scores:?}, keep {}", p.topk_group));
        }
        // Top-k: no unchosen expert of a used group beats a chosen one.
        let worst_chosen = chosen.iter().map(|&e| sel[e]).fold(f64::INFINITY, f64::min);
        let best_other = (0..experts)
            .filter(|e| !chosen.contains(e) && used_groups.contains(&(e / gs)))
            .map(|e| sel[e])
            .fold(f64::NEG_INFINITY, f64::max);
        if best_other > worst_chosen + eps {
            return Err(format!(
                "token {t}: ids {row_ids:?} skip a better expert ({best_other} > {worst_chosen})"
            ));
        }
        // Weights: the unbiased scores of the chosen ids, renormalised, scaled.
        let sum: f64 = chosen.iter().map(|&e| s[e]).sum();
        for (j, &e) in chosen.iter().enumerate() {
            let norm = if p.renormalize { sum.max(1e-20) } else { 1.0 };
            let exp = s[e] / norm * p.routed_scaling_factor;
            let got = weights[t * k + j] as f64;
            if !Tol::of(DType::F32).accepts(got, exp) {
                return Err(format!(
                    "token {t}: weight of expert {e} is {got}, expected {exp}"
                ));
            }
        }
    }
    Ok(())
}

/// Scores in f64 (written here again, independently of the reference module).
fn scores(row: &[f64], f: ScoreFunc) -> Vec<f64> {
    match f {
        ScoreFunc::Sigmoid => row.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
        ScoreFunc::Softmax => {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
            row.iter().map(|x| (x - max).exp() / sum).collect()
        }
        ScoreFunc::Sqrtsoftplus => (row.iter())
            .map(|&x| if x > 20.0 { x } else { (1.0 + x.exp()).ln() }.sqrt())
            .collect(),
    }
}

fn group_score(sel: &[f64], how: GroupSelect) -> f64 {
    let mut v = sel.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    match how {
        GroupSelect::Max => v[0],
        GroupSelect::Top2Sum => v[0] + v[1],
    }
}
