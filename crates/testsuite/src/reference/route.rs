//! `moe_route` in f64: scores, biased selection, group limit, top-k, unbiased weights.
//!
//! Non-finite data follows the contract: a NaN selection score (from a NaN logit or bias),
//! and a NaN group score, ranks as -inf, ties going to the lower index; renormalisation
//! divides by max(sum, 1e-20).

use moemla_core::{GroupSelect, RouteParams, ScoreFunc};

/// The reference routing of every token.
#[derive(Clone, Debug)]
pub struct RouteRef {
    /// Per token: the selected experts, best selection score first.
    pub ids: Vec<Vec<usize>>,
    /// Per token: the weight of each id in `ids` (same order).
    pub weights: Vec<Vec<f64>>,
    /// Per token: the unbiased scores of all experts.
    pub scores: Vec<Vec<f64>>,
    /// Per token: the groups kept (all groups when `n_group == 1`), ascending.
    pub kept_groups: Vec<Vec<usize>>,
    /// Per token: the smallest gap at a decision boundary (kept vs dropped group, selected
    /// vs unselected expert), divided by the row's score magnitude. A tiny margin means a
    /// near tie that f32 rounding could flip; `f64::INFINITY` when nothing is cut.
    pub margin: Vec<f64>,
}

/// The smallest renormalisation denominator (contract v2).
const RENORM_MIN: f64 = 1e-20;

/// Routes `tokens` rows of `experts` logits (row-major), with an optional selection bias.
pub fn moe_route(
    logits: &[f64],
    bias: Option<&[f64]>,
    tokens: usize,
    experts: usize,
    p: &RouteParams,
) -> RouteRef {
    let mut out = RouteRef {
        ids: Vec::new(),
        weights: Vec::new(),
        scores: Vec::new(),
        kept_groups: Vec::new(),
        margin: Vec::new(),
    };
    for t in 0..tokens {
        let row = &logits[t * experts..(t + 1) * experts];
        let s = scores(row, p.score_func);
        let sel: Vec<f64> = (0..experts)
            .map(|e| s[e] + bias.map_or(0.0, |b| b[e]))
            .collect();
        let magnitude = s.iter().fold(0.0f64, |m, v| m.max(v.abs()))
            + bias.map_or(0.0, |b| b.iter().fold(0.0f64, |m, v| m.max(v.abs())));
        let mut margin = f64::INFINITY;

        // Group limit: keep the topk_group best groups, mask the rest to -inf.
        let group_size = experts / p.n_group;
        let group_scores: Vec<f64> = (0..p.n_group)
            .map(|g| group_score(&sel[g * group_size..(g + 1) * group_size], p.group_select))
            .collect();
        let group_order = descending(&group_scores);
        if p.topk_group < p.n_group {
            let gap = gap(
                group_scores[group_order[p.topk_group - 1]],
                group_scores[group_order[p.topk_group]],
            );
            margin = margin.min(gap / magnitude);
        }
        let mut kept: Vec<usize> = group_order[..p.topk_group].to_vec();
        kept.sort_unstable();
        let masked: Vec<f64> = (0..experts)
            .map(|e| {
                if kept.contains(&(e / group_size)) {
                    sel[e]
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();

        // Top-k of the masked selection scores.
        let order = descending(&masked);
        let ids: Vec<usize> = order[..p.top_k].to_vec();
        let candidates = p.topk_group * group_size;
        if p.top_k < candidates {
            let gap = gap(masked[order[p.top_k - 1]], masked[order[p.top_k]]);
            margin = margin.min(gap / magnitude);
        }

        // Weights from the unbiased scores.
        let mut w: Vec<f64> = ids.iter().map(|&e| s[e]).collect();
        if p.renormalize {
            let sum: f64 = w.iter().sum();
            // IEEE maxNum, as C's fmax: a NaN sum gives 1e-20.
            let denominator = sum.max(RENORM_MIN);
            w.iter_mut().for_each(|v| *v /= denominator);
        }
        w.iter_mut().for_each(|v| *v *= p.routed_scaling_factor);

        out.ids.push(ids);
        out.weights.push(w);
        out.scores.push(s);
        out.kept_groups.push(kept);
        out.margin.push(margin);
    }
    out
}

/// Affinity scores of one token's logits.
fn scores(row: &[f64], f: ScoreFunc) -> Vec<f64> {
    match f {
        ScoreFunc::Sigmoid => row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        ScoreFunc::Softmax => {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let e: Vec<f64> = row.iter().map(|&x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        }
        // sqrt(softplus(x)), softplus(x) = x above 20 (contract v2).
        ScoreFunc::Sqrtsoftplus => (row.iter())
            .map(|&x| if x > 20.0 { x } else { x.exp().ln_1p() }.sqrt())
            .collect(),
    }
}

/// A group's score: its best selection score, or the sum of its two best (NaN counting
/// as -inf).
fn group_score(sel: &[f64], how: GroupSelect) -> f64 {
    let order = descending(sel);
    let take = match how {
        GroupSelect::Max => 1,
        GroupSelect::Top2Sum => 2,
    };
    order.iter().take(take).map(|&i| rank_key(sel[i])).sum()
}

/// How far the last kept score `kept` lies above the first dropped one (0 for a tie, -inf
/// against -inf included).
fn gap(kept: f64, dropped: f64) -> f64 {
    let (a, b) = (rank_key(kept), rank_key(dropped));
    if a == b {
        0.0
    } else {
        a - b
    }
}

/// The value a score ranks by: NaN ranks as -inf.
fn rank_key(v: f64) -> f64 {
    if v.is_nan() {
        f64::NEG_INFINITY
    } else {
        v
    }
}

/// Indices of `v` by descending value, NaN as -inf (stable: lower index first among equals).
fn descending(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| {
        rank_key(v[b])
            .partial_cmp(&rank_key(v[a]))
            .expect("no NaN key")
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(score_func: ScoreFunc, top_k: usize, n_group: usize, keep: usize) -> RouteParams {
        RouteParams {
            score_func,
            top_k,
            n_group,
            topk_group: keep,
            group_select: GroupSelect::Max,
            renormalize: false,
            routed_scaling_factor: 1.0,
        }
    }

    #[test]
    fn two_expert_sigmoid_by_hand() {
        // sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75.
        let mut p = params(ScoreFunc::Sigmoid, 1, 1, 1);
        p.routed_scaling_factor = 2.0;
        let r = moe_route(&[0.0, 3f64.ln()], None, 1, 2, &p);
        assert_eq!(r.ids, vec![vec![1]]);
        assert!((r.weights[0][0] - 1.5).abs() < 1e-12);
        p.renormalize = true;
        let r = moe_route(&[0.0, 3f64.ln()], None, 1, 2, &p);
        assert!((r.weights[0][0] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn softmax_by_hand() {
        // softmax([0, ln 3]) = [0.25, 0.75]; both selected, best first.
        let r = moe_route(
            &[0.0, 3f64.ln()],
            None,
            1,
            2,
            &params(ScoreFunc::Softmax, 2, 1, 1),
        );
        assert_eq!(r.ids, vec![vec![1, 0]]);
        assert!((r.weights[0][0] - 0.75).abs() < 1e-12);
        assert!((r.weights[0][1] - 0.25).abs() < 1e-12);
        assert_eq!(r.margin[0], f64::INFINITY);
    }

    #[test]
    fn bias_steers_selection_but_not_weights() {
        let mut p = params(ScoreFunc::Sigmoid, 1, 1, 1);
        p.routed_scaling_factor = 1.0;
        let r = moe_route(&[0.0, 3f64.ln()], Some(&[0.5, 0.0]), 1, 2, &p);
        assert_eq!(r.ids, vec![vec![0]]);
        assert!((r.weights[0][0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn nan_scores_rank_as_minus_infinity() {
        // sigmoid(0) = 0.5 everywhere; expert 1 has a NaN logit, expert 2 a NaN bias.
        let logits = [0.0, f64::NAN, 0.0, 0.0];
        let bias = [0.1, 0.0, f64::NAN, 0.2];
        let mut p = params(ScoreFunc::Sigmoid, 2, 1, 1);
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(r.ids[0], vec![3, 0]);
        // Past the finite ones: the NaN experts last, the lower index first; they tie.
        p.top_k = 3;
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(r.ids[0], vec![3, 0, 1]);
        assert_eq!(r.margin[0], 0.0, "the NaN experts tie");
        // Groups {0, 1} and {2, 3}: a NaN counts as -inf in the group score too, so
        // group 0 scores 0.6 (max) and group 1 scores 0.7; with top2_sum, group 0 is
        // 0.6 + -inf and group 1 is 0.7 + -inf: a tie at -inf, kept: the lower, group 0.
        let mut p = params(ScoreFunc::Sigmoid, 1, 2, 1);
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(
            (r.kept_groups[0].clone(), r.ids[0].clone()),
            (vec![1], vec![3])
        );
        p.group_select = GroupSelect::Top2Sum;
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(
            (r.kept_groups[0].clone(), r.ids[0].clone()),
            (vec![0], vec![0])
        );
    }

    #[test]
    fn renormalising_zero_scores_gives_zero_weights() {
        // sigmoid(-1000) underflows to exactly 0: 0 / max(0, 1e-20) = 0, not NaN.
        let mut p = params(ScoreFunc::Sigmoid, 2, 1, 1);
        p.renormalize = true;
        let r = moe_route(&[-1000.0; 3], None, 1, 3, &p);
        assert_eq!(r.weights[0], vec![0.0, 0.0]);
        assert_eq!(r.ids[0], vec![0, 1]);
    }

    #[test]
    fn group_select_max_and_top2_sum_pick_different_groups() {
        // sel = s + bias with s = sigmoid(0) = 0.5 everywhere: sel = 0.5 + bias.
        let bias = [0.4, -0.5, 0.1, 0.0];
        let logits = [0.0; 4];
        let mut p = params(ScoreFunc::Sigmoid, 1, 2, 1);
        // max: group 0 = 0.9, group 1 = 0.6 -> group 0, expert 0.
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(
            (r.kept_groups[0].clone(), r.ids[0].clone()),
            (vec![0], vec![0])
        );
        // top2_sum: group 0 = 0.9 + 0.0 = 0.9, group 1 = 0.6 + 0.5 = 1.1 -> group 1, expert 2.
        p.group_select = GroupSelect::Top2Sum;
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(
            (r.kept_groups[0].clone(), r.ids[0].clone()),
            (vec![1], vec![2])
        );
        // Masked groups are -inf: with top_k 2 the second pick stays in group 1.
        p.top_k = 2;
        let r = moe_route(&logits, Some(&bias), 1, 4, &p);
        assert_eq!(r.ids[0], vec![2, 3]);
        // Group gap 1.1 - 0.9 over magnitude max s + max |bias| = 1.0; no top-k cut.
        assert!((r.margin[0] - 0.2).abs() < 1e-12);
    }
}
