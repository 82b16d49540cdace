//! The contract's comparison rules, element by element.

use moemla_conformance::compare::{
    compare_bytes, compare_routing, compare_topk_indices, compare_values, Routing,
};
use moemla_conformance::Tolerance;
use moemla_core::Shape;

const TOL: Tolerance = Tolerance {
    atol: 0.5,
    rtol: 0.25,
};

/// Compares single values; true if they pass.
fn passes(got: f32, expected: f32) -> bool {
    compare_values("v", &Shape::new([1]), &[got], &[expected], TOL).passed
}

#[test]
fn bound_is_atol_plus_rtol_times_expected_inclusive() {
    // exp 2: allowed 0.5 + 0.25 * 2 = 1.0 (all exact in binary).
    assert!(passes(3.0, 2.0));
    assert!(passes(1.0, 2.0));
    assert!(!passes(3.0 + 1e-6, 2.0));
    assert!(passes(-3.0, -2.0), "uses |exp|");
    assert!(!passes(2.0, -2.0));
}

#[test]
fn nan_never_passes() {
    assert!(!passes(f32::NAN, 1.0));
    assert!(!passes(1.0, f32::NAN));
    assert!(!passes(f32::NAN, f32::NAN));
    let c = compare_values("v", &Shape::new([2]), &[1.0, f32::NAN], &[1.0, 1.0], TOL);
    assert_eq!((c.failed, c.max_abs), (1, Some(f64::INFINITY)));
    assert_eq!(c.worst_index, Some(vec![1]));
}

#[test]
fn infinities_pass_only_against_the_same_infinity() {
    assert!(passes(f32::INFINITY, f32::INFINITY));
    assert!(passes(f32::NEG_INFINITY, f32::NEG_INFINITY));
    assert!(!passes(f32::INFINITY, f32::NEG_INFINITY));
    assert!(!passes(f32::NEG_INFINITY, f32::INFINITY));
    assert!(!passes(f32::MAX, f32::INFINITY));
    assert!(!passes(f32::NEG_INFINITY, -1e30));
    // An exact -inf match (an empty attention range's lse) adds no error.
    let c = compare_values(
        "lse",
        &Shape::new([2]),
        &[f32::NEG_INFINITY, 1.0],
        &[f32::NEG_INFINITY, 1.0],
        TOL,
    );
    assert_eq!(
        (c.passed, c.max_abs, c.max_rel),
        (true, Some(0.0), Some(0.0))
    );
}

#[test]
fn reports_maxima_and_the_worst_multi_dim_index() {
    let shape = Shape::new([2, 3]);
    let exp = [1.0, 2.0, 4.0, 8.0, 0.0, 1.0];
    // Errors: 0.1 at [0,0]; 2.0 at [1,0] (allowed 2.5, passes); 0.6 at [1,1] (allowed 0.5).
    let got = [1.1, 2.0, 4.0, 10.0, 0.6, 1.0];
    let c = compare_values("o", &shape, &got, &exp, TOL);
    assert!(!c.passed);
    assert_eq!(c.failed, 1);
    assert!((c.max_abs.unwrap() - 2.0).abs() < 1e-12);
    assert_eq!(c.max_rel, Some(f64::INFINITY), "0.6 against an expected 0");
    assert_eq!(c.worst_index, Some(vec![1, 1]));
    let first = c.first_failure.unwrap();
    assert_eq!(first.index, vec![1, 1]);
    assert!((first.got - 0.6).abs() < 1e-6 && first.expected == 0.0 && first.allowed == 0.5);
}

/// Compares one routing row of `k` ids.
fn route(got_ids: &[i32], got_w: &[f32], exp_ids: &[i32], exp_w: &[f32]) -> (bool, bool, String) {
    let got = Routing {
        ids: got_ids,
        weights: got_w,
    };
    let expected = Routing {
        ids: exp_ids,
        weights: exp_w,
    };
    let (ids, weights) = compare_routing(exp_ids.len(), got, expected, TOL);
    let detail = ids.first_failure.map(|m| m.detail).unwrap_or_default();
    (ids.passed, weights.passed, detail)
}

#[test]
fn ids_compare_as_sets_and_weights_follow_their_id() {
    // Same set in another order, weights moved with their ids: passes.
    let (ids, weights, _) = route(&[7, 3, 5], &[0.2, 3.0, 5.0], &[3, 5, 7], &[3.0, 5.0, 0.2]);
    assert!(ids && weights);
    // Same ids, weights compared by position would pass, by id they do not.
    let (ids, weights, _) = route(&[3, 5], &[5.0, 3.0], &[5, 3], &[5.0, 3.0]);
    assert!(ids && !weights);
}

#[test]
fn a_duplicate_or_missing_id_fails_its_row() {
    let (ids, _, detail) = route(&[3, 3], &[1.0, 1.0], &[3, 4], &[1.0, 1.0]);
    assert!(!ids);
    assert!(
        detail.contains("duplicate id 3") && detail.contains("missing [4]"),
        "{detail}"
    );
    let (ids, weights, detail) = route(&[3, 9], &[1.0, 1.0], &[3, 4], &[1.0, 1.0]);
    assert!(
        !ids && weights,
        "the weight of a missing id is not compared"
    );
    assert!(detail.contains("missing [4], unexpected [9]"), "{detail}");
}

#[test]
fn routing_failures_name_the_row() {
    let got = Routing {
        ids: &[0, 1, 2, 3, 4, 6],
        weights: &[1.0; 6],
    };
    let expected = Routing {
        ids: &[1, 0, 2, 3, 4, 5],
        weights: &[1.0; 6],
    };
    let (ids, weights) = compare_routing(2, got, expected, TOL);
    assert_eq!((ids.checked, ids.failed), (3, 1));
    assert_eq!(ids.worst_index, Some(vec![2]));
    assert!(ids
        .first_failure
        .unwrap()
        .detail
        .starts_with("row 2: missing [5], unexpected [6]"));
    assert_eq!((weights.checked, weights.passed), (5, true));
}

#[test]
fn bytes_compare_exactly_and_name_the_first_differing_byte() {
    let shape = Shape::new([2, 4]);
    let exp = [1u8, 2, 3, 4, 5, 6, 7, 8];
    let c = compare_bytes("kv_fp8", &shape, &exp, &exp);
    assert!(c.passed && c.failed == 0 && c.checked == 8);
    let mut got = exp;
    got[5] = 0x80;
    got[7] = 0;
    let c = compare_bytes("kv_fp8", &shape, &got, &exp);
    assert!(!c.passed);
    assert_eq!(c.failed, 2);
    let first = c.first_failure.unwrap();
    assert_eq!(first.index, vec![1, 1]);
    assert!(
        first.detail.contains("byte: 5 (row 1, byte 1 of the row)")
            && first.detail.contains("got 0x80, expected 0x06"),
        "{}",
        first.detail
    );
    // A short output is a difference, not a pass.
    let c = compare_bytes("kv_fp8", &shape, &exp[..6], &exp);
    assert!(!c.passed && c.failed == 2, "{c:?}");
    assert!(c.first_failure.unwrap().detail.contains("got nothing"));
}

/// Indexer rows: (indices pass, scores pass, first failure detail).
fn topk(got_i: &[i32], got_s: &[f32], exp_i: &[i32], exp_s: &[f32]) -> (bool, bool, String) {
    let (i, s) = compare_topk_indices(
        exp_i.len(),
        Routing {
            ids: got_i,
            weights: got_s,
        },
        Routing {
            ids: exp_i,
            weights: exp_s,
        },
        TOL,
    );
    let detail = (i.first_failure.or(s.first_failure)).map_or(String::new(), |m| m.detail);
    (i.passed, s.passed, detail)
}

#[test]
fn indexer_slots_compare_as_sets_with_padding_counted_and_scores_by_slot() {
    let ninf = f32::NEG_INFINITY;
    let exp_i = [7, 3, -1, -1];
    let exp_s = [9.0, 4.0, ninf, ninf];
    // Same set in another order, scores following their slot.
    let (i, s, _) = topk(&[3, 7, -1, -1], &[4.0, 9.0, ninf, ninf], &exp_i, &exp_s);
    assert!(i && s);
    // A score given to the wrong slot fails.
    let (i, s, d) = topk(&[3, 7, -1, -1], &[9.0, 4.0, ninf, ninf], &exp_i, &exp_s);
    assert!(i && !s, "{d}");
    // A padding entry where a slot was expected: the count of -1 differs.
    let (i, _, d) = topk(&[7, -1, -1, -1], &[9.0, ninf, ninf, ninf], &exp_i, &exp_s);
    assert!(!i && d.contains("3 entries -1, expected 2"), "{d}");
    // A padding score must be -inf.
    let (i, s, _) = topk(&[7, 3, -1, -1], &[9.0, 4.0, ninf, 0.0], &exp_i, &exp_s);
    assert!(i && !s);
    // A repeated slot fails even when the padding count matches.
    let (i, _, d) = topk(&[7, 7, -1, -1], &[9.0, 9.0, ninf, ninf], &exp_i, &exp_s);
    assert!(!i && d.contains("duplicate id 7"), "{d}");
}
