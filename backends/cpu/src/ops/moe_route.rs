//! `moe_route` on the CPU: DeepSeek-V2/V3 gating, one token per rayon task.

use crate::storage::{f32_slice, float_slice};
use moemla_core::calls::MoeRouteCall;
use moemla_core::{GroupSelect, Result, RouteParams, ScoreFunc};
use rayon::prelude::*;

const CALL: &str = "moe_route";

/// Runs the routing; returns `topk_ids` [T, k] (I32) and `topk_weights` [T, k] (F32).
pub fn run(backend: &str, call: &MoeRouteCall<'_>) -> Result<(Vec<i32>, Vec<f32>)> {
    let logits = float_slice(call.logits, backend, CALL, "logits")?;
    let bias = match call.bias {
        Some(b) => Some(f32_slice(b, backend, CALL, "bias")?),
        None => None,
    };
    let (experts, k) = (call.experts, call.params.top_k);
    let mut ids = vec![0i32; call.tokens * k];
    let mut weights = vec![0f32; call.tokens * k];
    ids.par_chunks_mut(k)
        .zip(weights.par_chunks_mut(k))
        .enumerate()
        .for_each_init(
            || Scratch::new(experts),
            |scratch, (t, (ids, weights))| {
                logits.read_f32(t * experts, &mut scratch.scores);
                route_token(call.params, bias, scratch, ids, weights);
            },
        );
    Ok((ids, weights))
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
}

impl Scratch {
    fn new(experts: usize) -> Self {
        Scratch {
            scores: vec![0.0; experts],
            sel: vec![0.0; experts],
            best: Vec::with_capacity(experts),
            group_scores: Vec::new(),
        }
    }
}

/// Routes one token whose logits are in `scratch.scores`.
fn route_token(
    p: &RouteParams,
    bias: Option<&[f32]>,
    scratch: &mut Scratch,
    ids: &mut [i32],
    weights: &mut [f32],
) {
    let Scratch {
        scores,
        sel,
        best,
        group_scores,
    } = scratch;
    apply_score_func(p.score_func, scores);
    match bias {
        Some(b) => sel
            .iter_mut()
            .zip(scores.iter().zip(b))
            .for_each(|(d, (s, b))| *d = s + b),
        None => sel.copy_from_slice(scores),
    }
    if p.n_group > 1 {
        mask_groups(p, sel, best, group_scores);
    }
    top_indices(sel, ids.len(), best);
    for ((id, w), &(_, e)) in ids.iter_mut().zip(weights.iter_mut()).zip(best.iter()) {
        *id = e as i32;
        *w = scores[e];
    }
    if p.renormalize {
        let sum: f32 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    let scale = p.routed_scaling_factor as f32;
    weights.iter_mut().for_each(|w| *w *= scale);
}

/// Logits to affinity scores in place: sigmoid per expert, or softmax over the row
/// (max-subtracted).
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
    }
}

/// Keeps the `topk_group` best groups of `sel` (group score: max, or sum of the best two);
/// sets the selection score of every expert in the other groups to -inf.
fn mask_groups(
    p: &RouteParams,
    sel: &mut [f32],
    best: &mut Vec<(f32, usize)>,
    scores: &mut Vec<f32>,
) {
    let size = sel.len() / p.n_group;
    scores.clear();
    scores.extend(sel.chunks(size).map(|g| group_score(p.group_select, g)));
    top_indices(scores, p.topk_group, best);
    for (g, group) in sel.chunks_mut(size).enumerate() {
        if !best.iter().any(|&(_, kept)| kept == g) {
            group.fill(f32::NEG_INFINITY);
        }
    }
}

/// A group's score: its best selection score, or the sum of its best two (the one score
/// when the group has a single expert).
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

/// Fills `best` with the `k` largest `values` (key, index), best first; ties go to the
/// lower index. NaN ranks as -inf. One pass keeping the best `k` (key, index) pairs sorted:
/// one comparison against the current k-th key for most values when `k` is small
/// (routing: 8 of 256).
fn top_indices(values: &[f32], k: usize, best: &mut Vec<(f32, usize)>) {
    best.clear();
    let mut threshold = f32::NEG_INFINITY; // the k-th best key once `best` is full
    for (i, &v) in values.iter().enumerate() {
        // NaN ranks last; adding 0.0 turns -0.0 into +0.0 so that the two tie.
        let v = if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v + 0.0
        };
        // Indices arrive in ascending order, so an equal key never displaces an earlier one.
        if best.len() == k && v <= threshold {
            continue;
        }
        let at = best.partition_point(|&(b, _)| b >= v);
        best.insert(at, (v, i));
        best.truncate(k);
        if let Some(&(last, _)) = best.last() {
            threshold = last;
        }
    }
}

#[cfg(test)]
mod tests;
