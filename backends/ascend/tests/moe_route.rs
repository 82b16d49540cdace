//! moe_route on the CANN emulator against a plain f64 reference of the contract.

mod common;

use moemla_core::{ops, Backend, DType, Error, GroupSelect, HostTensor, RouteParams, ScoreFunc};

/// `v` as a ranking key: NaN ranks as -inf (contract, "Bad input").
fn key(v: f64) -> f64 {
    if v.is_nan() {
        f64::NEG_INFINITY
    } else {
        v
    }
}

/// The contract's routing for one token, in f64: (ids sorted by selection score, weights).
/// NaN selection scores rank as -inf, ties go to the lower index, renormalisation divides
/// by max(sum, 1e-20).
fn reference_row(logits: &[f32], bias: Option<&[f32]>, p: &RouteParams) -> Vec<(i32, f64)> {
    let e = logits.len();
    let s: Vec<f64> = match p.score_func {
        ScoreFunc::Sigmoid => logits
            .iter()
            .map(|&x| 1.0 / (1.0 + (-(x as f64)).exp()))
            .collect(),
        ScoreFunc::Softmax => {
            let m = logits
                .iter()
                .fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let ex: Vec<f64> = logits.iter().map(|&x| (x as f64 - m).exp()).collect();
            let z: f64 = ex.iter().sum();
            ex.iter().map(|v| v / z).collect()
        }
        ScoreFunc::Sqrtsoftplus => (logits.iter())
            .map(|&x| {
                if x > 20.0 {
                    x as f64
                } else {
                    (x as f64).exp().ln_1p()
                }
                .sqrt()
            })
            .collect(),
    };
    let mut sel: Vec<f64> = (0..e)
        .map(|i| key(s[i] + bias.map_or(0.0, |b| b[i] as f64)))
        .collect();
    if p.n_group > 1 {
        let w = e / p.n_group;
        let mut groups: Vec<(f64, usize)> = (0..p.n_group)
            .map(|g| {
                let mut v: Vec<f64> = sel[g * w..(g + 1) * w].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                let score = match (p.group_select, v.len()) {
                    (GroupSelect::Top2Sum, 2..) => key(v[0] + v[1]),
                    _ => v[0],
                };
                (score, g)
            })
            .collect();
        groups.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, g) in &groups[p.topk_group..] {
            sel[g * w..(g + 1) * w].fill(f64::NEG_INFINITY);
        }
    }
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
    let ids = &order[..p.top_k];
    let mut w: Vec<f64> = ids.iter().map(|&i| s[i]).collect();
    if p.renormalize {
        // maxNum: a NaN sum gives 1e-20.
        let z = w.iter().sum::<f64>().max(1e-20);
        w.iter_mut().for_each(|x| *x /= z);
    }
    ids.iter()
        .zip(w)
        .map(|(&i, w)| (i as i32, w * p.routed_scaling_factor))
        .collect()
}

/// Routes `logits` [t, e] (already representable in `dtype`) with `bias` on the backend and
/// compares with [`reference_row`]: ids as sets, weights by id (a NaN weight must be NaN).
fn route_matches_reference(
    dtype: DType,
    p: &RouteParams,
    t: usize,
    e: usize,
    logits: &[f32],
    bias: Option<&[f32]>,
) -> Vec<(Vec<i32>, Vec<f32>)> {
    let be = common::backend();
    let host = HostTensor::from_f32_as([t, e], logits, dtype).unwrap();
    let dl = be.upload(&host).unwrap();
    let db = bias.map(|b| be.upload(&HostTensor::from_slice([e], b).unwrap()).unwrap());
    let out = ops::moe_route(&be, &dl, db.as_ref(), p).unwrap();
    let ids = be.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
    let w = be
        .download(&out.topk_weights)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    let mut rows = Vec::new();
    for r in 0..t {
        let want = reference_row(&logits[r * e..(r + 1) * e], bias, p);
        let got: Vec<(i32, f32)> = (0..p.top_k)
            .map(|j| (ids[r * p.top_k + j], w[r * p.top_k + j]))
            .collect();
        let mut got_ids: Vec<i32> = got.iter().map(|g| g.0).collect();
        let mut want_ids: Vec<i32> = want.iter().map(|g| g.0).collect();
        got_ids.sort();
        want_ids.sort();
        assert_eq!(got_ids, want_ids, "row {r}: expert sets differ");
        for (id, ww) in &want {
            let g = got.iter().find(|g| g.0 == *id).unwrap().1 as f64;
            let ok = if ww.is_nan() {
                g.is_nan()
            } else {
                (g - ww).abs() <= 1e-5 + 1e-5 * ww.abs()
            };
            assert!(ok, "row {r} expert {id}: {g} vs {ww}");
        }
        rows.push(got.into_iter().unzip());
    }
    rows
}

fn check_route(dtype: DType, p: &RouteParams, t: usize, e: usize, with_bias: bool) {
    let logits = common::values(7, t * e, -4.0, 4.0);
    // Round to the run dtype first, so the reference sees the values the backend sees.
    let logits = HostTensor::from_f32_as([t, e], &logits, dtype)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    let bias = common::values(11, e, -0.1, 0.1);
    route_matches_reference(dtype, p, t, e, &logits, with_bias.then_some(&bias[..]));
}

#[test]
fn deepseek_v3_routing_matches_reference_in_every_dtype() {
    let p = RouteParams::deepseek_v3();
    for dtype in DType::FLOATS {
        check_route(dtype, &p, 33, 256, true);
    }
}

#[test]
fn softmax_max_group_select_with_renormalize_matches_reference() {
    let p = RouteParams {
        score_func: ScoreFunc::Softmax,
        top_k: 6,
        n_group: 8,
        topk_group: 3,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 16.0,
    };
    check_route(DType::F32, &p, 5, 160, false);
}

#[test]
fn ungrouped_routing_matches_reference() {
    let p = RouteParams {
        n_group: 1,
        topk_group: 1,
        ..RouteParams::deepseek_v3()
    };
    check_route(DType::BF16, &p, 3, 64, true);
}

#[test]
fn unrenormalised_softmax_routing_matches_reference_in_every_dtype() {
    // DeepSeek-V2: softmax, groups scored by max, no renormalisation, scale 16.
    for dtype in DType::FLOATS {
        check_route(dtype, &RouteParams::deepseek_v2(), 33, 160, false);
    }
    check_route(DType::F32, &RouteParams::deepseek_v2_lite(), 7, 64, false);
}

#[test]
fn too_many_experts_for_the_op_are_unsupported() {
    let be = common::backend();
    let p = RouteParams {
        n_group: 1,
        topk_group: 1,
        ..RouteParams::deepseek_v3()
    };
    let host = HostTensor::from_f32_as([1, 4096], &common::values(2, 4096, -1.0, 1.0), DType::F32)
        .unwrap();
    let dl = be.upload(&host).unwrap();
    let err = ops::moe_route(&be, &dl, None, &p).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { what, .. } if what == "E=4096"),
        "{err}"
    );
}

#[test]
fn backend_works_from_a_thread_other_than_its_creator() {
    // AscendCL's current device is per thread; the backend must set it where it runs.
    let be = std::sync::Arc::new(common::backend());
    let host =
        HostTensor::from_f32_as([2, 64], &common::values(4, 128, -2.0, 2.0), DType::F32).unwrap();
    let dl = be.upload(&host).unwrap();
    let p = RouteParams {
        n_group: 1,
        topk_group: 1,
        ..RouteParams::deepseek_v3()
    };
    let be2 = be.clone();
    let ids = std::thread::spawn(move || {
        let out = ops::moe_route(&*be2, &dl, None, &p).unwrap();
        be2.download(&out.topk_ids).unwrap().to_i32_vec().unwrap()
    })
    .join()
    .unwrap();
    let logits = host.to_f32_vec().unwrap();
    let want = reference_row(
        &logits[..64],
        None,
        &RouteParams {
            n_group: 1,
            topk_group: 1,
            ..RouteParams::deepseek_v3()
        },
    );
    let mut got: Vec<i32> = ids[..8].to_vec();
    let mut want_ids: Vec<i32> = want.iter().map(|w| w.0).collect();
    got.sort();
    want_ids.sort();
    assert_eq!(got, want_ids);
}

#[test]
fn renormalisation_divides_by_the_larger_of_sum_and_1e_20() {
    // Contract v2: weights / max(sum, 1e-20). CANN divides sigmoid weights by sum + eps,
    // which is 12% off here (8 scores near 1e-20); all-zero scores give weights 0, not NaN.
    let p = RouteParams {
        n_group: 1,
        topk_group: 1,
        ..RouteParams::deepseek_v3()
    };
    let e = 64;
    let mut logits = vec![-1000.0f32; e];
    logits.extend(common::values(5, e, -46.5, -45.5));
    let rows = route_matches_reference(DType::F32, &p, 2, e, &logits, None);
    let (ids, weights) = &rows[0];
    assert!(weights.iter().all(|&w| w == 0.0), "{weights:?}");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), p.top_k);
    assert!(ids.iter().all(|&id| (0..e as i32).contains(&id)), "{ids:?}");
    let sum: f32 = rows[1].1.iter().sum();
    assert!((sum - 2.5).abs() < 1e-5, "renormalised row sums to {sum}");
}

#[test]
fn nan_selection_scores_rank_last() {
    // Contract: a NaN selection score (NaN logit or NaN bias) ranks as -inf, in group
    // scores and expert top-k alike, ties to the lower index. CANN documents no NaN order.
    let e = 32;
    let p = RouteParams {
        top_k: 4,
        n_group: 4,
        topk_group: 2,
        ..RouteParams::deepseek_v3()
    };
    let mut logits = common::values(9, 3 * e, -2.0, 2.0);
    logits[5] = f32::NAN;
    logits[9] = f32::NAN;
    // Row 1: groups 0 and 1 all NaN, so groups 2 and 3 are kept.
    logits[e..e + 16].fill(f32::NAN);
    // Row 2: every score NaN: groups 0 and 1, experts 0..4, weights NaN.
    logits[2 * e..].fill(f32::NAN);
    let mut bias = common::values(10, e, -0.1, 0.1);
    // Without a bias, only the rows with NaN logits need the contract's rule...
    let rows = route_matches_reference(DType::F32, &p, 3, e, &logits, None);
    assert!(rows[1].0.iter().all(|&id| id >= 16), "{:?}", rows[1].0);
    assert_eq!(rows[2].0, [0, 1, 2, 3]);
    // ...a NaN in the bias touches every row.
    bias[3] = f32::NAN;
    bias[17] = f32::NAN;
    let rows = route_matches_reference(DType::F32, &p, 3, e, &logits, Some(&bias));
    for (ids, _) in &rows[..2] {
        assert!(
            !ids.iter().any(|&id| [3, 5, 9, 17].contains(&id)),
            "{ids:?}"
        );
    }
    // Softmax: one NaN logit makes every score of its row NaN.
    let p = RouteParams {
        score_func: ScoreFunc::Softmax,
        ..p
    };
    let rows = route_matches_reference(DType::F32, &p, 3, e, &logits, Some(&bias));
    assert_eq!(rows[0].0, [0, 1, 2, 3]);
    assert!(rows[0].1.iter().all(|w| w.is_nan()));
}

#[test]
fn groups_of_one_or_two_experts_run() {
    // CANN's tiling wants >= 1 expert per group, and 2 for the top-2 sum; a one-expert
    // group's top-2 sum is its one score, so the backend asks for the max there.
    for (e, n_group) in [(16, 16), (16, 8)] {
        let p = RouteParams {
            top_k: 3,
            n_group,
            topk_group: 3,
            ..RouteParams::deepseek_v3()
        };
        let logits = common::values(12, 4 * e, -3.0, 3.0);
        let bias = common::values(13, e, -0.1, 0.1);
        route_matches_reference(DType::F32, &p, 4, e, &logits, Some(&bias));
    }
}

#[test]
fn align32_limit_applies_only_when_groups_are_selected() {
    // CANN's tiling checks align32(E / n_group) * n_group <= 2048 only when it selects
    // groups: 120 groups of 17 (120 * 32 = 3840) run when all groups are kept.
    let e = 2040;
    let p = RouteParams {
        top_k: 8,
        n_group: 120,
        topk_group: 120,
        group_select: GroupSelect::Max,
        ..RouteParams::deepseek_v3()
    };
    let logits = common::values(14, 2 * e, -3.0, 3.0);
    route_matches_reference(DType::F32, &p, 2, e, &logits, None);
    let be = common::backend();
    let dl = be
        .upload(&HostTensor::from_slice([2, e], &logits).unwrap())
        .unwrap();
    let grouped = RouteParams { topk_group: 4, ..p };
    let err = ops::moe_route(&be, &dl, None, &grouped).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { what, .. } if what == "n_group=120 with 17 experts per group"),
        "{err}"
    );
}

/// Hash routing, in f64: ids = tid2eid[input_ids[t]], weights = the unbiased scores at those
/// ids, renormalised by max(sum, 1e-20) if asked, scaled.
fn hash_reference(logits: &[f32], e: usize, table_row: &[i32], p: &RouteParams) -> Vec<f64> {
    let s: Vec<f64> = match p.score_func {
        ScoreFunc::Sigmoid => logits
            .iter()
            .map(|&x| 1.0 / (1.0 + (-(x as f64)).exp()))
            .collect(),
        ScoreFunc::Sqrtsoftplus => logits
            .iter()
            .map(|&x| {
                let x = x as f64;
                if x > 20.0 { x } else { x.exp().ln_1p() }.sqrt()
            })
            .collect(),
        ScoreFunc::Softmax => {
            let m = logits
                .iter()
                .fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
            let ex: Vec<f64> = logits.iter().map(|&x| (x as f64 - m).exp()).collect();
            let z: f64 = ex.iter().sum();
            ex.iter().map(|v| v / z).collect()
        }
    };
    assert_eq!(s.len(), e);
    let mut w: Vec<f64> = table_row.iter().map(|&id| s[id as usize]).collect();
    if p.renormalize {
        let z = w.iter().sum::<f64>().max(1e-20);
        w.iter_mut().for_each(|x| *x /= z);
    }
    w.iter().map(|x| x * p.routed_scaling_factor).collect()
}

#[test]
fn hash_routing_takes_the_tables_ids_and_the_scores_at_them() {
    // Sigmoid and softmax scores come from aclnnMoeGatingTopK's normOut, sqrt-softplus from
    // aclnnSoftplus + aclnnSqrt.
    let be = common::backend();
    let (t, e, k, vocab) = (6, 16, 3, 5);
    // Rows of distinct ids; row 4 is never read (it holds an out-of-range id: not checked).
    let table: Vec<i32> = vec![0, 5, 9, 15, 14, 13, 2, 3, 4, 7, 1, 11, 99, 99, 99];
    let input_ids: Vec<i32> = vec![1, 0, 3, 3, 2, 0];
    for (score_func, renormalize, dtype) in [
        (ScoreFunc::Sigmoid, true, DType::BF16),
        (ScoreFunc::Softmax, false, DType::F32),
        (ScoreFunc::Sqrtsoftplus, true, DType::F16),
    ] {
        let p = RouteParams {
            score_func,
            top_k: k,
            n_group: 1,
            topk_group: 1,
            group_select: GroupSelect::Max,
            renormalize,
            routed_scaling_factor: 1.5,
        };
        let logits_host =
            HostTensor::from_f32_as([t, e], &common::values(41, t * e, -4.0, 4.0), dtype).unwrap();
        let logits = be.upload(&logits_host).unwrap();
        let ids_t = be
            .upload(&HostTensor::from_slice([t], &input_ids).unwrap())
            .unwrap();
        let table_t = be
            .upload(&HostTensor::from_slice([vocab, k], &table).unwrap())
            .unwrap();
        let inputs = ops::RouteInputs::new(&logits).with_hash(&ids_t, &table_t);
        let out = ops::moe_route_with(&be, inputs, &p).unwrap();
        let ids = be.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
        let w = be
            .download(&out.topk_weights)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let xs = logits_host.to_f32_vec().unwrap();
        for tok in 0..t {
            let row = &table[input_ids[tok] as usize * k..][..k];
            assert_eq!(&ids[tok * k..][..k], row, "{score_func:?} token {tok}");
            let want = hash_reference(&xs[tok * e..][..e], e, row, &p);
            for (j, (g, w)) in w[tok * k..][..k].iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                    "{score_func:?} [{tok}, {j}] = {g}, want {w}"
                );
            }
        }
    }
    // A token id outside the table is an input error, found on the host before CANN runs.
    let p = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: k,
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.0,
    };
    let logits = be
        .upload(&HostTensor::from_f32_as([1, e], &[0.5; 16], DType::F32).unwrap())
        .unwrap();
    let ids_t = be
        .upload(&HostTensor::from_slice([1], &[vocab as i32]).unwrap())
        .unwrap();
    let table_t = be
        .upload(&HostTensor::from_slice([vocab, k], &table).unwrap())
        .unwrap();
    let inputs = ops::RouteInputs::new(&logits).with_hash(&ids_t, &table_t);
    assert!(matches!(
        ops::moe_route_with(&be, inputs, &p),
        Err(Error::IndexOutOfRange { .. })
    ));
}

#[test]
fn sqrtsoftplus_routing_matches_reference_with_groups_and_bias() {
    // Scores by aclnnSoftplus + aclnnSqrt, selection on the host (module doc of moe_route).
    let p = RouteParams {
        score_func: ScoreFunc::Sqrtsoftplus,
        top_k: 3,
        n_group: 4,
        topk_group: 2,
        group_select: GroupSelect::Top2Sum,
        renormalize: true,
        routed_scaling_factor: 1.5,
    };
    for dtype in [DType::F32, DType::BF16] {
        check_route(dtype, &p, 9, 32, true);
    }
    let p = RouteParams {
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: false,
        ..p
    };
    check_route(DType::F16, &p, 5, 24, false);
}
