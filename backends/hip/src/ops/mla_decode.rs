//! `mla_decode` (pending: the shared kernels have not landed yet).

use crate::HipBackend;
use moemla_core::calls::MlaDecodeCall;
use moemla_core::{Error, MlaDecodeOutput, Op, Result};

/// Runs `mla_decode`.
pub(crate) fn run(_backend: &HipBackend, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    Err(Error::Unsupported {
        backend: crate::NAME.to_string(),
        op: Op::MlaDecode,
        what: format!("{:?}", call.validated),
        reason: "kernels not wired yet".into(),
    })
}
