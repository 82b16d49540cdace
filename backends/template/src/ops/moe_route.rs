//! `moe_route` in plain Rust, one token at a time: the worked example of an op. The
//! contract (`docs/ops.md`): scores from the logits (softmax over the row, or sigmoid);
//! selection scores = scores + bias; with groups, keep the `topk_group` best groups (group
//! score: the best selection score, or the sum of the best two) and drop the others; the
//! `top_k` best selection scores (ties to the lower index, NaN ranks last) give the ids,
//! their *scores* the weights, renormalised by `max(sum, 1e-20)` if asked, then scaled.

use crate::buffer::TemplateBuffer;
use crate::device::Device;
use moemla_core::vendor::calls::MoeRouteCall;
use moemla_core::{GroupSelect, HostTensor, MoeRouteOutput, Result, RouteParams, ScoreFunc};
use std::cmp::Ordering;
use std::sync::Arc;

const CALL: &str = "moe_route";

/// Routes every token; returns `topk_ids` [T, top_k] I32 and `topk_weights` [T, top_k] F32.
pub fn run(device: &Device, name: &Arc<str>, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
    let logits = TemplateBuffer::of(call.logits, name, CALL, "logits")?
        .host()
        .to_f32_vec()?;
    let bias = match call.bias {
        Some(b) => Some(
            TemplateBuffer::of(b, name, CALL, "bias")?
                .host()
                .to_f32_vec()?,
        ),
        None => None,
    };
    let (experts, k) = (call.experts, call.params.top_k);
    let mut ids = Vec::new();
    let mut weights = Vec::new();
    for row in logits.chunks(experts) {
        let (row_ids, row_weights) = route_token(call.params, row, bias.as_deref());
        ids.extend(row_ids);
        weights.extend(row_weights);
    }
    let dims = [call.tokens, k];
    Ok(MoeRouteOutput {
        topk_ids: device.tensor(name, HostTensor::from_slice(dims, &ids)?),
        topk_weights: device.tensor(name, HostTensor::from_slice(dims, &weights)?),
    })
}

/// One token's ids (expert indices, < E <= 2^31 by validation) and weights.
fn route_token(p: &RouteParams, logits: &[f32], bias: Option<&[f32]>) -> (Vec<i32>, Vec<f32>) {
    let scores: Vec<f32> = match p.score_func {
        ScoreFunc::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            e.iter().map(|&v| v / sum).collect()
        }
        // Sigmoid (sqrt-softplus is a contract-v2 format this backend does not list, so
        // `moemla_core::ops` never sends it here).
        _ => logits.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
    };
    let mut sel: Vec<f32> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    if p.n_group > 1 {
        let size = sel.len() / p.n_group;
        let group_scores: Vec<f32> = sel
            .chunks(size)
            .map(|g| group_score(p.group_select, g))
            .collect();
        let kept = best(&group_scores, p.topk_group);
        for (g, group) in sel.chunks_mut(size).enumerate() {
            if !kept.contains(&g) {
                group.fill(f32::NEG_INFINITY);
            }
        }
    }
    let chosen = best(&sel, p.top_k);
    let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
    if p.renormalize {
        let sum: f32 = weights.iter().sum();
        let denominator = sum.max(1e-20);
        weights.iter_mut().for_each(|w| *w /= denominator);
    }
    let scale = p.routed_scaling_factor as f32;
    weights.iter_mut().for_each(|w| *w *= scale);
    (chosen.iter().map(|&e| e as i32).collect(), weights)
}

/// A group's score: its best selection score, or the sum of its best two (the one score
/// of a single-expert group).
fn group_score(select: GroupSelect, group: &[f32]) -> f32 {
    let order = best(group, 2);
    match select {
        GroupSelect::Top2Sum if order.len() == 2 => group[order[0]] + group[order[1]],
        _ => group[order[0]],
    }
}

/// The indices of the `k` largest `values`, best first: ties to the lower index, NaN
/// ranked as -inf.
fn best(values: &[f32], k: usize) -> Vec<usize> {
    let key = |i: usize| {
        let v = values[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order
}
