//! `mla_decode`: not implemented by the template. A backend implements it here: check the
//! block table and sequence lengths (`moemla_core::vendor::indices::check_mla_indices` on
//! the host, or a device-side flag), then paged attention over the latent cache.

use crate::error;
use moemla_core::vendor::calls::MlaDecodeCall;
use moemla_core::{MlaDecodeOutput, Op, Result};

/// Refuses the call: the template implements `moe_route` only.
pub fn run(_backend: &str, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    Err(error::unsupported(
        Op::MlaDecode,
        call.dtype,
        "the template backend implements moe_route only",
    ))
}
