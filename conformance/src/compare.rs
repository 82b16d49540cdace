//! The contract's comparison rules.
//!
//! - Floats, elementwise: `|got - exp| <= atol + rtol * |exp|`. NaN never passes; an
//!   infinity passes only against the same infinity.
//! - Routing: per token row, `topk_ids` are compared as a set (a duplicate or a missing id
//!   fails the row) and each expected weight is compared with the weight the backend gave
//!   the same expert id, wherever it put it in the row. `dsa_indexer_topk` alike: per
//!   query row, `topk_indices` as a set (its -1 padding as a count) and `topk_scores`
//!   matched by index.
//! - Bytes (U8 outputs): exact, byte for byte; a failure names the first differing byte.
//!
//! Every comparison reports its largest absolute and relative errors and the worst
//! element (the one furthest beyond its allowed error), and for a failure the first and the
//! worst failing element.

use crate::tolerance::Tolerance;
use moemla_core::Shape;
use serde::Serialize;

/// One element (or routing row) that is out of tolerance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mismatch {
    /// Index in the expected output (per dimension; a routing row for `topk_ids`).
    pub index: Vec<usize>,
    /// The backend's value (`null` in JSON when NaN or infinite; see `detail`).
    pub got: f64,
    /// The expected value.
    pub expected: f64,
    /// `atol + rtol * |expected|` (0 for exact comparisons).
    pub allowed: f64,
    /// Human-readable explanation ("got NaN", "row 3: missing id 17 ...").
    pub detail: String,
}

/// The comparison of one output argument.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The output argument (`o`, `lse`, `y`, `topk_ids`, `topk_weights`).
    pub output: String,
    /// The tolerance applied (`None`: exact, for ids).
    pub tolerance: Option<Tolerance>,
    /// Whether every element (row) is within tolerance.
    pub passed: bool,
    /// Elements (rows, for ids) compared.
    pub checked: usize,
    /// Elements (rows) out of tolerance.
    pub failed: usize,
    /// Largest `|got - exp|` (infinite when a NaN or a wrong infinity was met; `None` for
    /// exact comparisons).
    pub max_abs: Option<f64>,
    /// Largest `|got - exp| / |exp|` (`None` for exact comparisons).
    pub max_rel: Option<f64>,
    /// The exact worst ratio `|got - exp| / (atol + rtol * |exp|)` over the compared
    /// elements (below 1 when every element passes; 0 for an exact match). Exact
    /// comparisons (ids, bytes) are 0 when they match and infinite (`null` in JSON) when
    /// they do not.
    pub worst_ratio: f64,
    /// Index of the worst element: the largest error relative to its allowance, or for ids
    /// the first failing row (`None` if there is nothing to point at).
    pub worst_index: Option<Vec<usize>>,
    /// The first failing element in row-major order.
    pub first_failure: Option<Mismatch>,
    /// The failing element furthest beyond its allowance.
    pub worst_failure: Option<Mismatch>,
}

/// Running maxima and failures of an elementwise comparison.
struct Acc {
    cmp: Comparison,
    worst_ratio: f64,
}

impl Acc {
    fn new(output: &str, tolerance: Tolerance) -> Acc {
        Acc {
            cmp: Comparison {
                output: output.to_string(),
                tolerance: Some(tolerance),
                passed: true,
                checked: 0,
                failed: 0,
                max_abs: Some(0.0),
                max_rel: Some(0.0),
                worst_ratio: 0.0,
                worst_index: None,
                first_failure: None,
                worst_failure: None,
            },
            worst_ratio: -1.0,
        }
    }

    /// Compares one element at `index`; `what` prefixes the failure detail.
    fn push(&mut self, index: Vec<usize>, got: f64, exp: f64, what: &str) {
        let tol = self
            .cmp
            .tolerance
            .expect("elementwise comparisons carry a tolerance");
        let allowed = tol.allowed(exp);
        let (abs, rel) = errors(got, exp);
        // An infinite expected value allows an infinite error: only an exact match passes.
        let pass = got == exp || (exp.is_finite() && abs <= allowed);
        let ratio = if abs == 0.0 {
            0.0
        } else if exp.is_finite() && allowed > 0.0 {
            abs / allowed
        } else {
            f64::INFINITY
        };
        let c = &mut self.cmp;
        c.checked += 1;
        c.max_abs = c.max_abs.map(|m| m.max(abs));
        c.max_rel = c.max_rel.map(|m| m.max(rel));
        let worse = ratio > self.worst_ratio;
        if worse {
            self.worst_ratio = ratio;
            c.worst_ratio = ratio;
            c.worst_index = Some(index.clone());
        }
        if pass {
            return;
        }
        c.passed = false;
        c.failed += 1;
        let mismatch = Mismatch {
            index,
            got,
            expected: exp,
            allowed,
            detail: format!("{what}got {got:.6e}, expected {exp:.6e}, allowed error {allowed:.2e}"),
        };
        if c.first_failure.is_none() {
            c.first_failure = Some(mismatch.clone());
        }
        if worse || c.worst_failure.is_none() {
            c.worst_failure = Some(mismatch);
        }
    }
}

/// Absolute and relative error of one element; infinite when NaN is involved or the
/// infinities differ, zero when the values are identical (equal infinities included).
fn errors(got: f64, exp: f64) -> (f64, f64) {
    if got == exp {
        return (0.0, 0.0);
    }
    let abs = (got - exp).abs();
    if abs.is_nan() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let rel = if exp == 0.0 {
        f64::INFINITY
    } else {
        abs / exp.abs()
    };
    (abs, rel)
}

/// Compares a float output elementwise. `got` and `expected` are row-major over `shape`;
/// an element `got` lacks counts as NaN (a failure).
pub fn compare_values(
    output: &str,
    shape: &Shape,
    got: &[f32],
    expected: &[f32],
    tolerance: Tolerance,
) -> Comparison {
    let mut acc = Acc::new(output, tolerance);
    for (i, &e) in expected.iter().enumerate() {
        let g = got.get(i).map_or(f64::NAN, |&g| g as f64);
        acc.push(shape.unravel(i), g, e as f64, "");
    }
    acc.cmp
}

/// Compares a U8 output byte for byte. `got` and `expected` are row-major over `shape`; a
/// byte `got` lacks (or an extra one) is a difference. The first differing byte is the
/// first failure; the count of differing bytes is `failed`.
pub fn compare_bytes(output: &str, shape: &Shape, got: &[u8], expected: &[u8]) -> Comparison {
    let mut cmp = Comparison {
        output: output.to_string(),
        tolerance: None,
        passed: true,
        checked: expected.len(),
        failed: 0,
        max_abs: None,
        max_rel: None,
        worst_ratio: 0.0,
        worst_index: None,
        first_failure: None,
        worst_failure: None,
    };
    let row_len = shape.dims().last().copied().unwrap_or(1).max(1);
    for (i, &e) in expected.iter().enumerate() {
        let g = got.get(i).copied();
        if g == Some(e) {
            continue;
        }
        cmp.passed = false;
        cmp.worst_ratio = f64::INFINITY;
        cmp.failed += 1;
        if cmp.first_failure.is_none() {
            let index = shape.unravel(i);
            let got_text = g.map_or_else(|| "nothing".to_string(), |g| format!("{g:#04x}"));
            let mismatch = Mismatch {
                index: index.clone(),
                got: g.map_or(f64::NAN, f64::from),
                expected: f64::from(e),
                allowed: 0.0,
                detail: format!(
                    "first differing byte: {i} (row {}, byte {} of the row): got {got_text}, \
                     expected {e:#04x}",
                    i / row_len,
                    i % row_len
                ),
            };
            cmp.worst_index = Some(index);
            cmp.first_failure = Some(mismatch.clone());
            cmp.worst_failure = Some(mismatch);
        }
    }
    if got.len() != expected.len() {
        cmp.passed = false;
        cmp.worst_ratio = f64::INFINITY;
        let extra = got.len().saturating_sub(expected.len());
        cmp.failed += extra;
        if cmp.first_failure.is_none() {
            let mismatch = Mismatch {
                index: vec![expected.len()],
                got: f64::NAN,
                expected: f64::NAN,
                allowed: 0.0,
                detail: format!("got {} bytes, expected {}", got.len(), expected.len()),
            };
            cmp.first_failure = Some(mismatch.clone());
            cmp.worst_failure = Some(mismatch);
        }
    }
    cmp
}

/// One side of a routing result: `ids` and `weights`, both `[tokens, top_k]` row-major.
#[derive(Clone, Copy, Debug)]
pub struct Routing<'a> {
    /// Expert ids.
    pub ids: &'a [i32],
    /// Their weights.
    pub weights: &'a [f32],
}

/// Compares routing results: ids per row as a set, weights matched by id (a weight `got`
/// lacks counts as NaN, a failure). Returns the `topk_ids` and `topk_weights` comparisons.
pub fn compare_routing(
    top_k: usize,
    got: Routing<'_>,
    expected: Routing<'_>,
    tolerance: Tolerance,
) -> (Comparison, Comparison) {
    let names = ("topk_ids", "topk_weights");
    compare_keyed(names, top_k, got, expected, tolerance, None)
}

/// Compares `dsa_indexer_topk` results: per query row, `indices` as a set of slots (the -1
/// padding compared as a count), scores matched by index (the k-th -1 of a row with the
/// k-th -1 of the other: both -inf). Returns the `topk_indices` and `topk_scores`
/// comparisons.
pub fn compare_topk_indices(
    top_k: usize,
    got: Routing<'_>,
    expected: Routing<'_>,
    tolerance: Tolerance,
) -> (Comparison, Comparison) {
    let names = ("topk_indices", "topk_scores");
    compare_keyed(names, top_k, got, expected, tolerance, Some(-1))
}

/// Keys per row as a set (`padding`, if any, may repeat and is compared as a count),
/// values matched by key.
fn compare_keyed(
    (key_name, value_name): (&str, &str),
    top_k: usize,
    got: Routing<'_>,
    expected: Routing<'_>,
    tolerance: Tolerance,
    padding: Option<i32>,
) -> (Comparison, Comparison) {
    let mut ids = Comparison {
        output: key_name.into(),
        tolerance: None,
        passed: true,
        checked: 0,
        failed: 0,
        max_abs: None,
        max_rel: None,
        worst_ratio: 0.0,
        worst_index: None,
        first_failure: None,
        worst_failure: None,
    };
    let mut weights = Acc::new(value_name, tolerance);
    let rows = got
        .ids
        .chunks(top_k.max(1))
        .zip(expected.ids.chunks(top_k.max(1)));
    for (t, (got_row, exp_row)) in rows.enumerate() {
        ids.checked += 1;
        if let Some(detail) = row_difference(got_row, exp_row, padding) {
            let mismatch = Mismatch {
                index: vec![t],
                got: f64::NAN,
                expected: f64::NAN,
                allowed: 0.0,
                detail: format!("row {t}: {detail}; got {got_row:?}, expected {exp_row:?}"),
            };
            ids.passed = false;
            ids.worst_ratio = f64::INFINITY;
            ids.failed += 1;
            if ids.first_failure.is_none() {
                ids.worst_index = Some(vec![t]);
                ids.first_failure = Some(mismatch.clone());
                ids.worst_failure = Some(mismatch);
            }
        }
        for (j, &id) in exp_row.iter().enumerate() {
            // The n-th occurrence of `id` in the expected row meets its n-th in `got`.
            let nth = exp_row[..j].iter().filter(|&&e| e == id).count();
            let found = (got_row.iter().enumerate())
                .filter(|(_, &g)| g == id)
                .nth(nth)
                .map(|(p, _)| p);
            if let Some(p) = found {
                let weight = |side: &[f32], slot: usize| {
                    let at = t.checked_mul(top_k).and_then(|row| row.checked_add(slot));
                    at.and_then(|i| side.get(i)).map_or(f64::NAN, |&w| w as f64)
                };
                let g = weight(got.weights, p);
                let e = weight(expected.weights, j);
                let what = format!("{key_name} {id} (row {t}): ");
                weights.push(vec![t, j], g, e, &what);
            }
        }
    }
    (ids, weights.cmp)
}

/// Why a row of ids differs from the expected set, or `None` if it is the same set
/// (`padding` may repeat; its counts must agree).
fn row_difference(got: &[i32], expected: &[i32], padding: Option<i32>) -> Option<String> {
    let mut problems = Vec::new();
    for (i, id) in got.iter().enumerate() {
        if Some(*id) != padding && got[..i].contains(id) {
            problems.push(format!("duplicate id {id}"));
        }
    }
    if let Some(pad) = padding {
        let count = |row: &[i32]| row.iter().filter(|&&v| v == pad).count();
        let (g, e) = (count(got), count(expected));
        if g != e {
            problems.push(format!("{g} entries {pad}, expected {e}"));
        }
    }
    let missing: Vec<i32> = (expected.iter().filter(|e| !got.contains(e)).copied()).collect();
    if !missing.is_empty() {
        problems.push(format!("missing {missing:?}"));
    }
    let unexpected: Vec<i32> = (got.iter().filter(|g| !expected.contains(g)).copied()).collect();
    if !unexpected.is_empty() {
        problems.push(format!("unexpected {unexpected:?}"));
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}
