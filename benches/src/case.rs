//! The benchmark shapes (issue 8): DeepSeek-V3 routing, V2-Lite and V3 expert slices, MLA
//! decode at FlashMLA's dims.

use moemla_core::{DType, MlaDecodeParams, Op, RouteParams};
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
            BenchCase::Mla { .. } => Op::MlaDecode,
        }
    }

    /// The run dtype.
    pub fn dtype(&self) -> DType {
        match self {
            BenchCase::Route { .. } => DType::F32,
            BenchCase::Experts { dtype, .. } | BenchCase::Mla { dtype, .. } => *dtype,
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
            } => vec![
                ("b", batch),
                ("s_q", s_q),
                ("h_q", h_q),
                ("sk", seqlen),
                ("blk", block_size),
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
    cases
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
        }
    }
}
