//! Pins the paged-cache errors of every op that takes a paged cache: the exact text of
//! the first error, and which error comes first when several arguments are wrong.

use super::dsa_indexer_topk::{self, IndexerArgs};
use super::mla_decode::{self, MlaArgs};
use super::{mla_cache_write, mla_sparse_decode};
use crate::ops::SparseDecodeInputs;
use crate::vendor::DeviceBuffer;
use crate::{
    CacheWriteParams, DType, DeviceTensor, IndexerParams, MlaDecodeParams, Result,
    SparseDecodeParams,
};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use DType::{F32, I32};

/// Shapes only: validation never touches memory.
#[derive(Debug)]
struct NoMemory;

impl DeviceBuffer for NoMemory {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

type Arg = (&'static str, &'static [usize], DType);

/// The tensors `valid`, with those named in `changed` replaced.
fn tensors(valid: &[Arg], changed: &[Arg]) -> BTreeMap<&'static str, DeviceTensor> {
    valid
        .iter()
        .map(|&(name, dims, dtype)| {
            let (_, dims, dtype) = changed
                .iter()
                .find(|c| c.0 == name)
                .copied()
                .unwrap_or((name, dims, dtype));
            let t = DeviceTensor::new(Arc::new(NoMemory), "stub".into(), dims.to_vec(), dtype);
            (name, t)
        })
        .collect()
}

fn outcome(r: Result<()>) -> String {
    r.map_or_else(|e| e.to_string(), |()| "ok".into())
}

/// 2^27 blocks of 16: 2^31 slots, one more than an I32 index reaches.
const TOO_MANY_BLOCKS: usize = 1 << 27;

fn decode(changed: &[Arg]) -> String {
    let t = tensors(
        &[
            ("q", &[2, 1, 4, 64], F32),
            ("kv_cache", &[3, 16, 1, 64], F32),
            ("block_table", &[2, 2], I32),
            ("cache_seqlens", &[2], I32),
        ],
        changed,
    );
    let p = MlaDecodeParams {
        softmax_scale: 0.125,
        head_dim_v: 48,
        ..MlaDecodeParams::deepseek_v3()
    };
    let a = MlaArgs {
        q: &t["q"],
        kv_cache: &t["kv_cache"],
        block_table: &t["block_table"],
        cache_seqlens: &t["cache_seqlens"],
    };
    outcome(mla_decode::validate("stub", a, &p).map(drop))
}

fn indexer(changed: &[Arg], top_k: usize) -> String {
    let t = tensors(
        &[
            ("q", &[2, 1, 4, 32], F32),
            ("weights", &[2, 1, 4], F32),
            ("k_cache", &[3, 16, 32], F32),
            ("block_table", &[2, 2], I32),
            ("cache_seqlens", &[2], I32),
        ],
        changed,
    );
    let p = IndexerParams {
        top_k,
        causal: true,
    };
    let a = IndexerArgs {
        q: &t["q"],
        weights: &t["weights"],
        k_cache: &t["k_cache"],
        block_table: &t["block_table"],
        cache_seqlens: &t["cache_seqlens"],
    };
    outcome(dsa_indexer_topk::validate("stub", a, &p).map(drop))
}

fn sparse(changed: &[Arg], softmax_scale: f64) -> String {
    let t = tensors(
        &[
            ("q", &[2, 1, 4, 64], F32),
            ("kv_cache", &[3, 16, 1, 64], F32),
            ("indices", &[2, 1, 8], I32),
        ],
        changed,
    );
    let p = SparseDecodeParams {
        softmax_scale,
        head_dim_v: 48,
        kv_format: Default::default(),
    };
    let a = SparseDecodeInputs::new(&t["q"], &t["kv_cache"], &t["indices"]);
    outcome(mla_sparse_decode::validate("stub", a, &p).map(drop))
}

fn cache_write(changed: &[Arg]) -> String {
    let t = tensors(
        &[
            ("kv", &[5, 64], F32),
            ("slot_mapping", &[5], I32),
            ("kv_cache", &[3, 16, 1, 64], F32),
        ],
        changed,
    );
    let p = CacheWriteParams::default();
    let r = mla_cache_write::validate("stub", &t["kv"], &t["slot_mapping"], &t["kv_cache"], &p);
    outcome(r.map(drop))
}

#[test]
fn valid_calls_pass() {
    assert_eq!(decode(&[]), "ok");
    assert_eq!(indexer(&[], 8), "ok");
    assert_eq!(sparse(&[], 0.125), "ok");
    assert_eq!(cache_write(&[]), "ok");
}

#[test]
fn mla_decode_errors_in_order() {
    let cases: &[(&[Arg], &str)] = &[
        (
            &[
                ("kv_cache", &[3, 16, 64], F32),
                ("block_table", &[2, 2, 1], I32),
            ],
            "mla_decode: `kv_cache` must have rank 4 ([num_blocks, block_size, Hkv, Dqk]), \
             got rank 3 (shape [3, 16, 64])",
        ),
        (
            &[
                ("block_table", &[2, 2, 1], F32),
                ("cache_seqlens", &[2, 1], F32),
                ("kv_cache", &[0, 16, 1, 64], F32),
            ],
            "mla_decode: `block_table` must have rank 2 ([B, max_blocks]), got rank 3 \
             (shape [2, 2, 1])",
        ),
        (
            &[
                ("cache_seqlens", &[2, 1], F32),
                ("block_table", &[2, 2], F32),
            ],
            "mla_decode: `cache_seqlens` must have rank 1 ([B]), got rank 2 (shape [2, 1])",
        ),
        (
            &[
                ("kv_cache", &[3, 16, 1, 64], I32),
                ("block_table", &[2, 2], F32),
            ],
            "mla_decode: `kv_cache` must be the dtype of q (F32), got I32",
        ),
        (
            &[
                ("block_table", &[2, 2], F32),
                ("cache_seqlens", &[2], F32),
                ("kv_cache", &[0, 16, 1, 64], F32),
            ],
            "mla_decode: `block_table` must be I32, got F32",
        ),
        (
            &[
                ("cache_seqlens", &[2], F32),
                ("kv_cache", &[0, 16, 1, 64], F32),
            ],
            "mla_decode: `cache_seqlens` must be I32, got F32",
        ),
        (
            &[
                ("q", &[2, 1, 0, 64], F32),
                ("kv_cache", &[0, 16, 1, 64], F32),
            ],
            "mla_decode: `q` dim 2 (Hq) must be >= 1, got 0 (shape [2, 1, 0, 64])",
        ),
        (
            &[
                ("kv_cache", &[0, 0, 1, 64], F32),
                ("block_table", &[3, 2], I32),
            ],
            "mla_decode: `kv_cache` dim 0 (num_blocks) must be >= 1, got 0 \
             (shape [0, 0, 1, 64])",
        ),
        (
            &[
                ("kv_cache", &[3, 0, 0, 64], F32),
                ("block_table", &[3, 2], I32),
            ],
            "mla_decode: `kv_cache` dim 1 (block_size) must be >= 1, got 0 \
             (shape [3, 0, 0, 64])",
        ),
        (
            &[
                ("kv_cache", &[3, 16, 1, 32], F32),
                ("block_table", &[3, 2], I32),
            ],
            "mla_decode: `kv_cache` dim 3 (Dqk) must be 64 (Dqk of q), got 32 \
             (shape [3, 16, 1, 32])",
        ),
        (
            &[("block_table", &[3, 0], I32), ("cache_seqlens", &[3], I32)],
            "mla_decode: `block_table` dim 0 (B) must be 2 (B of q), got 3 (shape [3, 0])",
        ),
        (
            &[("block_table", &[2, 0], I32), ("cache_seqlens", &[3], I32)],
            "mla_decode: `block_table` dim 1 (max_blocks) must be >= 1, got 0 (shape [2, 0])",
        ),
        (
            &[("cache_seqlens", &[3], I32)],
            "mla_decode: `cache_seqlens` dim 0 (B) must be 2 (B of q), got 3 (shape [3])",
        ),
    ];
    for (changed, want) in cases {
        assert_eq!(decode(changed), *want, "{changed:?}");
    }
}

#[test]
fn dsa_indexer_topk_errors_in_order() {
    let k_too_many: Arg = ("k_cache", &[TOO_MANY_BLOCKS, 16, 32], F32);
    let cases: &[(&[Arg], usize, &str)] = &[
        (
            &[
                ("weights", &[2, 1], F32),
                ("k_cache", &[3, 16, 1, 32], F32),
                ("block_table", &[2], I32),
            ],
            8,
            "dsa_indexer_topk: `weights` must have rank 3 ([B, Sq, Hi]), got rank 2 \
             (shape [2, 1])",
        ),
        (
            &[
                ("k_cache", &[3, 16, 1, 32], F32),
                ("block_table", &[2], I32),
                ("cache_seqlens", &[2, 1], I32),
            ],
            8,
            "dsa_indexer_topk: `k_cache` must have rank 3 ([num_blocks, block_size, Di]), \
             got rank 4 (shape [3, 16, 1, 32])",
        ),
        (
            &[("block_table", &[2], F32), ("cache_seqlens", &[2, 1], I32)],
            8,
            "dsa_indexer_topk: `block_table` must have rank 2 ([B, max_blocks]), got rank 1 \
             (shape [2])",
        ),
        (
            &[
                ("cache_seqlens", &[2, 1], F32),
                ("k_cache", &[3, 16, 32], I32),
            ],
            8,
            "dsa_indexer_topk: `cache_seqlens` must have rank 1 ([B]), got rank 2 \
             (shape [2, 1])",
        ),
        (
            &[
                ("k_cache", &[3, 16, 32], I32),
                ("block_table", &[2, 2], F32),
            ],
            8,
            "dsa_indexer_topk: `k_cache` must be the dtype of q (F32), got I32",
        ),
        (
            &[
                ("block_table", &[2, 2], F32),
                ("cache_seqlens", &[2], F32),
                ("k_cache", &[0, 16, 32], F32),
            ],
            8,
            "dsa_indexer_topk: `block_table` must be I32, got F32",
        ),
        (
            &[("cache_seqlens", &[2], F32), ("k_cache", &[0, 16, 32], F32)],
            8,
            "dsa_indexer_topk: `cache_seqlens` must be I32, got F32",
        ),
        (
            &[("weights", &[2, 1, 3], F32), ("k_cache", &[0, 16, 32], F32)],
            8,
            "dsa_indexer_topk: `weights` dim 2 (Hi) must be 4 (Hi of q), got 3 \
             (shape [2, 1, 3])",
        ),
        (
            &[("k_cache", &[0, 0, 16], F32), ("block_table", &[3, 2], I32)],
            8,
            "dsa_indexer_topk: `k_cache` dim 0 (num_blocks) must be >= 1, got 0 \
             (shape [0, 0, 16])",
        ),
        (
            &[("k_cache", &[3, 0, 16], F32), ("block_table", &[3, 2], I32)],
            8,
            "dsa_indexer_topk: `k_cache` dim 1 (block_size) must be >= 1, got 0 \
             (shape [3, 0, 16])",
        ),
        (
            &[
                ("k_cache", &[3, 16, 16], F32),
                ("block_table", &[3, 2], I32),
            ],
            8,
            "dsa_indexer_topk: `k_cache` dim 2 (Di) must be 32 (Di of q), got 16 \
             (shape [3, 16, 16])",
        ),
        (
            &[("block_table", &[3, 0], I32), ("cache_seqlens", &[3], I32)],
            8,
            "dsa_indexer_topk: `block_table` dim 0 (B) must be 2 (B of q), got 3 \
             (shape [3, 0])",
        ),
        (
            &[
                ("block_table", &[2, 0], I32),
                ("cache_seqlens", &[3], I32),
                k_too_many,
            ],
            8,
            "dsa_indexer_topk: `block_table` dim 1 (max_blocks) must be >= 1, got 0 \
             (shape [2, 0])",
        ),
        (
            &[("cache_seqlens", &[3], I32), k_too_many],
            0,
            "dsa_indexer_topk: `cache_seqlens` dim 0 (B) must be 2 (B of q), got 3 \
             (shape [3])",
        ),
        (
            &[k_too_many],
            0,
            "dsa_indexer_topk: `k_cache` dim 0 (num_blocks) must be <= 2^31 - 1 slots in \
             all (block_size 16): indices are I32, got 134217728 \
             (shape [134217728, 16, 32])",
        ),
        (
            &[("k_cache", &[TOO_MANY_BLOCKS - 1, 16, 32], F32)],
            0,
            "dsa_indexer_topk: parameter `top_k` must be >= 1, got 0",
        ),
        (
            &[("k_cache", &[usize::MAX, 16, 32], F32)],
            8,
            "dsa_indexer_topk: `k_cache` dim 0 (num_blocks) must be <= 2^31 - 1 slots in \
             all (block_size 16): indices are I32, got 18446744073709551615 \
             (shape [18446744073709551615, 16, 32])",
        ),
    ];
    for (changed, top_k, want) in cases {
        assert_eq!(indexer(changed, *top_k), *want, "{changed:?} top_k {top_k}");
    }
}

#[test]
fn mla_sparse_decode_errors_in_order() {
    let kv_too_many: Arg = ("kv_cache", &[TOO_MANY_BLOCKS, 16, 1, 64], F32);
    let cases: &[(&[Arg], f64, &str)] = &[
        (
            &[("kv_cache", &[3, 16, 64], F32), ("indices", &[2, 8], I32)],
            0.125,
            "mla_sparse_decode: `kv_cache` must have rank 4 \
             ([num_blocks, block_size, 1, Dqk]), got rank 3 (shape [3, 16, 64])",
        ),
        (
            &[
                ("kv_cache", &[3, 16, 1, 64], I32),
                ("indices", &[2, 1, 8], F32),
            ],
            0.125,
            "mla_sparse_decode: `kv_cache` must be the dtype of q (F32), got I32",
        ),
        (
            &[
                ("q", &[2, 1, 0, 64], F32),
                ("kv_cache", &[0, 16, 1, 64], F32),
            ],
            0.125,
            "mla_sparse_decode: `q` dim 2 (Hq) must be >= 1, got 0 (shape [2, 1, 0, 64])",
        ),
        (
            &[
                ("kv_cache", &[0, 0, 1, 64], F32),
                ("indices", &[3, 1, 8], I32),
            ],
            0.125,
            "mla_sparse_decode: `kv_cache` dim 0 (num_blocks) must be >= 1, got 0 \
             (shape [0, 0, 1, 64])",
        ),
        (
            &[
                ("kv_cache", &[3, 0, 2, 64], F32),
                ("indices", &[3, 1, 8], I32),
            ],
            0.125,
            "mla_sparse_decode: `kv_cache` dim 1 (block_size) must be >= 1, got 0 \
             (shape [3, 0, 2, 64])",
        ),
        (
            &[("kv_cache", &[3, 16, 2, 64], F32)],
            0.125,
            "mla_sparse_decode: `kv_cache` dim 2 (Hkv) must be 1 (one kv head), got 2 \
             (shape [3, 16, 2, 64])",
        ),
        (
            &[kv_too_many, ("indices", &[2, 1, 0], I32)],
            0.125,
            "mla_sparse_decode: `indices` dim 2 (topk) must be >= 1, got 0 (shape [2, 1, 0])",
        ),
        (
            &[kv_too_many],
            0.0,
            "mla_sparse_decode: parameter `softmax_scale` must be finite and > 0 as an f32 \
             (what kernels compute with), got 0",
        ),
        (
            &[kv_too_many],
            0.125,
            "mla_sparse_decode: `kv_cache` dim 0 (num_blocks) must be <= 2^31 - 1 slots in \
             all (block_size 16): indices are I32, got 134217728 \
             (shape [134217728, 16, 1, 64])",
        ),
        (
            &[("kv_cache", &[TOO_MANY_BLOCKS - 1, 16, 1, 64], F32)],
            0.125,
            "ok",
        ),
        (
            &[("kv_cache", &[usize::MAX, 16, 1, 64], F32)],
            0.125,
            "mla_sparse_decode: `kv_cache` dim 0 (num_blocks) must be <= 2^31 - 1 slots in \
             all (block_size 16): indices are I32, got 18446744073709551615 \
             (shape [18446744073709551615, 16, 1, 64])",
        ),
    ];
    for (changed, scale, want) in cases {
        assert_eq!(sparse(changed, *scale), *want, "{changed:?} scale {scale}");
    }
}

#[test]
fn mla_cache_write_errors_in_order() {
    let cases: &[(&[Arg], &str)] = &[
        (
            &[
                ("kv_cache", &[3, 16, 64], F32),
                ("slot_mapping", &[5, 1], I32),
            ],
            "mla_cache_write: `slot_mapping` must have rank 1 ([N]), got rank 2 (shape [5, 1])",
        ),
        (
            &[
                ("kv_cache", &[3, 16, 1, 64], I32),
                ("slot_mapping", &[5], F32),
            ],
            "mla_cache_write: `slot_mapping` must be I32, got F32",
        ),
        (
            &[
                ("slot_mapping", &[4], I32),
                ("kv_cache", &[0, 16, 1, 64], F32),
            ],
            "mla_cache_write: `slot_mapping` dim 0 (N) must be 5 (N of kv), got 4 (shape [4])",
        ),
        (
            &[("kv_cache", &[0, 0, 1, 64], F32)],
            "mla_cache_write: `kv_cache` dim 0 (num_blocks) must be >= 1, got 0 \
             (shape [0, 0, 1, 64])",
        ),
        (
            &[("kv_cache", &[3, 0, 2, 64], F32)],
            "mla_cache_write: `kv_cache` dim 1 (block_size) must be >= 1, got 0 \
             (shape [3, 0, 2, 64])",
        ),
        (
            &[("kv_cache", &[3, 16, 2, 32], F32)],
            "mla_cache_write: `kv_cache` dim 2 (Hkv) must be 1 (one kv head), got 2 \
             (shape [3, 16, 2, 32])",
        ),
        // Slots are named by an I32 slot_mapping: a larger cache is fine, its far rows
        // are simply out of reach.
        (&[("kv_cache", &[TOO_MANY_BLOCKS, 16, 1, 64], F32)], "ok"),
    ];
    for (changed, want) in cases {
        assert_eq!(cache_write(changed), *want, "{changed:?}");
    }
}
