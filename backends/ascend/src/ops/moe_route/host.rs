//! The contract's routing rules that aclnnMoeGatingTopK does not follow, applied on the
//! host to its outputs (normOut [T, E] and expertIdxOut [T, k]). See the parent module for
//! why each is needed; every rule here is the contract's (`docs/ops.md`: moe_route,
//! v2 renormalisation, NaN ranking under "Non-finite values"), computed in f32 as the CPU backend does.

use moemla_core::{Error, GroupSelect, Result, RouteParams};

/// The smallest renormalisation denominator (contract v2: a row whose selected scores are
/// all 0 gets weights 0, never NaN). CANN's own eps would be added to the sum instead.
const RENORM_MIN: f32 = 1e-20;

/// `v` as a ranking key: NaN ranks as -inf, and -0.0 ties with +0.0.
fn key(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v + 0.0
    }
}

/// Indices of the `k` largest `values` by [`key`], best first; ties go to the lower index.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| key(values[b]).total_cmp(&key(values[a])).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// A group's score over ranking keys: its best, or the sum of its best two (the one score
/// when the group has a single expert).
fn group_score(select: GroupSelect, keys: &[f32]) -> f32 {
    let best = top_indices(keys, 2);
    match (select, best.as_slice()) {
        (GroupSelect::Top2Sum, [a, b]) => keys[*a] + keys[*b],
        (_, [a, ..]) => keys[*a],
        (_, []) => f32::NEG_INFINITY,
    }
}

/// The contract's expert selection for one token with scores `s` `[E]`: bias for selection
/// only, groups masked to -inf, NaN ranking as -inf (group scores and experts alike).
fn select(p: &RouteParams, s: &[f32], bias: Option<&[f32]>, ids: &mut [i32]) {
    let mut sel: Vec<f32> = match bias {
        Some(b) => s.iter().zip(b).map(|(s, b)| key(s + b)).collect(),
        None => s.iter().map(|&s| key(s)).collect(),
    };
    if p.n_group > 1 {
        let width = sel.len() / p.n_group;
        let scores: Vec<f32> = sel
            .chunks(width)
            .map(|g| group_score(p.group_select, g))
            .collect();
        let kept = top_indices(&scores, p.topk_group);
        for (g, group) in sel.chunks_mut(width).enumerate() {
            if !kept.contains(&g) {
                group.fill(f32::NEG_INFINITY);
            }
        }
    }
    let best = top_indices(&sel, ids.len());
    for (id, e) in ids.iter_mut().zip(best) {
        // e < E, which fits an i32 (checked before the call: moe_route::run).
        *id = e as i32;
    }
}

/// Finishes moe_route on the host: for every token, the ids CANN chose (checked to lie in
/// [0, E)) or, where its selection cannot be trusted, the contract's own; then weights =
/// `s[ids]`, renormalised by max(sum, 1e-20) if asked, times routed_scaling_factor.
///
/// CANN's selection is not trusted for a row with a NaN score, or for every row when the
/// bias holds a non-finite value: how its Sort orders NaN is undocumented, and its grouped
/// kernel pads groups with -inf, so a -inf selection score can tie with padding.
///
/// `norm`: CANN's normOut `[T, E]`; `bias`: `[E]`; `ids`: its expertIdxOut `[T, k]`, rewritten
/// in place where recomputed. Returns the weights `[T, k]` and whether any row's ids were
/// recomputed.
pub fn finish(
    p: &RouteParams,
    e: usize,
    norm: &[f32],
    bias: Option<&[f32]>,
    ids: &mut [i32],
) -> Result<(Vec<f32>, bool)> {
    let k = p.top_k;
    let bias_trusted = bias.is_none_or(|b| b.iter().all(|v| v.is_finite()));
    let scale = p.routed_scaling_factor as f32;
    let mut weights = Vec::with_capacity(ids.len());
    let mut recomputed = false;
    for (t, (s, row_ids)) in norm.chunks(e).zip(ids.chunks_mut(k)).enumerate() {
        if !bias_trusted || s.iter().any(|v| v.is_nan()) {
            select(p, s, bias, row_ids);
            recomputed = true;
        } else if let Some(j) = row_ids.iter().position(|&id| !(0..e as i32).contains(&id)) {
            return Err(Error::Device {
                backend: crate::NAME.to_string(),
                call: "aclnnMoeGatingTopK".to_string(),
                message: format!(
                    "expertIdxOut[{t}, {j}] = {} is outside [0, {e})",
                    row_ids[j]
                ),
            });
        }
        let start = weights.len();
        weights.extend(row_ids.iter().map(|&id| s[id as usize]));
        finish_row(p.renormalize, scale, &mut weights[start..]);
    }
    Ok((weights, recomputed))
}

/// A row of selected scores -> weights: divided by max(sum, 1e-20) if `renormalize`, then
/// scaled.
fn finish_row(renormalize: bool, scale: f32, row: &mut [f32]) {
    if renormalize {
        let sum: f32 = row.iter().sum();
        // IEEE maxNum: a NaN sum gives RENORM_MIN, as on every backend.
        let denominator = sum.max(RENORM_MIN);
        row.iter_mut().for_each(|w| *w /= denominator);
    }
    row.iter_mut().for_each(|w| *w *= scale);
}

/// Selection and weights wholly on the host, for scores CANN's routing op cannot compute
/// (sqrt-softplus): every row by the contract's rules ([`finish`]'s fallback), then weights
/// as there. `s` `[T, E]`, `bias` `[E]`. Returns (ids `[T, k]`, weights `[T, k]`).
pub fn select_all(
    p: &RouteParams,
    e: usize,
    s: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<i32>, Vec<f32>) {
    let k = p.top_k;
    let scale = p.routed_scaling_factor as f32;
    let rows = s.len() / e.max(1);
    let mut ids = vec![0i32; rows * k];
    let mut weights = Vec::with_capacity(rows * k);
    for (row, row_ids) in s.chunks(e).zip(ids.chunks_mut(k)) {
        select(p, row, bias, row_ids);
        let start = weights.len();
        weights.extend(row_ids.iter().map(|&id| row[id as usize]));
        finish_row(p.renormalize, scale, &mut weights[start..]);
    }
    (ids, weights)
}

/// Hash routing (`input_ids` and `tid2eid`, both checked): `ids[t] = tid2eid[input_ids[t]]`,
/// weights = the unbiased scores `norm` `[T, E]` (CANN's normOut) at those ids, renormalised
/// and scaled as [`finish`] does. Returns (ids `[T, k]`, weights `[T, k]`).
pub fn hash(
    p: &RouteParams,
    e: usize,
    norm: &[f32],
    input_ids: &[i32],
    tid2eid: &[i32],
) -> (Vec<i32>, Vec<f32>) {
    let k = p.top_k;
    let scale = p.routed_scaling_factor as f32;
    let mut ids = Vec::with_capacity(input_ids.len() * k);
    let mut weights = Vec::with_capacity(input_ids.len() * k);
    for (s, &tok) in norm.chunks(e).zip(input_ids) {
        let row = &tid2eid[tok as usize * k..][..k];
        ids.extend_from_slice(row);
        let start = weights.len();
        weights.extend(row.iter().map(|&id| s[id as usize]));
        finish_row(p.renormalize, scale, &mut weights[start..]);
    }
    (ids, weights)
}
