//! The CPU routing against a plain f64 reference at DeepSeek shapes.

use super::top_indices;
use crate::test_util::{download_f32, upload_as, Lcg};
use crate::CpuBackend;
use moemla_core::{ops, Backend, DType, GroupSelect, HostTensor, RouteParams, ScoreFunc};

/// DeepSeek-V3 `Gate` in f64, written out plainly: returns (ids, weights) per token.
/// A NaN selection score ranks as -inf (ties: lower index); renormalisation divides by
/// max(sum, 1e-20).
fn reference(
    logits: &[f32],
    bias: Option<&[f32]>,
    e: usize,
    p: &RouteParams,
) -> Vec<Vec<(usize, f64)>> {
    let rank = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    let descending = |a: f64, b: f64| rank(b).partial_cmp(&rank(a)).unwrap();
    logits
        .chunks(e)
        .map(|row| {
            let x: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let s: Vec<f64> = match p.score_func {
                ScoreFunc::Sigmoid => x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
                ScoreFunc::Softmax => {
                    let m = x.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = x.iter().map(|v| (v - m).exp()).sum();
                    x.iter().map(|v| (v - m).exp() / z).collect()
                }
                ScoreFunc::Sqrtsoftplus => (x.iter())
                    .map(|&v| if v > 20.0 { v } else { (1.0 + v.exp()).ln() }.sqrt())
                    .collect(),
            };
            let mut sel: Vec<f64> = (0..e)
                .map(|i| s[i] + bias.map_or(0.0, |b| b[i] as f64))
                .collect();
            if p.n_group > 1 {
                let gs = e / p.n_group;
                let mut groups: Vec<(usize, f64)> = (0..p.n_group)
                    .map(|g| {
                        let mut v: Vec<f64> = sel[g * gs..(g + 1) * gs].to_vec();
                        v.sort_by(|a, b| descending(*a, *b));
                        let score = match p.group_select {
                            GroupSelect::Max => rank(v[0]),
                            GroupSelect::Top2Sum => v.iter().take(2).map(|&x| rank(x)).sum(),
                        };
                        (g, score)
                    })
                    .collect();
                groups.sort_by(|a, b| descending(a.1, b.1).then(a.0.cmp(&b.0)));
                for &(g, _) in &groups[p.topk_group..] {
                    sel[g * gs..(g + 1) * gs].fill(f64::NEG_INFINITY);
                }
            }
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| descending(sel[a], sel[b]).then(a.cmp(&b)));
            let ids = &order[..p.top_k];
            let sum: f64 = ids.iter().map(|&i| s[i]).sum();
            ids.iter()
                .map(|&i| {
                    let w = if p.renormalize {
                        s[i] / sum.max(1e-20)
                    } else {
                        s[i]
                    };
                    (i, w * p.routed_scaling_factor)
                })
                .collect()
        })
        .collect()
}

/// Routes `logits` [T, E] (F32) on the CPU: (ids, weights).
fn route(logits: &[f32], bias: Option<&[f32]>, e: usize, p: &RouteParams) -> (Vec<i32>, Vec<f32>) {
    let cpu = CpuBackend::new();
    let t = logits.len() / e;
    let logits = cpu
        .upload(&HostTensor::from_slice([t, e], logits).unwrap())
        .unwrap();
    let bias = bias.map(|b| {
        cpu.upload(&HostTensor::from_slice([e], b).unwrap())
            .unwrap()
    });
    let out = ops::moe_route(&cpu, &logits, bias.as_ref(), p).unwrap();
    let ids = cpu.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
    (ids, download_f32(&cpu, &out.topk_weights))
}

fn check(p: &RouteParams, e: usize, with_bias: bool, dtype: DType, seed: u64) {
    let cpu = CpuBackend::new();
    let t = 16;
    let mut rng = Lcg::new(seed);
    let (logits, stored) = upload_as(&cpu, &[t, e], &rng.vec(t * e, -4.0, 4.0), dtype);
    let bias_v = rng.vec(e, -0.5, 0.5);
    let bias = cpu
        .upload(&HostTensor::from_slice([e], &bias_v).unwrap())
        .unwrap();
    let out = ops::moe_route(&cpu, &logits, with_bias.then_some(&bias), p).unwrap();
    let ids = cpu.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
    let weights = download_f32(&cpu, &out.topk_weights);
    let want = reference(&stored, with_bias.then_some(&bias_v[..]), e, p);
    for (tok, row) in want.iter().enumerate() {
        for (j, &(id, w)) in row.iter().enumerate() {
            let at = tok * p.top_k + j;
            assert_eq!(ids[at], id as i32, "token {tok} slot {j}");
            let got = weights[at] as f64;
            assert!(
                (got - w).abs() <= 1e-6 + 1e-5 * w.abs(),
                "token {tok} slot {j}: {got} vs {w}"
            );
        }
    }
}

#[test]
fn deepseek_v3_routing_matches_f64_reference() {
    check(&RouteParams::deepseek_v3(), 256, true, DType::F32, 1);
    check(&RouteParams::deepseek_v3(), 256, true, DType::BF16, 2);
}

#[test]
fn deepseek_v2_routing_matches_f64_reference() {
    let mut p = RouteParams::deepseek_v2();
    check(&p, 160, false, DType::F16, 3);
    p.n_group = 1;
    p.topk_group = 1;
    check(&p, 64, false, DType::F32, 4);
    p.renormalize = true;
    check(&p, 64, true, DType::F32, 5);
}

#[test]
fn top_indices_breaks_ties_by_lower_index_and_ranks_nan_last() {
    let mut best = Vec::new();
    let values = [1.0, 3.0, f32::NAN, 3.0, -0.0, 0.0, f32::NEG_INFINITY];
    top_indices(&values, 4, &mut best);
    assert_eq!(best, vec![(3.0, 1), (3.0, 3), (1.0, 0), (0.0, 4)]);
    // Taking everything: NaN ties with -inf and goes before it (lower index).
    top_indices(&values, 7, &mut best);
    let ids: Vec<usize> = best.iter().map(|&(_, i)| i).collect();
    assert_eq!(ids, vec![1, 3, 0, 4, 5, 2, 6]);
}

#[test]
fn top_indices_matches_a_full_sort_on_tie_heavy_rows() {
    let mut rng = Lcg::new(9);
    let mut best = Vec::new();
    for k in [1, 3, 8, 40] {
        // Few distinct values, so ties are everywhere.
        let values: Vec<f32> = (0..40)
            .map(|_| (rng.uniform(0.0, 5.0) as i32) as f32)
            .collect();
        let mut want: Vec<usize> = (0..values.len()).collect();
        want.sort_by(|&a, &b| values[b].partial_cmp(&values[a]).unwrap().then(a.cmp(&b)));
        want.truncate(k);
        top_indices(&values, k, &mut best);
        let got: Vec<usize> = best.iter().map(|&(_, i)| i).collect();
        assert_eq!(got, want, "k = {k}");
    }
}

#[test]
fn top_k_of_a_million_experts_takes_a_sort_not_quadratic_time() {
    // E = 2^20, top_k = E, in 2^20 groups of one with every group kept: the old selection
    // (insertion into a sorted list; a scan of the kept list per group) took about a minute
    // on the experts alone. A sort of 2^20 keys takes well under a second.
    let e = 1 << 20;
    let mut rng = Lcg::new(11);
    let logits = rng.vec(e, -8.0, 8.0);
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: e,
        n_group: e,
        topk_group: e,
        group_select: GroupSelect::Max,
        renormalize: false,
        routed_scaling_factor: 1.0,
    };
    let t0 = std::time::Instant::now();
    let (ids, weights) = route(&logits, None, e, &p);
    let elapsed = t0.elapsed();
    assert!(elapsed.as_secs_f64() < 10.0, "took {elapsed:?}");
    // The simple reference: the f32 scores the backend computes, fully sorted.
    let s: Vec<f32> = logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
    let mut want: Vec<usize> = (0..e).collect();
    want.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    let got: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
    assert!(
        got == want,
        "ids are not the descending order of the scores"
    );
    assert!(weights.iter().zip(&want).all(|(&w, &i)| w == s[i]));
}

#[test]
fn top_k_equal_to_experts_matches_the_reference_with_groups() {
    let mut p = RouteParams::deepseek_v3();
    // Every expert of the kept groups: E 64 in 8 groups, keep 8, top-64 (then keep 4, top-32).
    p.topk_group = 8;
    p.top_k = 64;
    check(&p, 64, true, DType::F32, 12);
    p.topk_group = 4;
    p.top_k = 32;
    check(&p, 64, true, DType::F32, 13);
}

#[test]
fn renormalising_all_zero_scores_gives_zero_weights() {
    // sigmoid(-1000) is exactly 0 in f32: the selected scores sum to 0, and the
    // denominator max(sum, 1e-20) keeps the weights at 0 instead of 0 / 0 = NaN.
    let (e, t) = (16, 3);
    for (n_group, topk_group) in [(1, 1), (4, 2)] {
        let p = RouteParams {
            score_func: ScoreFunc::Sigmoid,
            top_k: 4,
            n_group,
            topk_group,
            group_select: GroupSelect::Top2Sum,
            renormalize: true,
            routed_scaling_factor: 2.5,
        };
        let (ids, weights) = route(&vec![-1000.0; t * e], None, e, &p);
        assert!(weights.iter().all(|&w| w == 0.0), "{weights:?}");
        for row in ids.chunks(4) {
            let mut sorted = row.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 4, "{row:?}");
            assert!(row.iter().all(|&i| (0..e as i32).contains(&i)), "{row:?}");
        }
    }
}

#[test]
fn nan_selection_scores_rank_last() {
    // E 16 in 4 groups of 4. Token 0: NaN logits at 1, 6, 7; token 1: NaN logit at 12.
    // NaN bias at experts 2 and 9. Group 1 (4..8) holds two NaN experts.
    let e = 16;
    let mut rng = Lcg::new(21);
    let mut logits = rng.vec(2 * e, -3.0, 3.0);
    for at in [1, 6, 7, e + 12] {
        logits[at] = f32::NAN;
    }
    let mut bias = rng.vec(e, -0.2, 0.2);
    bias[2] = f32::NAN;
    bias[9] = f32::NAN;
    let nan_expert = |tok: usize, i: usize| logits[tok * e + i].is_nan() || bias[i].is_nan();
    for (n_group, topk_group, group_select, top_k) in [
        (1, 1, GroupSelect::Max, 8),
        (4, 2, GroupSelect::Max, 5),
        (4, 3, GroupSelect::Top2Sum, 6),
        // More slots than non-NaN experts (12 or 13 of 16): NaN experts last, lower first.
        (1, 1, GroupSelect::Max, 15),
    ] {
        let p = RouteParams {
            score_func: ScoreFunc::Sigmoid,
            top_k,
            n_group,
            topk_group,
            group_select,
            renormalize: false,
            routed_scaling_factor: 1.0,
        };
        let (ids, weights) = route(&logits, Some(&bias), e, &p);
        let want = reference(&logits, Some(&bias), e, &p);
        for (tok, row) in want.iter().enumerate() {
            // Ids as sets (pairs sorted by id), weights by id.
            let mut got: Vec<(usize, f64)> = (0..top_k)
                .map(|j| {
                    (
                        ids[tok * top_k + j] as usize,
                        weights[tok * top_k + j] as f64,
                    )
                })
                .collect();
            let mut row = row.clone();
            got.sort_by_key(|&(i, _)| i);
            row.sort_by_key(|&(i, _)| i);
            let (got_ids, want_ids): (Vec<usize>, Vec<usize>) = (
                got.iter().map(|&(i, _)| i).collect(),
                row.iter().map(|&(i, _)| i).collect(),
            );
            assert_eq!(got_ids, want_ids, "token {tok}, {p:?}");
            for (&(i, g), &(_, w)) in got.iter().zip(&row) {
                assert!(
                    (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-6,
                    "token {tok} expert {i}: {g} vs {w}"
                );
            }
        }
        if n_group == 1 {
            // Ungrouped, in selection order: no non-NaN expert after a NaN one.
            for (tok, got) in ids.chunks(top_k).enumerate() {
                if let Some(at) = got.iter().position(|&i| nan_expert(tok, i as usize)) {
                    assert!(
                        got[at..].iter().all(|&i| nan_expert(tok, i as usize)),
                        "token {tok}: {got:?}"
                    );
                }
            }
        }
    }
    // The ungrouped top-8 never reaches a NaN expert.
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: 8,
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.0,
    };
    let (ids, weights) = route(&logits, Some(&bias), e, &p);
    for (n, &i) in ids.iter().enumerate() {
        assert!(!nan_expert(n / 8, i as usize), "slot {n}: expert {i}");
    }
    assert!(weights.iter().all(|w| w.is_finite()));
}

#[test]
fn expert_ids_must_fit_in_i32() {
    let shape = moemla_core::Shape::new([1, 1]);
    assert!(super::ids_fit_i32(1 << 31, &shape).is_ok());
    let err = super::ids_fit_i32((1 << 31) + 1, &shape).unwrap_err();
    assert!(
        matches!(
            err,
            moemla_core::Error::Dim {
                dim: 1,
                dim_name: "E",
                ..
            }
        ),
        "{err}"
    );
}
