//! One file per moemla op: argument checks against CANN's documented limits, marshalling,
//! and the aclnn calls.

mod compose;
pub mod dsa_indexer_topk;
pub mod gaps;
pub mod lightning_indexer;
pub mod mla_cache_write;
pub mod mla_decode;
mod mla_lse;
pub mod mla_sparse_decode;
pub mod moe_experts;
pub mod moe_route;
pub mod sparse_flash_attention;

use moemla_core::{Error, Op};

/// An [`Error::Unsupported`] from this backend.
pub fn unsupported(op: Op, what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        backend: crate::NAME.to_string(),
        op,
        what: what.into(),
        reason: reason.into(),
    }
}

/// Fails with [`Error::Unsupported`] unless every aclnn op `op` needs was found
/// (`available`: the op's own check of the loaded op libraries).
pub fn require_ops(op: Op, available: bool) -> Result<(), Error> {
    if available {
        Ok(())
    } else {
        Err(unsupported(
            op,
            "all",
            "an aclnn op it needs is missing from the loaded op libraries",
        ))
    }
}

/// Little-endian INT32 bytes (an index tensor downloaded from the device) as values.
pub(crate) fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
