//! Op parameters, as golden files carry them (`params` JSON in the safetensors metadata).

use serde::{Deserialize, Serialize};

/// How router logits become affinity scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreFunc {
    /// `sigmoid(logit)` per expert (DeepSeek-V3).
    Sigmoid,
    /// `softmax(logits)` over the experts of a token (DeepSeek-V2).
    Softmax,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupSelect {
    /// The group's best selection score (DeepSeek-V2).
    Max,
    /// The sum of the group's two best selection scores (DeepSeek-V3).
    Top2Sum,
}

/// Parameters of `moe_route`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteParams {
    /// Score function applied to the logits.
    pub score_func: ScoreFunc,
    /// Experts selected per token (`k`).
    pub top_k: usize,
    /// Number of expert groups (1 = no group limit). Must divide E.
    pub n_group: usize,
    /// Groups kept per token (<= n_group).
    pub topk_group: usize,
    /// How groups are scored.
    pub group_select: GroupSelect,
    /// Whether selected weights are divided by their sum.
    pub renormalize: bool,
    /// Final multiplier of the weights (DeepSeek-V3: 2.5; V2: 16).
    pub routed_scaling_factor: f64,
}

impl RouteParams {
    /// DeepSeek-V3 / R1: 256 experts, top-8, 8 groups keep 4, sigmoid, top-2-sum group
    /// score, renormalised, scaled by 2.5 (use with a per-expert bias).
    pub fn deepseek_v3() -> Self {
        RouteParams {
            score_func: ScoreFunc::Sigmoid,
            top_k: 8,
            n_group: 8,
            topk_group: 4,
            group_select: GroupSelect::Top2Sum,
            renormalize: true,
            routed_scaling_factor: 2.5,
        }
    }

    /// DeepSeek-V2: 160 experts, top-6, 8 groups keep 3, softmax, max group score, no
    /// renormalisation, scaled by 16.
    pub fn deepseek_v2() -> Self {
        RouteParams {
            score_func: ScoreFunc::Softmax,
            top_k: 6,
            n_group: 8,
            topk_group: 3,
            group_select: GroupSelect::Max,
            renormalize: false,
            routed_scaling_factor: 16.0,
        }
    }

    /// DeepSeek-V2-Lite: 64 experts, top-6, no groups, softmax, no renormalisation, scale 1.
    pub fn deepseek_v2_lite() -> Self {
        RouteParams {
            score_func: ScoreFunc::Softmax,
            top_k: 6,
            n_group: 1,
            topk_group: 1,
            group_select: GroupSelect::Max,
            renormalize: false,
            routed_scaling_factor: 1.0,
        }
    }
}

/// Parameters of `moe_experts` (none in v1: the activation is always SwiGLU).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertsParams {}

/// Parameters of `mla_decode`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlaDecodeParams {
    /// Multiplier of `q . k` before the softmax. Always explicit (DeepSeek-V3 with YaRN:
    /// [`MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE`]).
    pub softmax_scale: f64,
    /// Bottom-right aligned causal mask over the `Sq` queries.
    pub causal: bool,
    /// `Dv`: the first `Dv` columns of each cache row are the value (DeepSeek: 512).
    pub head_dim_v: usize,
}

impl MlaDecodeParams {
    /// DeepSeek-V3's softmax scale with YaRN: `192^-0.5 * (0.1 * ln(40) + 1)^2`.
    pub const DEEPSEEK_V3_SOFTMAX_SCALE: f64 = 0.1352337788608801;

    /// DeepSeek-V3 decode: scale with YaRN, `Dv` 512, causal.
    pub fn deepseek_v3() -> Self {
        MlaDecodeParams {
            softmax_scale: Self::DEEPSEEK_V3_SOFTMAX_SCALE,
            causal: true,
            head_dim_v: 512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_params_parse_from_golden_json() {
        let json = r#"{"score_func":"sigmoid","top_k":8,"n_group":8,"topk_group":4,
            "group_select":"top2_sum","renormalize":true,"routed_scaling_factor":2.5}"#;
        let p: RouteParams = serde_json::from_str(json).unwrap();
        assert_eq!(p, RouteParams::deepseek_v3());
    }

    #[test]
    fn yarn_scale_matches_its_formula() {
        let s = 192f64.powf(-0.5) * (0.1 * 40f64.ln() + 1.0).powi(2);
        assert!((s - MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE).abs() < 1e-15);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"softmax_scale":0.1,"causal":true,"head_dim_v":512,"extra":1}"#;
        assert!(serde_json::from_str::<MlaDecodeParams>(json).is_err());
    }
}
