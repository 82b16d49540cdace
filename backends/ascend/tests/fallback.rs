//! A CANN whose fused op refuses a call at its first phase: mla_sparse_decode and
//! dsa_indexer_topk run the composed path instead, count the fallback, and still match the
//! golden-v2 references.
//!
//! The older CANN is the emulator's `MOEMLA_CANN_EMULATOR_CANN=2025-12` (aclnnLightningIndexer
//! as its Dec 2025 tiling: weights in the query dtype, sparseCount <= 2048, so it refuses
//! every call of the fused path, whose weights are F32; aclnnSparseFlashAttention refusing
//! returnSoftmaxLse outside training, as its page words it). The variable is process-wide,
//! so this binary holds one test.

mod common;

const OLDER: &str = "MOEMLA_CANN_EMULATOR_CANN";

#[test]
fn fused_ops_refused_by_an_older_cann_fall_back_to_the_composed_path() {
    if std::env::var_os("MOEMLA_ASCEND_TEST_REAL").is_some_and(|v| v == "1") {
        eprintln!("skipped: the older CANN is modelled by the emulator only");
        return;
    }
    std::env::set_var(OLDER, "2025-12");
    // The golden-v2 cases the fused ops serve on the current CANN (tests/sparse_paths.rs):
    // SFA takes one mla_sparse_decode case per dtype, LI two bf16 and one f16 indexer case.
    for (dtype, eligible) in [("f16", 1), ("bf16", 1)] {
        let (n, paths) = common::golden_v2("mla_sparse_decode", dtype);
        assert_eq!(
            (
                paths.sparse_attention_fused,
                paths.sparse_attention_fallback,
                paths.sparse_attention_composed
            ),
            (0, eligible, n - eligible),
            "mla_sparse_decode {dtype}: {paths:?}"
        );
    }
    for (dtype, eligible) in [("bf16", 2), ("f16", 1)] {
        let (n, paths) = common::golden_v2("dsa_indexer_topk", dtype);
        assert_eq!(
            (
                paths.indexer_fused,
                paths.indexer_fallback,
                paths.indexer_composed
            ),
            (0, eligible, n - eligible),
            "dsa_indexer_topk {dtype}: {paths:?}"
        );
    }
    std::env::remove_var(OLDER);
    // The same cases on the current CANN: fused again, no fallback.
    let (_, paths) = common::golden_v2("dsa_indexer_topk", "bf16");
    assert_eq!((paths.indexer_fused, paths.indexer_fallback), (2, 0));
    let (_, paths) = common::golden_v2("mla_sparse_decode", "bf16");
    assert_eq!(
        (
            paths.sparse_attention_fused,
            paths.sparse_attention_fallback
        ),
        (1, 0)
    );
}
