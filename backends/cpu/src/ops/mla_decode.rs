//! `mla_decode` on the CPU.

use crate::storage::CpuStorage;
use moemla_core::calls::MlaDecodeCall;
use moemla_core::{Error, Op, Result};

/// Runs the decode; returns `o` [B, Sq, Hq, Dv] in the run dtype and `lse` [B, Hq, Sq].
pub fn run(backend: &str, call: &MlaDecodeCall<'_>) -> Result<(CpuStorage, Vec<f32>)> {
    Err(Error::Unsupported {
        backend: backend.to_string(),
        op: Op::MlaDecode,
        what: format!("{}", call.dtype),
        reason: "not implemented yet".to_string(),
    })
}
