//! The CPU routing against a plain f64 reference at DeepSeek shapes.

use super::top_indices;
use crate::test_util::{download_f32, upload_as, Lcg};
use crate::CpuBackend;
use moemla_core::{ops, Backend, DType, GroupSelect, HostTensor, RouteParams, ScoreFunc};

/// DeepSeek-V3 `Gate` in f64, written out plainly: returns (ids, weights) per token.
fn reference(
    logits: &[f32],
    bias: Option<&[f32]>,
    e: usize,
    p: &RouteParams,
) -> Vec<Vec<(usize, f64)>> {
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
            };
            let mut sel: Vec<f64> = (0..e)
                .map(|i| s[i] + bias.map_or(0.0, |b| b[i] as f64))
                .collect();
            if p.n_group > 1 {
                let gs = e / p.n_group;
                let mut groups: Vec<(usize, f64)> = (0..p.n_group)
                    .map(|g| {
                        let mut v: Vec<f64> = sel[g * gs..(g + 1) * gs].to_vec();
                        v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                        let score = match p.group_select {
                            GroupSelect::Max => v[0],
                            GroupSelect::Top2Sum => v[0] + v[1],
                        };
                        (g, score)
                    })
                    .collect();
                groups.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
                for &(g, _) in &groups[p.topk_group..] {
                    sel[g * gs..(g + 1) * gs].fill(f64::NEG_INFINITY);
                }
            }
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| sel[b].partial_cmp(&sel[a]).unwrap().then(a.cmp(&b)));
            let ids = &order[..p.top_k];
            let sum: f64 = ids.iter().map(|&i| s[i]).sum();
            ids.iter()
                .map(|&i| {
                    let w = if p.renormalize { s[i] / sum } else { s[i] };
                    (i, w * p.routed_scaling_factor)
                })
                .collect()
        })
        .collect()
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
    top_indices(&[1.0, 3.0, f32::NAN, 3.0, -0.0, 0.0], 4, &mut best);
    assert_eq!(best, vec![(3.0, 1), (3.0, 3), (1.0, 0), (0.0, 4)]);
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
