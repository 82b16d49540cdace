//! Comparisons with the contract's tolerances: `|got - exp| <= atol + rtol * |exp|`, NaN
//! never passes, infinities must match exactly.

use crate::reference::RouteRef;
use moemla_core::DType;

/// An absolute and relative tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// Absolute part.
    pub atol: f64,
    /// Relative part (of the expected value).
    pub rtol: f64,
}

impl Tol {
    /// The contract's default for a run dtype: F32 1e-4/1e-4, F16 2e-3/2e-3, BF16 2e-2/2e-2.
    pub fn of(dtype: DType) -> Tol {
        let t = match dtype {
            DType::F16 => 2e-3,
            DType::BF16 => 2e-2,
            _ => 1e-4,
        };
        Tol { atol: t, rtol: t }
    }

    /// Whether `got` passes for `exp`.
    pub fn accepts(self, got: f64, exp: f64) -> bool {
        if exp.is_infinite() || got.is_infinite() {
            return got == exp;
        }
        (got - exp).abs() <= self.atol + self.rtol * exp.abs()
    }
}

/// Elementwise check of `got` against `exp`; the error lists the mismatch count and the
/// first few mismatches.
pub fn check_close(what: &str, got: &[f32], exp: &[f64], tol: Tol) -> Result<(), String> {
    if got.len() != exp.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            exp.len()
        ));
    }
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| !tol.accepts(got[i] as f64, exp[i]))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = bad
        .iter()
        .take(5)
        .map(|&i| format!("[{i}] got {} expected {}", got[i], exp[i]))
        .collect();
    Err(format!(
        "{what}: {} of {} values outside atol {} rtol {}: {}",
        bad.len(),
        got.len(),
        tol.atol,
        tol.rtol,
        shown.join(", ")
    ))
}

/// Routing ids check: per token the ids must equal the reference set.
pub fn check_route_ids(got_ids: &[i32], r: &RouteRef) -> Result<(), String> {
    for (t, ref_ids) in r.ids.iter().enumerate() {
        let k = ref_ids.len();
        let ids = &got_ids[t * k..(t + 1) * k];
        let mut got_set: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
        let mut ref_set: Vec<i64> = ref_ids.iter().map(|&v| v as i64).collect();
        got_set.sort_unstable();
        ref_set.sort_unstable();
        if got_set != ref_set {
            return Err(format!(
                "token {t}: topk_ids {ids:?}, expected the set {ref_ids:?} (margin {:.3e})",
                r.margin[t]
            ));
        }
    }
    Ok(())
}

/// Routing check: per token the ids must equal the reference set ([`check_route_ids`]), and
/// each weight must match the reference weight of the same id.
pub fn check_route(got_ids: &[i32], got_w: &[f32], r: &RouteRef, tol: Tol) -> Result<(), String> {
    check_route_ids(got_ids, r)?;
    for (t, (ref_ids, ref_w)) in r.ids.iter().zip(&r.weights).enumerate() {
        let k = ref_ids.len();
        let ids = &got_ids[t * k..(t + 1) * k];
        for (j, &id) in ids.iter().enumerate() {
            let exp = ref_w[ref_ids
                .iter()
                .position(|&e| e as i32 == id)
                .expect("same set")];
            let got = got_w[t * k + j] as f64;
            if !tol.accepts(got, exp) {
                return Err(format!(
                    "token {t}: weight of expert {id} is {got}, expected {exp}"
                ));
            }
        }
    }
    Ok(())
}

/// Panics with `msg` if `r` is an error (for use in plain tests).
pub fn ensure(r: Result<(), String>) {
    if let Err(msg) = r {
        panic!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_atol_plus_rtol_times_expected() {
        let t = Tol::of(DType::F32);
        assert!(t.accepts(1.0002, 1.0));
        assert!(!t.accepts(1.00021, 1.0));
        assert!(!t.accepts(f64::NAN, 1.0));
        assert!(t.accepts(f64::NEG_INFINITY, f64::NEG_INFINITY));
        assert!(!t.accepts(f64::INFINITY, f64::NEG_INFINITY));
        assert!(!t.accepts(0.0, f64::NEG_INFINITY));
    }

    #[test]
    fn route_ids_compare_as_sets_with_weights_by_id() {
        let r = RouteRef {
            ids: vec![vec![3, 1]],
            weights: vec![vec![0.7, 0.3]],
            scores: vec![],
            kept_groups: vec![],
            margin: vec![1.0],
        };
        let tol = Tol::of(DType::F32);
        assert!(check_route(&[1, 3], &[0.3, 0.7], &r, tol).is_ok());
        assert!(check_route(&[1, 3], &[0.7, 0.3], &r, tol).is_err());
        assert!(check_route(&[1, 2], &[0.3, 0.7], &r, tol).is_err());
        assert!(check_close("o", &[1.0, f32::NAN], &[1.0, 1.0], tol).is_err());
    }
}
