//! One file per op. Each takes the call `moemla_core::ops` has validated (shapes, dtypes
//! and parameters already checked, sizes carried along), checks index *contents* if the op
//! has index inputs, runs, and returns new tensors of the contract's shapes.

pub mod mla_decode;
pub mod moe_experts;
pub mod moe_route;
