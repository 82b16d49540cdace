//! `dsa_indexer_topk` on the fake device: `mla_decode`'s check and the indexer's two
//! launches, enqueued only, with the planned arguments; index errors at the next
//! synchronize, `cache_seqlens` first.

use super::*;
use moemla_core::IndexerParams;

/// An indexer call: B = 2, Sq = 2, Hi = 4, Di = 16, 4 blocks of 8, 2 per sequence.
fn indexer(b: &FakeBackend, table: &[i32], seqlens: &[i32], top_k: usize) -> Result<()> {
    let q = f32s(b, &[2, 2, 4, 16]);
    let w = f32s(b, &[2, 2, 4]);
    let k = f32s(b, &[4, 8, 16]);
    let table = i32s(b, &[2, 2], table);
    let seqlens = i32s(b, &[2], seqlens);
    let params = IndexerParams {
        top_k,
        causal: true,
    };
    let out = ops::dsa_indexer_topk(b, &q, &w, &k, &table, &seqlens, &params)?;
    assert_eq!(out.topk_indices.dims(), [2, 2, top_k]);
    assert_eq!(out.topk_indices.dtype(), DType::I32);
    assert_eq!(out.topk_scores.dims(), [2, 2, top_k]);
    assert_eq!(out.topk_scores.dtype(), DType::F32);
    Ok(())
}

#[test]
fn indexer_enqueues_check_scores_and_topk_with_the_planned_arguments() {
    let (b, fake) = backend();
    fake.take_log();
    // Unused table entries (past each length) may hold anything.
    indexer(&b, &[0, 1, 2, 2147480000], &[16, 3], 40).unwrap();
    assert!(!has(&fake.take_log(), "sync"));
    let l = queued(&fake);
    let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "moemla_mla_check",
            "moemla_dsa_indexer_scores_f32",
            "moemla_dsa_indexer_topk"
        ]
    );
    // check: (block_table, cache_seqlens, B, max_blocks, block_size, num_blocks, err)
    assert_eq!(
        l[0].1[2..6],
        [Arg::I32(2), Arg::I32(2), Arg::I32(8), Arg::I32(4)]
    );
    // scores: (q, weights, k_cache, block_table, cache_seqlens, scores, Sq, Hi, Di,
    // num_blocks, block_size, max_blocks, causal, cap)
    assert_eq!(l[1].1.len(), 14);
    assert_eq!(l[1].1[3..5], l[0].1[0..2]);
    assert_eq!(l[1].1[6..], [2, 4, 16, 4, 8, 2, 1, 16].map(Arg::I32));
    // top-k: (scores, block_table, cache_seqlens, cand, cand_stride, topk_indices,
    // topk_scores, Sq, num_blocks, block_size, max_blocks, causal, cap, top_k): the
    // scores the first kernel wrote, 16 candidates (min(40, cap) rounded up).
    assert_eq!(l[2].1.len(), 14);
    assert_eq!(l[2].1[0], l[1].1[5]);
    assert_eq!(l[2].1[1..3], l[0].1[0..2]);
    assert_eq!(l[2].1[4], Arg::I32(16));
    assert_eq!(l[2].1[7..], [2, 4, 8, 2, 1, 16, 40].map(Arg::I32));
    b.synchronize().unwrap();
}

#[test]
fn indexer_index_errors_surface_at_the_next_synchronize_seqlens_first() {
    let (b, _fake) = backend();
    // cache_seqlens[1] = 17 > 2 * 8, and a bad used table entry in batch 0: the length.
    indexer(&b, &[0, 4, 2, 3], &[16, 17], 4).unwrap();
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::DsaIndexerTopk,
            arg: "cache_seqlens",
            index: vec![1],
            value: 17,
            valid: "[0, 16] (max_blocks * block_size)".into(),
        })
    );
    // The first bad used entry, [0, 1] = 4; [1, 1] = -1 is past batch 1's length.
    indexer(&b, &[0, 4, 2, -1], &[9, 8], 4).unwrap();
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::DsaIndexerTopk,
            arg: "block_table",
            index: vec![0, 1],
            value: 4,
            valid: "[0, 4) (num_blocks)".into(),
        })
    );
    b.synchronize().unwrap();
}

#[test]
fn supported_lists_the_indexer_in_every_dtype() {
    let all = crate::runner::supported();
    for dtype in DType::FLOATS {
        assert!(all.contains(&moemla_core::OpSupport::new(Op::DsaIndexerTopk, dtype)));
    }
}
