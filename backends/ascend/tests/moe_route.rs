//! moe_route on the CANN emulator against a plain f64 reference of the contract.

mod common;

use moemla_core::{ops, Backend, DType, Error, GroupSelect, HostTensor, RouteParams, ScoreFunc};

/// The contract's routing for one token, in f64: (ids sorted by selection score, weights).
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
    };
    let mut sel: Vec<f64> = (0..e)
        .map(|i| s[i] + bias.map_or(0.0, |b| b[i] as f64))
        .collect();
    if p.n_group > 1 {
        let w = e / p.n_group;
        let mut groups: Vec<(f64, usize)> = (0..p.n_group)
            .map(|g| {
                let mut v: Vec<f64> = sel[g * w..(g + 1) * w].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                let score = match p.group_select {
                    GroupSelect::Max => v[0],
                    GroupSelect::Top2Sum => v[0] + v[1],
                };
                (score, g)
            })
            .collect();
        groups.sort_by(|a, b| b.0.total_cmp(&a.0));
        for &(_, g) in &groups[p.topk_group..] {
            sel[g * w..(g + 1) * w].fill(f64::NEG_INFINITY);
        }
    }
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]));
    let ids = &order[..p.top_k];
    let mut w: Vec<f64> = ids.iter().map(|&i| s[i]).collect();
    if p.renormalize {
        let z: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= z);
    }
    ids.iter()
        .zip(w)
        .map(|(&i, w)| (i as i32, w * p.routed_scaling_factor))
        .collect()
}

fn check_route(dtype: DType, p: &RouteParams, t: usize, e: usize, with_bias: bool) {
    let be = common::backend();
    let logits = common::values(7, t * e, -4.0, 4.0);
    // Round to the run dtype first, so the reference sees the values the backend sees.
    let host = HostTensor::from_f32_as([t, e], &logits, dtype).unwrap();
    let logits = host.to_f32_vec().unwrap();
    let bias = common::values(11, e, -0.1, 0.1);
    let dl = be.upload(&host).unwrap();
    let db = be
        .upload(&HostTensor::from_slice([e], &bias).unwrap())
        .unwrap();
    let out = ops::moe_route(&be, &dl, with_bias.then_some(&db), p).unwrap();
    let ids = be.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
    let w = be
        .download(&out.topk_weights)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    for r in 0..t {
        let want = reference_row(
            &logits[r * e..(r + 1) * e],
            with_bias.then_some(&bias[..]),
            p,
        );
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
            assert!(
                (g - ww).abs() <= 1e-5 + 1e-5 * ww.abs(),
                "row {r} expert {id}: {g} vs {ww}"
            );
        }
    }
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
