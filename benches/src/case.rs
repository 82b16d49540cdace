//! The benchmark shapes (issue 8): DeepSeek-V3 routing, V2-Lite and V3 expert slices, MLA
//! decode at FlashMLA's dims; contract v2: FP8 block-scaled experts at DeepSeek-V3's
//! shapes, MLA decode over the 656-byte FP8 cache, DeepSeek Sparse Attention at FlashMLA's
//! sparse decode shapes, the lightning indexer, and a decode step that appends its token
//! (`mla_cache_write` into a 1 GiB cache pool) before the decode.

use moemla_core::{
    ActivationQuant, ActivationScale, DType, ExpertsParams, IndexerParams, KvFormat,
    MlaDecodeParams, Op, RouteParams, SparseDecodeParams,
};
use std::collections::BTreeMap;
use std::fmt;

/// One op at one shape and run dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum BenchCase {
    /// `moe_route` with V3 parameters on [tokens, 256] logits (F32).
    Route {
        /// T.
        tokens: usize,
        /// Routing parameters.
        params: RouteParams,
        /// E.
        experts: usize,
    },
    /// `moe_experts` with `tokens` tokens routed top-`top_k` over `experts` experts.
    Experts {
        /// Run dtype.
        dtype: DType,
        /// T.
        tokens: usize,
        /// H.
        hidden: usize,
        /// I.
        inter: usize,
        /// E.
        experts: usize,
        /// k.
        top_k: usize,
    },
    /// `mla_decode` on a paged cache with `seqlen` tokens per sequence.
    Mla {
        /// Run dtype.
        dtype: DType,
        /// B.
        batch: usize,
        /// Sq.
        s_q: usize,
        /// Hq.
        h_q: usize,
        /// Tokens in every sequence's cache.
        seqlen: usize,
        /// Cache block size.
        block_size: usize,
    },
    /// `moe_experts` with F8E4M3 weights and 128x128 block scales (F32), BF16 tokens.
    Fp8Experts {
        /// w8a8 (`fp8_block128` activations) rather than w8a16.
        w8a8: bool,
        /// UE8M0 scales, as DeepSeek-V3.1's checkpoints have them: the weights' block
        /// scales powers of two (and w8a8's activation scales too); else f32 scales as
        /// DeepSeek-V3's.
        ue8m0: bool,
        /// T.
        tokens: usize,
        /// H.
        hidden: usize,
        /// I.
        inter: usize,
        /// E.
        experts: usize,
        /// k.
        top_k: usize,
    },
    /// `mla_decode` over the 656-byte `fp8_ds_v32` cache, BF16 queries (Dqk 576, Dv 512).
    MlaFp8 {
        /// B.
        batch: usize,
        /// Sq.
        s_q: usize,
        /// Hq.
        h_q: usize,
        /// Tokens in every sequence's cache.
        seqlen: usize,
        /// Cache block size.
        block_size: usize,
    },
    /// `mla_sparse_decode` over the `fp8_ds_v32` cache, BF16 queries: every query attends
    /// `topk` distinct tokens of its own sequence's `seqlen`.
    Sparse {
        /// B.
        batch: usize,
        /// Sq.
        s_q: usize,
        /// Hq.
        h_q: usize,
        /// Indices per query.
        topk: usize,
        /// Cached tokens per sequence.
        seqlen: usize,
        /// Cache block size.
        block_size: usize,
    },
    /// `dsa_indexer_topk` (BF16 queries and keys) over `seqlen` cached tokens per sequence.
    Indexer {
        /// B.
        batch: usize,
        /// Sq.
        s_q: usize,
        /// Hi: indexer heads.
        heads: usize,
        /// Di: indexer head dim.
        dim: usize,
        /// Cached tokens per sequence.
        seqlen: usize,
        /// Positions kept per query.
        top_k: usize,
        /// Cache block size.
        block_size: usize,
    },
    /// One decode step with its append: `mla_cache_write` of one token per sequence into a
    /// cache pool of `pool_bytes` (allocated once, outside the timed region), then
    /// `mla_decode` (Sq 1, BF16 queries) over `seqlen` tokens including that one. The row
    /// also times the decode alone.
    Step {
        /// The pool holds 656-byte `fp8_ds_v32` rows (else dense BF16 rows of 576).
        fp8: bool,
        /// B: sequences, one new token each.
        batch: usize,
        /// Hq.
        h_q: usize,
        /// Tokens per sequence after the append.
        seqlen: usize,
        /// Cache block size.
        block_size: usize,
        /// Bytes of the cache pool (whole blocks of it).
        pool_bytes: usize,
    },
}

/// Which set of shapes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The shapes of issue 8 (minutes on a CPU).
    Standard,
    /// Tiny shapes that exercise the whole harness in seconds (CI smoke run).
    Quick,
    /// The accelerator shapes of the CUDA issue: FlashMLA's memory-bound decode (b=128,
    /// s_q=1, h_q=16, sk=4096) and compute-bound decode (h_q=128, s_q=2), and full
    /// DeepSeek-V3 experts (E=256, H=7168, I=2048, top-8) at T=16 and T=4096. About 25 GB of
    /// weights: for GPUs with the memory for it.
    Device,
}

/// MLA latent width (FlashMLA `d`) and value width (`dv`).
pub const MLA_D_QK: usize = 576;
/// MLA value width.
pub const MLA_D_V: usize = 512;

impl BenchCase {
    /// The op this case runs.
    pub fn op(&self) -> Op {
        match self {
            BenchCase::Route { .. } => Op::MoeRoute,
            BenchCase::Experts { .. } => Op::MoeExperts,
            BenchCase::Mla { .. } | BenchCase::MlaFp8 { .. } => Op::MlaDecode,
            BenchCase::Fp8Experts { .. } => Op::MoeExperts,
            BenchCase::Sparse { .. } => Op::MlaSparseDecode,
            BenchCase::Indexer { .. } => Op::DsaIndexerTopk,
            BenchCase::Step { .. } => Op::MlaCacheWrite,
        }
    }

    /// The run dtype (the tokens' or queries' dtype; FP8 rows run in BF16).
    pub fn dtype(&self) -> DType {
        match self {
            BenchCase::Route { .. } => DType::F32,
            BenchCase::Experts { dtype, .. } | BenchCase::Mla { dtype, .. } => *dtype,
            BenchCase::Fp8Experts { .. }
            | BenchCase::MlaFp8 { .. }
            | BenchCase::Sparse { .. }
            | BenchCase::Indexer { .. }
            | BenchCase::Step { .. } => DType::BF16,
        }
    }

    /// What sets the row apart from a plain row of its op and dtype ("fp8 w8a16",
    /// "fp8 cache", "append dense", ...; empty for none): tables and plots show it.
    pub fn variant(&self) -> &'static str {
        match *self {
            BenchCase::Fp8Experts { w8a8, ue8m0, .. } => match (w8a8, ue8m0) {
                (false, false) => "fp8 w8a16",
                (true, false) => "fp8 w8a8",
                (false, true) => "fp8 w8a16 ue8m0",
                (true, true) => "fp8 w8a8 ue8m0",
            },
            BenchCase::MlaFp8 { .. } | BenchCase::Sparse { .. } => "fp8 cache",
            BenchCase::Step { fp8: false, .. } => "append dense",
            BenchCase::Step { fp8: true, .. } => "append fp8 cache",
            _ => "",
        }
    }

    /// The `moe_experts` parameters of an experts case.
    pub fn experts_params(&self) -> ExpertsParams {
        match *self {
            BenchCase::Fp8Experts {
                w8a8: true, ue8m0, ..
            } => ExpertsParams {
                activation_quant: ActivationQuant::Fp8Block128,
                activation_scale: if ue8m0 {
                    ActivationScale::Ue8m0
                } else {
                    ActivationScale::F32
                },
                ..ExpertsParams::default()
            },
            _ => ExpertsParams::default(),
        }
    }

    /// The `mla_decode` parameters of a decode case (DeepSeek-V3, causal; the FP8 cache
    /// where the case reads one).
    pub fn decode_params(&self) -> MlaDecodeParams {
        let fp8 = matches!(
            self,
            BenchCase::MlaFp8 { .. } | BenchCase::Step { fp8: true, .. }
        );
        MlaDecodeParams {
            kv_format: if fp8 {
                KvFormat::Fp8DsV32
            } else {
                KvFormat::Dense
            },
            ..Self::mla_params()
        }
    }

    /// The `mla_sparse_decode` parameters (DeepSeek-V3.2 over the FP8 cache).
    pub fn sparse_params() -> SparseDecodeParams {
        SparseDecodeParams::deepseek_v32()
    }

    /// The `dsa_indexer_topk` parameters of an indexer case (causal).
    pub fn indexer_params(&self) -> IndexerParams {
        let top_k = match *self {
            BenchCase::Indexer { top_k, .. } => top_k,
            _ => 1,
        };
        IndexerParams {
            top_k,
            causal: true,
        }
    }

    /// The case's dims by the names its description uses (`T`, `E`, `k`, `H`, `I`, `b`,
    /// `s_q`, `h_q`, `sk`, `blk`), for tables and plots.
    pub fn dims(&self) -> BTreeMap<&'static str, usize> {
        let pairs: Vec<(&'static str, usize)> = match *self {
            BenchCase::Route {
                tokens,
                experts,
                ref params,
            } => vec![("T", tokens), ("E", experts), ("k", params.top_k)],
            BenchCase::Experts {
                tokens,
                hidden,
                inter,
                experts,
                top_k,
                ..
            }
            | BenchCase::Fp8Experts {
                tokens,
                hidden,
                inter,
                experts,
                top_k,
                ..
            } => vec![
                ("T", tokens),
                ("H", hidden),
                ("I", inter),
                ("E", experts),
                ("k", top_k),
            ],
            BenchCase::Mla {
                batch,
                s_q,
                h_q,
                seqlen,
                block_size,
                ..
            }
            | BenchCase::MlaFp8 {
                batch,
                s_q,
                h_q,
                seqlen,
                block_size,
            } => vec![
                ("b", batch),
                ("s_q", s_q),
                ("h_q", h_q),
                ("sk", seqlen),
                ("blk", block_size),
            ],
            BenchCase::Sparse {
                batch,
                s_q,
                h_q,
                topk,
                seqlen,
                block_size,
            } => vec![
                ("b", batch),
                ("s_q", s_q),
                ("h_q", h_q),
                ("topk", topk),
                ("sk", seqlen),
                ("blk", block_size),
            ],
            BenchCase::Indexer {
                batch,
                s_q,
                heads,
                dim,
                seqlen,
                top_k,
                block_size,
            } => vec![
                ("b", batch),
                ("s_q", s_q),
                ("Hi", heads),
                ("Di", dim),
                ("sk", seqlen),
                ("k", top_k),
                ("blk", block_size),
            ],
            BenchCase::Step {
                batch,
                h_q,
                seqlen,
                block_size,
                pool_bytes,
                ..
            } => vec![
                ("b", batch),
                ("h_q", h_q),
                ("sk", seqlen),
                ("blk", block_size),
                ("pool_MiB", pool_bytes >> 20),
            ],
        };
        pairs.into_iter().collect()
    }

    /// MLA parameters used by every decode case (DeepSeek-V3 scale, causal).
    pub fn mla_params() -> MlaDecodeParams {
        MlaDecodeParams::deepseek_v3()
    }

    /// Every case of `suite`, for the ops in `ops` and the dtypes in `dtypes`.
    pub fn list(suite: Suite, ops: &[Op], dtypes: &[DType]) -> Vec<BenchCase> {
        let all = match suite {
            Suite::Standard => standard(),
            Suite::Quick => quick(),
            Suite::Device => device(),
        };
        all.into_iter()
            .filter(|c| {
                ops.contains(&c.op()) && (c.op() == Op::MoeRoute || dtypes.contains(&c.dtype()))
            })
            .collect()
    }
}

fn standard() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    for tokens in [1, 64, 4096] {
        cases.push(BenchCase::Route {
            tokens,
            params: RouteParams::deepseek_v3(),
            experts: 256,
        });
    }
    for dtype in [DType::BF16, DType::F32] {
        // DeepSeek-V2-Lite experts: H 2048, I 1408, 64 routed experts, top-6.
        for tokens in [1, 16, 256] {
            cases.push(BenchCase::Experts {
                dtype,
                tokens,
                hidden: 2048,
                inter: 1408,
                experts: 64,
                top_k: 6,
            });
        }
        // A DeepSeek-V3 slice that fits in memory: H 7168, I 2048, 16 experts, top-8.
        cases.push(BenchCase::Experts {
            dtype,
            tokens: 64,
            hidden: 7168,
            inter: 2048,
            experts: 16,
            top_k: 8,
        });
        for h_q in [16, 128] {
            for s_q in [1, 2] {
                for seqlen in [1024, 4096] {
                    cases.push(BenchCase::Mla {
                        dtype,
                        batch: 4,
                        s_q,
                        h_q,
                        seqlen,
                        block_size: 64,
                    });
                }
            }
        }
    }
    cases.extend(standard_v2());
    cases
}

/// Contract v2 rows (issue 13, 14, 19 shapes).
fn standard_v2() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    // DeepSeek-V3's routed experts: H 7168, I 2048, 256 experts, top-8; FP8 weights as the
    // checkpoint ships them (about 11.3 GB of codes for all 256 experts).
    for w8a8 in [false, true] {
        for tokens in [1, 16, 256] {
            cases.push(BenchCase::Fp8Experts {
                w8a8,
                ue8m0: false,
                tokens,
                hidden: 7168,
                inter: 2048,
                experts: 256,
                top_k: 8,
            });
        }
    }
    // The same at prefill with DeepSeek-V3.1's UE8M0 scales (powers of two).
    for w8a8 in [false, true] {
        cases.push(BenchCase::Fp8Experts {
            w8a8,
            ue8m0: true,
            tokens: 256,
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
        });
    }
    // The dense decode shapes over the FP8 cache.
    for h_q in [16, 128] {
        for s_q in [1, 2] {
            for seqlen in [1024, 4096] {
                cases.push(BenchCase::MlaFp8 {
                    batch: 4,
                    s_q,
                    h_q,
                    seqlen,
                    block_size: 64,
                });
            }
        }
    }
    cases.extend(flashmla_sparse_shapes());
    // V3.2's lightning indexer: 64 heads of 128, top 2048.
    for seqlen in [8192, 32768] {
        cases.push(BenchCase::Indexer {
            batch: 4,
            s_q: 1,
            heads: 64,
            dim: 128,
            seqlen,
            top_k: 2048,
            block_size: 64,
        });
    }
    // A decode step that appends its token into a 1 GiB pool, dense and FP8.
    for fp8 in [false, true] {
        cases.push(BenchCase::Step {
            fp8,
            batch: 4,
            h_q: 16,
            seqlen: 4096,
            block_size: 64,
            pool_bytes: 1 << 30,
        });
    }
    cases
}

fn device() -> Vec<BenchCase> {
    let mut cases = Vec::new();
    for dtype in [DType::BF16, DType::F32] {
        for (s_q, h_q) in [(1, 16), (2, 128)] {
            cases.push(BenchCase::Mla {
                dtype,
                batch: 128,
                s_q,
                h_q,
                seqlen: 4096,
                block_size: 64,
            });
        }
    }
    for tokens in [16, 4096] {
        cases.push(BenchCase::Experts {
            dtype: DType::BF16,
            tokens,
            hidden: 7168,
            inter: 2048,
            experts: 256,
            top_k: 8,
        });
    }
    // Contract v2 at the same scale: FlashMLA's decode shapes over the FP8 cache, its
    // sparse decode shapes (V3.2: topk 2048 of 32768 cached tokens) and V3.2's indexer over
    // the same sequences (64 heads of 128, top 2048).
    for (s_q, h_q) in [(1, 16), (2, 128)] {
        cases.push(BenchCase::MlaFp8 {
            batch: 128,
            s_q,
            h_q,
            seqlen: 4096,
            block_size: 64,
        });
    }
    cases.extend(flashmla_sparse_shapes());
    cases.push(BenchCase::Indexer {
        batch: 128,
        s_q: 1,
        heads: 64,
        dim: 128,
        seqlen: 32768,
        top_k: 2048,
        block_size: 64,
    });
    cases
}

/// FlashMLA's sparse decode shapes (tests/test_flash_mla_sparse_decoding.py, V3.2: topk
/// 2048 over 32768 cached tokens, FP8 cache), at b 128 with s_q 1, h_q 128 and 64.
fn flashmla_sparse_shapes() -> impl Iterator<Item = BenchCase> {
    [128, 64].into_iter().map(|h_q| BenchCase::Sparse {
        batch: 128,
        s_q: 1,
        h_q,
        topk: 2048,
        seqlen: 32768,
        block_size: 64,
    })
}

fn quick() -> Vec<BenchCase> {
    let mut cases = vec![BenchCase::Route {
        tokens: 8,
        params: RouteParams::deepseek_v3(),
        experts: 256,
    }];
    for dtype in [DType::BF16, DType::F32] {
        cases.push(BenchCase::Experts {
            dtype,
            tokens: 4,
            hidden: 128,
            inter: 64,
            experts: 8,
            top_k: 2,
        });
        cases.push(BenchCase::Mla {
            dtype,
            batch: 2,
            s_q: 2,
            h_q: 4,
            seqlen: 96,
            block_size: 64,
        });
    }
    for w8a8 in [false, true] {
        cases.push(BenchCase::Fp8Experts {
            w8a8,
            ue8m0: false,
            tokens: 4,
            hidden: 256,
            inter: 128,
            experts: 8,
            top_k: 2,
        });
    }
    cases.push(BenchCase::MlaFp8 {
        batch: 2,
        s_q: 2,
        h_q: 4,
        seqlen: 96,
        block_size: 64,
    });
    cases.push(BenchCase::Sparse {
        batch: 2,
        s_q: 1,
        h_q: 8,
        topk: 64,
        seqlen: 256,
        block_size: 64,
    });
    cases.push(BenchCase::Indexer {
        batch: 2,
        s_q: 1,
        heads: 4,
        dim: 32,
        seqlen: 256,
        top_k: 16,
        block_size: 64,
    });
    cases.push(BenchCase::Step {
        fp8: true,
        batch: 2,
        h_q: 4,
        seqlen: 96,
        block_size: 64,
        pool_bytes: 1 << 20,
    });
    cases
}

impl fmt::Display for BenchCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchCase::Route {
                tokens,
                experts,
                params,
                ..
            } => write!(f, "moe_route f32 T={tokens} E={experts} k={}", params.top_k),
            BenchCase::Experts {
                dtype,
                tokens,
                hidden,
                inter,
                experts,
                top_k,
            } => write!(
                f,
                "moe_experts {} T={tokens} H={hidden} I={inter} E={experts} k={top_k}",
                dtype.name().to_lowercase()
            ),
            BenchCase::Mla {
                dtype,
                batch,
                s_q,
                h_q,
                seqlen,
                block_size,
            } => write!(
                f,
                "mla_decode {} b={batch} s_q={s_q} h_q={h_q} sk={seqlen} blk={block_size}",
                dtype.name().to_lowercase()
            ),
            BenchCase::Fp8Experts {
                tokens,
                hidden,
                inter,
                experts,
                top_k,
                ..
            } => write!(
                f,
                "moe_experts {} T={tokens} H={hidden} I={inter} E={experts} k={top_k}",
                self.variant()
            ),
            BenchCase::MlaFp8 {
                batch,
                s_q,
                h_q,
                seqlen,
                block_size,
            } => write!(
                f,
                "mla_decode bf16 fp8 cache b={batch} s_q={s_q} h_q={h_q} sk={seqlen} \
                 blk={block_size}"
            ),
            BenchCase::Sparse {
                batch,
                s_q,
                h_q,
                topk,
                seqlen,
                block_size,
            } => write!(
                f,
                "mla_sparse_decode bf16 fp8 cache b={batch} s_q={s_q} h_q={h_q} \
                 topk={topk} sk={seqlen} blk={block_size}"
            ),
            BenchCase::Indexer {
                batch,
                s_q,
                heads,
                dim,
                seqlen,
                top_k,
                block_size,
            } => write!(
                f,
                "dsa_indexer_topk bf16 b={batch} s_q={s_q} Hi={heads} Di={dim} sk={seqlen} \
                 k={top_k} blk={block_size}"
            ),
            BenchCase::Step {
                batch,
                h_q,
                seqlen,
                block_size,
                pool_bytes,
                ..
            } => write!(
                f,
                "decode step bf16 {}: mla_cache_write + mla_decode b={batch} s_q=1 \
                 h_q={h_q} sk={seqlen} blk={block_size} pool={}MiB",
                self.variant(),
                pool_bytes >> 20
            ),
        }
    }
}
