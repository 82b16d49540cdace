//! The v1 ops on the CPU, one module per op.

pub mod mla_decode;
pub mod moe_experts;
pub mod moe_route;
