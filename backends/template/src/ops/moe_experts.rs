//! `moe_experts`: not implemented by the template. A backend implements it here: check
//! `topk_ids` (every id in [-1, E): `moemla_core::vendor::indices::check_topk_ids` on the
//! host, or a device-side flag), then the grouped SwiGLU GEMMs and the weighted combine.

use crate::error;
use moemla_core::vendor::calls::MoeExpertsCall;
use moemla_core::{DeviceTensor, Op, Result};

/// Refuses the call: the template implements `moe_route` only.
pub fn run(_backend: &str, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
    Err(error::unsupported(
        Op::MoeExperts,
        call.dtype,
        "the template backend implements moe_route only",
    ))
}
