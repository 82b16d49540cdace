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
    /// `sqrt(softplus(logit))` per expert, `softplus(x) = x` above 20 else `ln(1 + e^x)`
    /// (DeepSeek-V4; contract v2).
    Sqrtsoftplus,
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

/// Whether `moe_experts` quantizes its activations (contract v2 `activation_quant`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationQuant {
    /// Activations stay in the run dtype / f32 (w8a16 with FP8 weights; v1's behaviour).
    #[default]
    #[serde(rename = "none")]
    None,
    /// Before each GEMM, every activation row is quantized to e4m3 per group of 128
    /// (w8a8, DeepGEMM's fp8 path). Requires FP8 weights.
    #[serde(rename = "fp8_block128")]
    Fp8Block128,
}

/// How `fp8_block128` activation scales are formed (contract v2 `activation_scale`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivationScale {
    /// `amax / 448` as computed in f32.
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// Rounded up to a power of two (UE8M0, DeepGEMM on SM100 and V3.2's scale format).
    #[serde(rename = "ue8m0")]
    Ue8m0,
}

impl ActivationScale {
    /// The matching [`crate::fp8::ScaleMode`].
    pub fn mode(self) -> crate::fp8::ScaleMode {
        match self {
            ActivationScale::F32 => crate::fp8::ScaleMode::F32,
            ActivationScale::Ue8m0 => crate::fp8::ScaleMode::Ue8m0,
        }
    }
}

/// Parameters of `moe_experts`. v1 cases carry `{}`: every field has a default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpertsParams {
    /// Activation quantization (`"none"` by default; `"fp8_block128"` needs FP8 weights).
    pub activation_quant: ActivationQuant,
    /// Scale format of `fp8_block128` activations (ignored otherwise).
    pub activation_scale: ActivationScale,
    /// SwiGLU clamp `c` (DeepSeek-V4: 10): `silu(min(g, c)) * clamp(u, -c, c)`. `None`
    /// (JSON `null` or absent): no clamp. Must be finite and > 0 as an f32.
    pub swiglu_limit: Option<f64>,
}

/// The layout of a latent KV cache (contract v2 `kv_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvFormat {
    /// Rows of `Dqk` values in the run dtype (v1).
    #[default]
    #[serde(rename = "dense")]
    Dense,
    /// FlashMLA's 656-byte FP8 rows (U8 `[.., 656]`; Dqk 576, Dv 512, one kv head): see
    /// [`crate::fp8::quantize_ds_v32_row`].
    #[serde(rename = "fp8_ds_v32")]
    Fp8DsV32,
}

impl KvFormat {
    /// The contract's name (`"dense"`, `"fp8_ds_v32"`).
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::Dense => "dense",
            KvFormat::Fp8DsV32 => "fp8_ds_v32",
        }
    }
}

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
    /// The cache layout (default dense; `fp8_ds_v32`: a U8 cache of 656-byte rows).
    #[serde(default)]
    pub kv_format: KvFormat,
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
            kv_format: KvFormat::Dense,
        }
    }
}

/// Parameters of `mla_kv_quantize`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvQuantizeParams {
    /// The format to write: must be `fp8_ds_v32`.
    pub kv_format: KvFormat,
}

/// Parameters of `mla_cache_write`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheWriteParams {
    /// The cache layout (default dense): rows are copied in the run dtype, or quantized to
    /// `fp8_ds_v32` rows as `mla_kv_quantize` writes them.
    #[serde(default)]
    pub kv_format: KvFormat,
}

/// Parameters of `mla_sparse_decode`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseDecodeParams {
    /// Multiplier of `q . k` before the softmax (finite, > 0 as an f32).
    pub softmax_scale: f64,
    /// `Dv`: the first `Dv` columns of each cache row are the value.
    pub head_dim_v: usize,
    /// The cache layout (default dense).
    #[serde(default)]
    pub kv_format: KvFormat,
}

impl SparseDecodeParams {
    /// DeepSeek-V3.2 over the FP8 cache: the YaRN softmax scale, `Dv` 512, `fp8_ds_v32`.
    pub fn deepseek_v32() -> Self {
        SparseDecodeParams {
            softmax_scale: MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE,
            head_dim_v: 512,
            kv_format: KvFormat::Fp8DsV32,
        }
    }
}

/// Parameters of `dsa_indexer_topk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexerParams {
    /// Positions kept per query (DeepSeek-V3.2: 2048); >= 1.
    pub top_k: usize,
    /// Bottom-right aligned causal limit over the `Sq` queries, as in `mla_decode`.
    pub causal: bool,
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
    fn v1_params_parse_with_v2_defaults() {
        let p: ExpertsParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, ExpertsParams::default());
        assert_eq!(p.activation_quant, ActivationQuant::None);
        assert_eq!(p.activation_scale, ActivationScale::F32);
        assert_eq!(p.swiglu_limit, None);
        let json = r#"{"softmax_scale":0.1352337788608801,"causal":true,"head_dim_v":512}"#;
        let p: MlaDecodeParams = serde_json::from_str(json).unwrap();
        assert_eq!(p, MlaDecodeParams::deepseek_v3());
        assert_eq!(p.kv_format, KvFormat::Dense);
    }

    #[test]
    fn v2_params_parse_from_golden_json() {
        let json = r#"{"activation_quant":"fp8_block128","activation_scale":"ue8m0",
            "swiglu_limit":10.0}"#;
        let p: ExpertsParams = serde_json::from_str(json).unwrap();
        assert_eq!(p.activation_quant, ActivationQuant::Fp8Block128);
        assert_eq!(p.activation_scale, ActivationScale::Ue8m0);
        assert_eq!(p.swiglu_limit, Some(10.0));
        let p: ExpertsParams =
            serde_json::from_str(r#"{"activation_quant":"none","swiglu_limit":null}"#).unwrap();
        assert_eq!(p, ExpertsParams::default());
        let json = r#"{"score_func":"sqrtsoftplus","top_k":6,"n_group":1,"topk_group":1,
            "group_select":"max","renormalize":true,"routed_scaling_factor":1.5}"#;
        let p: RouteParams = serde_json::from_str(json).unwrap();
        assert_eq!(p.score_func, ScoreFunc::Sqrtsoftplus);
        let json = r#"{"softmax_scale":0.125,"head_dim_v":48}"#;
        let p: SparseDecodeParams = serde_json::from_str(json).unwrap();
        assert_eq!(p.kv_format, KvFormat::Dense);
        let json = r#"{"softmax_scale":0.1352337788608801,"head_dim_v":512,
            "kv_format":"fp8_ds_v32"}"#;
        let p: SparseDecodeParams = serde_json::from_str(json).unwrap();
        assert_eq!(p, SparseDecodeParams::deepseek_v32());
        let p: KvQuantizeParams = serde_json::from_str(r#"{"kv_format":"fp8_ds_v32"}"#).unwrap();
        assert_eq!(p.kv_format, KvFormat::Fp8DsV32);
        let p: IndexerParams = serde_json::from_str(r#"{"top_k":2048,"causal":true}"#).unwrap();
        assert_eq!((p.top_k, p.causal), (2048, true));
    }

    #[test]
    fn unknown_v2_values_are_rejected() {
        for json in [
            r#"{"activation_quant":"int8"}"#,
            r#"{"activation_scale":"e8m0"}"#,
            r#"{"swiglu_limit":"10"}"#,
        ] {
            assert!(
                serde_json::from_str::<ExpertsParams>(json).is_err(),
                "{json}"
            );
        }
        let json = r#"{"softmax_scale":0.1,"head_dim_v":8,"kv_format":"fp8"}"#;
        assert!(serde_json::from_str::<SparseDecodeParams>(json).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"softmax_scale":0.1,"causal":true,"head_dim_v":512,"extra":1}"#;
        assert!(serde_json::from_str::<MlaDecodeParams>(json).is_err());
    }
}
