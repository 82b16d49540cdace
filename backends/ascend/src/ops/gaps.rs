//! Contract v2 that this backend does not map, and why: each reason names the CANN op that
//! comes closest and the documented limit that stops it (hicann/ops-transformer paths, or
//! the CANN aclnn pages cited in `loader.rs`). [`notes`] go to `info().notes` (`moemla
//! devices`). These are all v2 formats the backend does not list, so `moemla_core::ops`
//! refuses them before the backend sees the call; [`NO_FP8_CACHE_WRITE`] is also the reason
//! of the `Unsupported` a direct `Backend::mla_cache_write` call gets.

/// Why no v2 op writes or reads the 656-byte `fp8_ds_v32` row.
pub const NO_FP8_CACHE_WRITE: &str = "no CANN op writes the 656-byte fp8_ds_v32 row (e4m3 codes, four f32 tile scales, bf16 rope), and Atlas A2/A3 have no FLOAT8_E4M3FN tensors (aclnnScatterPaKvCache, attention/scatter_pa_kv_cache/docs/aclnnScatterPaKvCache.md, refuses FLOAT8_E4M3FN and HIFLOAT8 on A2/A3); composing the quantiser (per-tile amax, power-of-two scale, round-to-nearest-even e4m3 encode, byte packing) from aclnn ops is not written yet (reading the row is: mla_decode / mla_sparse_decode)";

/// Why FP8 experts are not mapped.
pub const NO_FP8_EXPERTS: &str = "w8a8 (activation_quant fp8_block128): no FP8 matmul on Atlas A2/A3 (aclnnGroupedMatmulV4, gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md, quantises INT8 and antiquantises INT4/INT8 per channel or group there; FP8/MXFP8 is Ascend 950 only), and the per-token 128-group e4m3 activation quantiser is not composed from aclnn ops yet (w8a16 is mapped: weights dequantized first)";

/// Why mla_kv_quantize is not mapped.
pub const NO_KV_QUANTIZE: &str = NO_FP8_CACHE_WRITE;

/// Everything v2 this backend leaves Unsupported, with the reason, for `info().notes`.
pub fn notes() -> Vec<String> {
    [
        ("moe_experts fp8_activations", NO_FP8_EXPERTS),
        ("mla_kv_quantize", NO_KV_QUANTIZE),
        ("mla_cache_write fp8_ds_v32", NO_FP8_CACHE_WRITE),
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
        assert_eq!(notes.len(), 3);
        for n in &notes {
            assert!(n.starts_with("unsupported: "), "{n}");
            assert!(n.contains("aclnn"), "{n} names no CANN op");
        }
    }
}
