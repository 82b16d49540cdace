//! The ops on the CPU, one module per op.

pub mod dsa_indexer_topk;
pub mod kv_rows;
pub mod mla_cache_write;
pub mod mla_decode;
pub mod mla_kv_quantize;
pub mod mla_sparse_decode;
pub mod moe_experts;
pub mod moe_route;
