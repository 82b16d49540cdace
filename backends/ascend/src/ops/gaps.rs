//! Contract v2 that this backend does not map, and why: each reason names the CANN op that
//! comes closest and the documented limit that stops it (hicann/ops-transformer paths, or
//! the CANN aclnn pages cited in `loader.rs`). [`notes`] go to `info().notes` (`moemla
//! devices`). These are all v2 formats the backend does not list, so `moemla_core::ops`
//! refuses them before the backend sees the call; [`NO_FP8_CACHE_WRITE`] is also the reason
//! of the `Unsupported` a direct `Backend::mla_cache_write` call gets.

/// Why no v2 op writes or reads the 656-byte `fp8_ds_v32` row.
pub const NO_FP8_CACHE_WRITE: &str = "no CANN op writes the 656-byte fp8_ds_v32 row (e4m3 codes, four f32 tile scales, bf16 rope), and Atlas A2/A3 have no FLOAT8_E4M3FN tensors (aclnnScatterPaKvCache, attention/scatter_pa_kv_cache/docs/aclnnScatterPaKvCache.md, refuses FLOAT8_E4M3FN and HIFLOAT8 on A2/A3)";

/// Why mla_decode over the FP8 cache is not mapped.
pub const NO_FP8_CACHE_DECODE: &str = "aclnnFusedInferAttentionScoreV3's MLA mode reads FLOAT16/BFLOAT16 caches only (fused_infer_attention_score_tiling_check_feature.cpp CheckFeatureMlaNoQuantDtype; no quantised MLA path for this row layout), and Atlas A2/A3 have no FLOAT8_E4M3FN tensors";

/// Why mla_sparse_decode over the FP8 cache is not mapped (the dense cache is: composed
/// ops, `mla_sparse_decode.rs`).
pub const NO_SPARSE_DECODE_FP8: &str = "the fp8_ds_v32 cache: no CANN op dequantises the 656-byte row (e4m3 codes with f32 tile scales; Atlas A2/A3 have no FLOAT8_E4M3FN tensors), and aclnnSparseFlashAttention (attention/sparse_flash_attention/docs/aclnnSparseFlashAttention.md) reads FLOAT16/BFLOAT16 key/value only; the dense cache is mapped (composed ops), not onto aclnnSparseFlashAttention, whose documented limits (D 512 + rope 64, F16/BF16, no sink input, softmaxMax/Sum only without a paged layout, valid indices first) exclude most of the contract";

/// Why FP8 experts are not mapped.
pub const NO_FP8_EXPERTS: &str = "no FP8 on Atlas A2/A3: aclnnGroupedMatmulV4 (gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md) quantises INT8 (static/dynamic) and antiquantises INT4/INT8 weights per channel or group on A2/A3; FP8/MXFP8 is Ascend 950 only, and no A2/A3 op dequantises e4m3 weights with 128x128 block scales";

/// Why mla_kv_quantize is not mapped.
pub const NO_KV_QUANTIZE: &str = NO_FP8_CACHE_WRITE;

/// Everything v2 this backend leaves Unsupported, with the reason, for `info().notes`.
pub fn notes() -> Vec<String> {
    [
        ("moe_experts fp8_weights / fp8_activations", NO_FP8_EXPERTS),
        ("mla_decode fp8_ds_v32", NO_FP8_CACHE_DECODE),
        ("mla_kv_quantize", NO_KV_QUANTIZE),
        ("mla_cache_write fp8_ds_v32", NO_FP8_CACHE_WRITE),
        ("mla_sparse_decode fp8_ds_v32", NO_SPARSE_DECODE_FP8),
    ]
    .iter()
    .map(|(what, why)| format!("unsupported: {what}: {why}"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unmapped_v2_item_has_a_note_naming_a_cann_source() {
        let notes = notes();
        assert_eq!(notes.len(), 5);
        for n in &notes {
            assert!(n.starts_with("unsupported: "), "{n}");
            assert!(n.contains("aclnn"), "{n} names no CANN op");
        }
    }
}
