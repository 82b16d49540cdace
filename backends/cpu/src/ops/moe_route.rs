//! `moe_route` on the CPU.

use moemla_core::calls::MoeRouteCall;
use moemla_core::{Error, Op, Result};

/// Runs the routing; returns `topk_ids` [T, k] and `topk_weights` [T, k].
pub fn run(backend: &str, call: &MoeRouteCall<'_>) -> Result<(Vec<i32>, Vec<f32>)> {
    Err(Error::Unsupported {
        backend: backend.to_string(),
        op: Op::MoeRoute,
        what: format!("{}", call.logits.dtype()),
        reason: "not implemented yet".to_string(),
    })
}
