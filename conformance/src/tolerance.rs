//! Tolerances: the contract's defaults per run dtype, and per-case tightening.

use crate::case::Params;
use moemla_core::{ActivationQuant, DType, Op};
use serde::{Deserialize, Serialize};

/// An elementwise tolerance: `|got - exp| <= atol + rtol * |exp|`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f64,
    /// Relative part (times `|exp|`).
    pub rtol: f64,
}

impl Tolerance {
    /// The contract's default for a run dtype: F32 1e-4/1e-4, F16 2e-3/2e-3,
    /// BF16 2e-2/2e-2 (atol/rtol). Other dtypes get the F32 default.
    pub fn default_for(run: DType) -> Tolerance {
        let t = match run {
            DType::F16 => 2e-3,
            DType::BF16 => 2e-2,
            _ => 1e-4,
        };
        Tolerance { atol: t, rtol: t }
    }

    /// The default for a case of `op` with run dtype `run`. `moe_route` computes in f32
    /// from the stored logits and its weights are always F32, so it gets the F32 default
    /// whatever the logits dtype (`docs/conformance.md`, "Tolerance policy").
    pub fn default_for_case(op: Op, run: DType) -> Tolerance {
        match op {
            Op::MoeRoute => Self::default_for(DType::F32),
            _ => Self::default_for(run),
        }
    }

    /// The default of `moe_experts` cases with `activation_quant` `fp8_block128`, whatever
    /// the run dtype: atol 5e-2, rtol 5e-2 (contract v2: quantization-boundary flips of the
    /// activations are legitimate).
    pub const FP8_BLOCK128: Tolerance = Tolerance {
        atol: 5e-2,
        rtol: 5e-2,
    };

    /// The default for a case of `op` with run dtype `run` and parameters `params`:
    /// [`Tolerance::default_for_case`], except [`Tolerance::FP8_BLOCK128`] for w8a8
    /// experts.
    pub fn default_for_params(op: Op, run: DType, params: &Params) -> Tolerance {
        match params {
            Params::MoeExperts(p) if p.activation_quant == ActivationQuant::Fp8Block128 => {
                Self::FP8_BLOCK128
            }
            _ => Self::default_for_case(op, run),
        }
    }

    /// The bound for one expected value.
    pub fn allowed(&self, expected: f64) -> f64 {
        self.atol + self.rtol * expected.abs()
    }

    /// Whether every part is finite, non-negative and no looser than `limit`.
    pub fn tightens(&self, limit: &Tolerance) -> bool {
        let ok = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        ok(self.atol, limit.atol) && ok(self.rtol, limit.rtol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        assert_eq!(Tolerance::default_for(DType::F32).atol, 1e-4);
        assert_eq!(Tolerance::default_for(DType::F16).rtol, 2e-3);
        assert_eq!(Tolerance::default_for(DType::BF16).atol, 2e-2);
        let route = Tolerance::default_for_case(Op::MoeRoute, DType::BF16);
        assert_eq!((route.atol, route.rtol), (1e-4, 1e-4));
        let mla = Tolerance::default_for_case(Op::MlaDecode, DType::BF16);
        assert_eq!((mla.atol, mla.rtol), (2e-2, 2e-2));
    }

    #[test]
    fn w8a8_experts_default_to_5e_2_in_every_dtype() {
        let w8a8 = Params::MoeExperts(moemla_core::ExpertsParams {
            activation_quant: ActivationQuant::Fp8Block128,
            ..Default::default()
        });
        for dtype in DType::FLOATS {
            let t = Tolerance::default_for_params(Op::MoeExperts, dtype, &w8a8);
            assert_eq!((t.atol, t.rtol), (5e-2, 5e-2), "{dtype}");
        }
        let w8a16 = Params::MoeExperts(moemla_core::ExpertsParams::default());
        let t = Tolerance::default_for_params(Op::MoeExperts, DType::F32, &w8a16);
        assert_eq!((t.atol, t.rtol), (1e-4, 1e-4));
        let t = Tolerance::default_for_params(Op::MoeExperts, DType::BF16, &w8a16);
        assert_eq!((t.atol, t.rtol), (2e-2, 2e-2));
    }

    #[test]
    fn a_case_may_only_tighten() {
        let limit = Tolerance::default_for(DType::F16);
        assert!(Tolerance {
            atol: 1e-3,
            rtol: 0.0
        }
        .tightens(&limit));
        assert!(!Tolerance {
            atol: 3e-3,
            rtol: 0.0
        }
        .tightens(&limit));
        assert!(!Tolerance {
            atol: -1.0,
            rtol: 0.0
        }
        .tightens(&limit));
        assert!(!Tolerance {
            atol: f64::NAN,
            rtol: 0.0
        }
        .tightens(&limit));
    }
}
