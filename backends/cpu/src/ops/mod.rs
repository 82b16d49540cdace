//! The ops on the CPU, one module per op.

pub mod dsa_indexer_topk;
pub mod kv_rows;
pub mod mla_cache_write;
pub mod mla_decode;
pub mod mla_kv_quantize;
pub mod mla_sparse_decode;
pub mod moe_experts;
pub mod moe_route;

/// Jobs per pool thread that the attention decodes split their sequences (or query rows)
/// into: enough for the threads to even out, few enough that each job's fixed costs (its
/// query rows prepared, its partial softmax state allocated and merged) stay small. On 2
/// cores, `mla_decode` in one process, alternated rounds, best / median against 4 per
/// thread: bf16 h_q 16 s_q 1 over 1024 positions 0.24 / 0.27 vs 0.25 / 0.30 ms, s_q 2
/// 0.44 / 0.48 vs 0.47-0.49 / 0.51-0.53 ms, h_q 128 1.59-1.63 / 1.68-1.77 vs 1.68-1.72 /
/// 1.78-1.83 ms; f32 h_q 128 2.86-2.88 vs 2.92-2.94 ms; 1 per thread the same as 2. The
/// sparse decode splits its query rows the same way (at the bench's 128 rows every row is
/// one job either way; fewer rows unmeasured).
pub(crate) const JOBS_PER_THREAD: usize = 2;
