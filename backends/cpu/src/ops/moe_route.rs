//! `moe_route` on the CPU: DeepSeek-V2/V3 gating, one token per rayon task.
//!
//! Selection (groups, then experts) is a partial selection plus a sort of the chosen few,
//! O(E + k log k) per token, so `top_k` near `E` costs no more than a sort. A NaN selection
//! score ranks as -inf; renormalisation divides by `max(sum, 1e-20)`. With hash routing
//! (contract v2) a token's ids are its `tid2eid` row instead (tables checked first).

use crate::storage::{check_inputs, f32_slice, float_slice, i32_slice, zeroed};
use moemla_core::calls::MoeRouteCall;
use moemla_core::indices::check_hash_routing;
use moemla_core::{Error, GroupSelect, Op, Result, RouteParams, ScoreFunc, Shape};
use rayon::prelude::*;
use std::cmp::Ordering;

const CALL: &str = "moe_route";

/// The smallest renormalisation denominator (contract v2: a row whose selected scores are
/// all 0 gets weights 0, not NaN).
const RENORM_MIN: f32 = 1e-20;

/// Runs the routing; returns `topk_ids` [T, k] (I32) and `topk_weights` [T, k] (F32).
pub fn run(backend: &str, call: &MoeRouteCall<'_>) -> Result<(Vec<i32>, Vec<f32>)> {
    check_inputs(
        backend,
        CALL,
        &[
            ("logits", Some(call.logits)),
            ("bias", call.bias),
            ("input_ids", call.hash.map(|h| h.input_ids)),
            ("tid2eid", call.hash.map(|h| h.tid2eid)),
        ],
    )?;
    let k = call.params.top_k;
    let mut ids = zeroed(&[call.tokens, k], "cpu moe_route topk_ids")?;
    let mut weights = zeroed(&[call.tokens, k], "cpu moe_route topk_weights")?;
    run_into(backend, call, &mut ids, &mut weights)?;
    Ok((ids, weights))
}

/// Runs the routing, writing `topk_ids` and `topk_weights` (T * k elements each, every one
/// overwritten) in place. On an index error nothing is written.
pub fn run_into(
    backend: &str,
    call: &MoeRouteCall<'_>,
    ids: &mut [i32],
    weights: &mut [f32],
) -> Result<()> {
    let logits = float_slice(call.logits, backend, CALL, "logits")?;
    let bias = match call.bias {
        Some(b) => Some(f32_slice(b, backend, CALL, "bias")?),
        None => None,
    };
    let (experts, k) = (call.experts, call.params.top_k);
    ids_fit_i32(experts, call.logits.shape())?;
    let hash = match call.hash {
        Some(h) => {
            let input_ids = i32_slice(h.input_ids, backend, CALL, "input_ids")?;
            let tid2eid = i32_slice(h.tid2eid, backend, CALL, "tid2eid")?;
            check_hash_routing(call, input_ids, tid2eid)?;
            Some((input_ids, tid2eid))
        }
        None => None,
    };
    debug_assert!(ids.len() == call.tokens * k && weights.len() == ids.len());
    ids.par_chunks_mut(k)
        .zip(weights.par_chunks_mut(k))
        .enumerate()
        .for_each_init(
            || Scratch::new(experts),
            |scratch, (t, (ids, weights))| {
                logits.read_f32(t * experts, &mut scratch.scores);
                // Checked above: input_ids[t] in [0, vocab), its row k ids in [0, E).
                let row = hash.map(|(input_ids, table)| {
                    let at = input_ids[t] as usize * k;
                    &table[at..at + k]
                });
                route_token(call.params, bias, row, scratch, ids, weights);
            },
        );
    Ok(())
}

/// Every expert id (`0..E`) must be representable in the I32 `topk_ids`: E <= 2^31.
fn ids_fit_i32(experts: usize, shape: &Shape) -> Result<()> {
    if i32::try_from(experts - 1).is_ok() {
        return Ok(());
    }
    Err(Error::Dim {
        op: Op::MoeRoute,
        arg: "logits",
        dim: 1,
        dim_name: "E",
        expected: "<= 2^31 (topk_ids are I32)".into(),
        got: experts,
        shape: shape.clone(),
    })
}

/// Per-thread working rows, reused across tokens.
struct Scratch {
    /// Logits, then scores (in place).
    scores: Vec<f32>,
    /// Selection scores (scores + bias; -inf outside the kept groups).
    sel: Vec<f32>,
    /// The best (key, index) pairs of a ranking (experts or groups), best first.
    best: Vec<(f32, usize)>,
    /// Group scores.
    group_scores: Vec<f32>,
    /// Per group: whether it is kept.
    kept: Vec<bool>,
}

impl Scratch {
    fn new(experts: usize) -> Self {
        Scratch {
            scores: vec![0.0; experts],
            sel: vec![0.0; experts],
            best: Vec::with_capacity(experts),
            group_scores: Vec::new(),
            kept: Vec::new(),
        }
    }
}

/// Routes one token whose logits are in `scratch.scores`: by top-k selection, or to the
/// experts of its hash-table row (`table_row`, checked: k distinct ids in [0, E)).
fn route_token(
    p: &RouteParams,
    bias: Option<&[f32]>,
    table_row: Option<&[i32]>,
    scratch: &mut Scratch,
    ids: &mut [i32],
    weights: &mut [f32],
) {
    let Scratch {
        scores,
        sel,
        best,
        group_scores,
        kept,
    } = scratch;
    apply_score_func(p.score_func, scores);
    if let Some(row) = table_row {
        for ((id, w), &e) in ids.iter_mut().zip(weights.iter_mut()).zip(row) {
            *id = e;
            *w = scores[e as usize];
        }
        finish_weights(p, weights);
        return;
    }
    match bias {
        Some(b) => sel
            .iter_mut()
            .zip(scores.iter().zip(b))
            .for_each(|(d, (s, b))| *d = s + b),
        None => sel.copy_from_slice(scores),
    }
    if p.n_group > 1 {
        mask_groups(p, sel, best, group_scores, kept);
    }
    top_indices(sel, ids.len(), best);
    for ((id, w), &(_, e)) in ids.iter_mut().zip(weights.iter_mut()).zip(best.iter()) {
        *id = e as i32; // e < E <= 2^31 (checked in `run`)
        *w = scores[e];
    }
    finish_weights(p, weights);
}

/// Renormalisation (by `max(sum, 1e-20)`) if asked, then the routed scaling factor.
fn finish_weights(p: &RouteParams, weights: &mut [f32]) {
    if p.renormalize {
        let sum: f32 = weights.iter().sum();
        // IEEE maxNum (C's fmax): a NaN sum gives RENORM_MIN, as on every backend.
        let denominator = sum.max(RENORM_MIN);
        weights.iter_mut().for_each(|w| *w /= denominator);
    }
    let scale = p.routed_scaling_factor as f32;
    weights.iter_mut().for_each(|w| *w *= scale);
}

/// Logits to affinity scores in place: sigmoid or sqrt-softplus per expert, or softmax
/// over the row (max-subtracted).
fn apply_score_func(func: ScoreFunc, row: &mut [f32]) {
    match func {
        ScoreFunc::Sigmoid => row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        ScoreFunc::Softmax => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        ScoreFunc::Sqrtsoftplus => row.iter_mut().for_each(|v| *v = sqrt_softplus(*v)),
    }
}

/// `sqrt(softplus(x))`, `softplus(x) = x` above 20, else `ln(1 + e^x)` (contract v2).
fn sqrt_softplus(x: f32) -> f32 {
    let softplus = if x > 20.0 { x } else { x.exp().ln_1p() };
    softplus.sqrt()
}

/// Keeps the `topk_group` best groups of `sel` (group score: max, or sum of the best two);
/// sets the selection score of every expert in the other groups to -inf. O(E + n_group).
fn mask_groups(
    p: &RouteParams,
    sel: &mut [f32],
    best: &mut Vec<(f32, usize)>,
    scores: &mut Vec<f32>,
    kept: &mut Vec<bool>,
) {
    let size = sel.len() / p.n_group;
    scores.clear();
    scores.extend(sel.chunks(size).map(|g| group_score(p.group_select, g)));
    top_indices(scores, p.topk_group, best);
    kept.clear();
    kept.resize(p.n_group, false);
    best.iter().for_each(|&(_, g)| kept[g] = true);
    for (group, &keep) in sel.chunks_mut(size).zip(kept.iter()) {
        if !keep {
            group.fill(f32::NEG_INFINITY);
        }
    }
}

/// A group's score: its best selection score, or the sum of its best two (the one score
/// when the group has a single expert). NaN scores count as -inf: `f32::max` and the
/// comparisons below pass over them.
fn group_score(select: GroupSelect, group: &[f32]) -> f32 {
    match select {
        GroupSelect::Max => group.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        GroupSelect::Top2Sum => {
            let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for &v in group {
                if v > first {
                    second = first;
                    first = v;
                } else if v > second {
                    second = v;
                }
            }
            if group.len() == 1 {
                first
            } else {
                first + second
            }
        }
    }
}

/// Fills `best` with the `k` largest `values` as (key, index), best first; ties go to the
/// lower index and NaN ranks as -inf. O(n + k log k): a selection of the k best
/// (`select_nth_unstable_by`), then a sort of those k.
fn top_indices(values: &[f32], k: usize, best: &mut Vec<(f32, usize)>) {
    best.clear();
    // NaN ranks as -inf; adding 0.0 turns -0.0 into +0.0 so that the two tie.
    best.extend(values.iter().enumerate().map(|(i, &v)| {
        let key = if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v + 0.0
        };
        (key, i)
    }));
    if k < best.len() {
        best.select_nth_unstable_by(k, better_first);
        best.truncate(k);
    }
    best.sort_unstable_by(better_first);
}

/// The ranking order: larger key first, then the lower index (a total order: keys are
/// never NaN and never -0.0 here, so `total_cmp` is the numeric order).
fn better_first(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

#[cfg(test)]
mod tests;
