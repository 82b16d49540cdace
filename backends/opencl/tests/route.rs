//! moe_route on the OpenCL device against a plain f64 reference.

mod common;

use common::{assert_close, backend, float_tensor, read_f32, read_i32};
use moemla_core::{ops, DType, GroupSelect, RouteParams, ScoreFunc};

/// DeepSeek gating in f64, written from the contract: returns (ids, weights) per token.
fn reference(
    logits: &[f64],
    bias: Option<&[f64]>,
    e: usize,
    p: &RouteParams,
) -> Vec<Vec<(usize, f64)>> {
    logits
        .chunks(e)
        .map(|row| {
            let s: Vec<f64> = match p.score_func {
                ScoreFunc::Sigmoid => row.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
                ScoreFunc::Softmax => {
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = row.iter().map(|x| (x - m).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    ex.iter().map(|v| v / sum).collect()
                }
            };
            let mut sel: Vec<f64> = (0..e).map(|i| s[i] + bias.map_or(0.0, |b| b[i])).collect();
            if p.n_group > 1 {
                let gs = e / p.n_group;
                let score = |g: usize| {
                    let mut v: Vec<f64> = sel[g * gs..(g + 1) * gs].to_vec();
                    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                    match p.group_select {
                        GroupSelect::Max => v[0],
                        GroupSelect::Top2Sum => v.iter().take(2).sum(),
                    }
                };
                let mut groups: Vec<usize> = (0..p.n_group).collect();
                groups.sort_by(|&a, &b| score(b).partial_cmp(&score(a)).unwrap());
                for (i, v) in sel.iter_mut().enumerate() {
                    if !groups[..p.topk_group].contains(&(i / gs)) {
                        *v = f64::NEG_INFINITY;
                    }
                }
            }
            let mut ids: Vec<usize> = (0..e).collect();
            ids.sort_by(|&a, &b| sel[b].partial_cmp(&sel[a]).unwrap());
            ids.truncate(p.top_k);
            let total: f64 = ids.iter().map(|&i| s[i]).sum();
            let norm = if p.renormalize { total } else { 1.0 };
            ids.iter()
                .map(|&i| (i, s[i] / norm * p.routed_scaling_factor))
                .collect()
        })
        .collect()
}

fn check(seed: u64, t: usize, e: usize, with_bias: bool, p: &RouteParams, dtype: DType) {
    let Some(be) = backend() else { return };
    let raw = common::uniform(seed, t * e, -4.0, 4.0);
    let (logits, logits64) = float_tensor(&*be, &[t, e], &raw, dtype);
    let bias_raw = common::uniform(seed + 1, e, -0.5, 0.5);
    let (bias, bias64) = float_tensor(&*be, &[e], &bias_raw, DType::F32);
    let bias_arg = with_bias.then_some(&bias);
    let out = ops::moe_route(&*be, &logits, bias_arg, p).unwrap();
    let ids = read_i32(&*be, &out.topk_ids);
    let weights = read_f32(&*be, &out.topk_weights);
    let want = reference(&logits64, with_bias.then_some(&bias64[..]), e, p);
    for (tok, row) in want.iter().enumerate() {
        let got_ids = &ids[tok * p.top_k..][..p.top_k];
        let mut got_sorted: Vec<i32> = got_ids.to_vec();
        got_sorted.sort();
        let mut want_sorted: Vec<i32> = row.iter().map(|&(i, _)| i as i32).collect();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "token {tok}: ids");
        for (j, &id) in got_ids.iter().enumerate() {
            let w = row.iter().find(|&&(i, _)| i as i32 == id).unwrap().1;
            assert_close(
                &format!("token {tok} weight of {id}"),
                &[weights[tok * p.top_k + j]],
                &[w],
                1e-5,
            );
        }
    }
}

#[test]
fn deepseek_v3_style_sigmoid_bias_groups_top2_sum() {
    let p = RouteParams {
        top_k: 4,
        n_group: 4,
        topk_group: 2,
        ..RouteParams::deepseek_v3()
    };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        check(11, 7, 32, true, &p, dtype);
    }
}

#[test]
fn deepseek_v2_style_softmax_max_groups_unnormalised() {
    let p = RouteParams {
        top_k: 3,
        n_group: 4,
        topk_group: 2,
        ..RouteParams::deepseek_v2()
    };
    check(21, 5, 24, false, &p, DType::F32);
}

#[test]
fn softmax_without_groups_over_many_experts() {
    check(
        31,
        3,
        300,
        false,
        &RouteParams::deepseek_v2_lite(),
        DType::BF16,
    );
}

#[test]
fn descending_order_and_ties_go_to_the_lower_id() {
    let Some(be) = backend() else { return };
    // Experts 1 and 3 tie for first, 0 and 2 tie for second.
    let (logits, _) = float_tensor(&*be, &[1, 4], &[0.5, 2.0, 0.5, 2.0], DType::F32);
    let p = RouteParams {
        top_k: 3,
        ..RouteParams::deepseek_v2_lite()
    };
    let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
    assert_eq!(read_i32(&*be, &out.topk_ids), vec![1, 3, 0]);
}

#[test]
fn deepseek_v2_shape_with_fewer_experts_than_work_items() {
    // E = 160 runs in a 256-wide work-group: work-items past E must not touch local memory
    // (PoCL 3.1 once ran them through a strided loop; see FOR_STRIDED in common.cl).
    check(5, 33, 160, false, &RouteParams::deepseek_v2(), DType::F32);
}

#[test]
fn nan_logits_rank_last() {
    let Some(be) = backend() else { return };
    let (logits, _) = float_tensor(&*be, &[1, 4], &[f32::NAN, 1.0, 3.0, 2.0], DType::F32);
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: 3,
        ..RouteParams::deepseek_v2_lite()
    };
    let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
    assert_eq!(read_i32(&*be, &out.topk_ids), vec![2, 3, 1]);
}
