//! Shapes past the device's local memory, work-group and allocation limits (issue 11):
//! each runs with correct results or returns `Unsupported`, and never aborts. PoCL used to
//! abort (an assertion) on the first three, so each runs in a child process.

mod common;

use common::{backend, float_tensor, in_child, int_tensor, read_f32, read_i32, route_reference};
use moemla_core::{
    ops, Backend, DType, Error, ExpertsParams, GroupSelect, RouteParams, ScoreFunc, Shape,
};

/// Logits -4 .. 4 on a grid of `e / dup` values, permuted, each value `dup` times on
/// neighbouring experts: distinct values are far apart in f32 (no near ties to flip),
/// equal ones tie exactly (the lower id must come first).
fn grid_logits(e: usize, dup: usize) -> Vec<f32> {
    let levels = e.div_ceil(dup);
    // 7919 is prime and no level count here is a multiple of it: i -> i * 7919 mod levels
    // is a permutation.
    (0..e)
        .map(|i| -4.0 + 8.0 * ((i / dup * 7919) % levels) as f32 / levels as f32)
        .collect()
}

/// moe_route on [t, e] logits against the f64 reference, ids in order (the reference's
/// order: best first, ties to the lower id), or `Unsupported`.
fn route_matches_reference(t: usize, e: usize, bias: Option<Vec<f32>>, p: &RouteParams) {
    let Some(be) = backend() else { return };
    let raw: Vec<f32> = (0..t).flat_map(|_| grid_logits(e, 1)).collect();
    let (logits, logits64) = float_tensor(&*be, &[t, e], &raw, DType::F32);
    let bias = bias.map(|b| float_tensor(&*be, &[e], &b, DType::F32));
    let out = match ops::moe_route(&*be, &logits, bias.as_ref().map(|b| &b.0), p) {
        Ok(out) => out,
        Err(e @ Error::Unsupported { .. }) => {
            println!("unsupported here: {e}");
            return;
        }
        Err(e) => panic!("E = {e}: {e:?}"),
    };
    let ids = read_i32(&*be, &out.topk_ids);
    let weights = read_f32(&*be, &out.topk_weights);
    let want = route_reference(&logits64, bias.as_ref().map(|b| &b.1[..]), e, p);
    for (tok, row) in want.iter().enumerate() {
        let got = &ids[tok * p.top_k..][..p.top_k];
        let want_ids: Vec<i32> = row.iter().map(|&(i, _)| i as i32).collect();
        assert_eq!(got, &want_ids[..], "token {tok}: ids");
        let want_w: Vec<f64> = row.iter().map(|&(_, w)| w).collect();
        common::assert_close(
            &format!("token {tok} weights"),
            &weights[tok * p.top_k..][..p.top_k],
            &want_w,
            1e-5,
        );
    }
}

fn sigmoid(top_k: usize, n_group: usize, topk_group: usize) -> RouteParams {
    RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k,
        n_group,
        topk_group,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 2.5,
    }
}

#[test]
fn moe_route_with_100000_experts() {
    in_child("moe_route_with_100000_experts", || {
        // 12 bytes of local memory per expert used to exceed PoCL's 1 MiB. A large bias on
        // every 9973rd expert puts those first.
        let e = 100_000;
        let bias = (0..e)
            .map(|i| if i % 9973 == 0 { 0.5 } else { 0.0 })
            .collect();
        route_matches_reference(3, e, Some(bias), &sigmoid(8, 1, 1));
    });
}

#[test]
fn moe_route_with_65536_groups() {
    in_child("moe_route_with_65536_groups", || {
        // 8 bytes of local memory per group on top of the experts' used to exceed it too.
        route_matches_reference(2, 131_072, None, &sigmoid(8, 65_536, 4));
    });
}

#[test]
fn moe_experts_with_2_pow_20_experts() {
    in_child("moe_experts_with_2_pow_20_experts", || {
        let Some(be) = backend() else { return };
        // 8 bytes of local memory per expert used to exceed PoCL's 1 MiB.
        let (t, h, i, e, k) = (4, 2, 2, 1 << 20, 2);
        let ids = [(1 << 20) - 1, 0, 777_777, -1, 5, (1 << 20) - 1, 0, 5];
        let (x, x64) = float_tensor(
            &*be,
            &[t, h],
            &common::uniform(1, t * h, -1.0, 1.0),
            DType::F32,
        );
        let w13_raw = common::uniform(2, e * 2 * i * h, -0.5, 0.5);
        let (w13, w13_64) = float_tensor(&*be, &[e, 2 * i, h], &w13_raw, DType::F32);
        let w2_raw = common::uniform(3, e * h * i, -0.5, 0.5);
        let (w2, w2_64) = float_tensor(&*be, &[e, h, i], &w2_raw, DType::F32);
        let (w, w64) = float_tensor(
            &*be,
            &[t, k],
            &common::uniform(4, t * k, 0.1, 1.0),
            DType::F32,
        );
        let topk_ids = int_tensor(&*be, &[t, k], &ids);
        let params = ExpertsParams::default();
        let y = match ops::moe_experts(&*be, &x, &w13, &w2, &topk_ids, &w, &params) {
            Ok(y) => y,
            Err(err @ Error::Unsupported { .. }) => return println!("unsupported here: {err}"),
            Err(err) => panic!("{err:?}"),
        };
        let mut want = vec![0.0f64; t * h];
        for tok in 0..t {
            for j in 0..k {
                let Ok(ex) = usize::try_from(ids[tok * k + j]) else {
                    continue;
                };
                let dot = |r: usize| -> f64 {
                    (0..h)
                        .map(|c| w13_64[(ex * 2 * i + r) * h + c] * x64[tok * h + c])
                        .sum()
                };
                let act: Vec<f64> = (0..i)
                    .map(|r| dot(r) / (1.0 + (-dot(r)).exp()) * dot(i + r))
                    .collect();
                for c in 0..h {
                    let down: f64 = (0..i).map(|r| w2_64[(ex * h + c) * i + r] * act[r]).sum();
                    want[tok * h + c] += w64[tok * k + j] * down;
                }
            }
        }
        common::assert_close("y", &read_f32(&*be, &y), &want, 1e-4);
    });
}

#[test]
fn moe_route_orders_all_of_2_pow_20_experts() {
    in_child("moe_route_orders_all_of_2_pow_20_experts", || {
        let Some(be) = backend() else { return };
        // top_k = E: every expert, best first. Used to be one pass over E per slot. 1024
        // experts share each logit, so most places are exact ties (lower id first).
        let e = 1 << 20;
        let raw = grid_logits(e, 1024);
        let (logits, _) = float_tensor(&*be, &[1, e], &raw, DType::F32);
        let p = RouteParams {
            renormalize: false,
            routed_scaling_factor: 1.0,
            ..sigmoid(e, 1, 1)
        };
        let out = match ops::moe_route(&*be, &logits, None, &p) {
            Ok(out) => out,
            Err(err @ Error::Unsupported { .. }) => return println!("unsupported here: {err}"),
            Err(err) => panic!("{err:?}"),
        };
        let ids = read_i32(&*be, &out.topk_ids);
        // Unscaled, unnormalised weights are the selection scores themselves.
        let weights = read_f32(&*be, &out.topk_weights);
        let mut seen = vec![false; e];
        for (j, (&id, &w)) in ids.iter().zip(&weights).enumerate() {
            let id = usize::try_from(id).unwrap();
            assert!(!std::mem::replace(&mut seen[id], true), "id {id} twice");
            let want = 1.0 / (1.0 + (-(raw[id] as f64)).exp());
            assert!(
                (w as f64 - want).abs() <= 1e-6,
                "slot {j}: id {id} weight {w}, want {want}"
            );
            if j > 0 {
                let (prev_id, prev_w) = (ids[j - 1], weights[j - 1]);
                assert!(
                    prev_w > w || (prev_w == w && prev_id < id as i32),
                    "slots {}, {j}: ({prev_id}, {prev_w}) before ({id}, {w})",
                    j - 1
                );
            }
        }
    });
}

#[test]
fn moe_route_radix_ordered_top_k_with_groups_and_ties() {
    // top_k above the rank-sort limit (128): the radix sort path, against the reference in
    // order; pairs of experts share a logit (exact ties, lower id first).
    let Some(be) = backend() else { return };
    let (t, e) = (3, 1000);
    let raw: Vec<f32> = (0..t).flat_map(|_| grid_logits(e, 2)).collect();
    let (logits, logits64) = float_tensor(&*be, &[t, e], &raw, DType::F32);
    for p in [
        sigmoid(700, 10, 8),
        RouteParams {
            score_func: ScoreFunc::Softmax,
            renormalize: false,
            ..sigmoid(129, 1, 1)
        },
    ] {
        let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
        let ids = read_i32(&*be, &out.topk_ids);
        let weights = read_f32(&*be, &out.topk_weights);
        for (tok, row) in route_reference(&logits64, None, e, &p).iter().enumerate() {
            let want: Vec<i32> = row.iter().map(|&(i, _)| i as i32).collect();
            assert_eq!(
                &ids[tok * p.top_k..][..p.top_k],
                &want[..],
                "token {tok}: {p:?}"
            );
            let want_w: Vec<f64> = row.iter().map(|&(_, w)| w).collect();
            common::assert_close(
                "weights",
                &weights[tok * p.top_k..][..p.top_k],
                &want_w,
                1e-5,
            );
        }
    }
}

#[test]
fn allocations_beyond_the_device_are_typed_errors() {
    let Some(be) = backend() else { return };
    // Larger than any buffer the device allows: OutOfMemory, not an abort.
    let err = be
        .alloc_zeroed(&Shape::new([1usize << 40]), DType::F32)
        .unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory { bytes, .. } if bytes == 1 << 42),
        "{err:?}"
    );
    // A byte count that overflows: Size, not a wrapped small buffer.
    let err = be
        .alloc_zeroed(&Shape::new([1usize << 62, 4]), DType::F32)
        .unwrap_err();
    assert!(matches!(err, Error::Size { .. }), "{err:?}");
}
