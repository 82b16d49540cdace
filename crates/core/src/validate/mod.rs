//! Validation of op calls against the contract: shapes, dtypes and parameters.

mod checks;
pub(crate) mod dsa_indexer_topk;
pub(crate) mod mla_cache_write;
pub(crate) mod mla_decode;
pub(crate) mod mla_kv_quantize;
pub(crate) mod mla_sparse_decode;
pub(crate) mod moe_experts;
pub(crate) mod moe_route;
mod paged_cache;
#[cfg(test)]
mod paged_cache_tests;
