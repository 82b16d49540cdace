//! `moe_experts` on the CPU.

use crate::storage::CpuStorage;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{Error, Op, Result};

/// Runs the experts; returns `y` [T, H] in the run dtype.
pub fn run(backend: &str, call: &MoeExpertsCall<'_>) -> Result<CpuStorage> {
    Err(Error::Unsupported {
        backend: backend.to_string(),
        op: Op::MoeExperts,
        what: format!("{}", call.dtype),
        reason: "not implemented yet".to_string(),
    })
}
