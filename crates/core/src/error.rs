//! The error type every moemla call returns.

use crate::{DType, Shape};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The ops of the contract (v1: the first three; v2 adds the FP8 cache writer and DeepSeek
/// Sparse Attention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// DeepSeek-V2/V3 gating: scores, group-limited top-k, renormalised weights.
    MoeRoute,
    /// Fused routed-expert SwiGLU FFN with weighted combine.
    MoeExperts,
    /// Absorbed MLA attention over a paged latent KV cache.
    MlaDecode,
    /// Writes latent KV rows in the 656-byte FP8 cache layout (v2).
    MlaKvQuantize,
    /// DeepSeek Sparse Attention: MLA over the cache slots an index list names (v2).
    MlaSparseDecode,
    /// DeepSeek-V3.2's lightning indexer and its top-k over a paged cache (v2).
    DsaIndexerTopk,
    /// Writes latent rows into a paged cache in place, at flat slots (v2; vLLM's
    /// `concat_and_cache_mla`).
    MlaCacheWrite,
}

impl Op {
    /// Every op, in contract order.
    pub const ALL: [Op; 7] = [
        Op::MoeRoute,
        Op::MoeExperts,
        Op::MlaDecode,
        Op::MlaKvQuantize,
        Op::MlaSparseDecode,
        Op::DsaIndexerTopk,
        Op::MlaCacheWrite,
    ];

    /// The ops of contract v1.
    pub const V1: [Op; 3] = [Op::MoeRoute, Op::MoeExperts, Op::MlaDecode];

    /// The contract's name for the op (`moe_route`, ...), as golden files carry it.
    pub fn name(self) -> &'static str {
        match self {
            Op::MoeRoute => "moe_route",
            Op::MoeExperts => "moe_experts",
            Op::MlaDecode => "mla_decode",
            Op::MlaKvQuantize => "mla_kv_quantize",
            Op::MlaSparseDecode => "mla_sparse_decode",
            Op::DsaIndexerTopk => "dsa_indexer_topk",
            Op::MlaCacheWrite => "mla_cache_write",
        }
    }

    /// Parses a contract op name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong. Every variant names the op (or call) and, for bad input, the argument,
/// what was expected and what was got.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// A tensor has the wrong number of dimensions.
    #[error("{op}: `{arg}` must have rank {expected} ({layout}), got rank {got} (shape {shape})")]
    Rank {
        /// The op that rejected the input.
        op: Op,
        /// The argument name.
        arg: &'static str,
        /// The layout the contract gives, e.g. "[T, E]".
        layout: &'static str,
        /// Expected rank.
        expected: usize,
        /// Actual rank.
        got: usize,
        /// Actual shape.
        shape: Shape,
    },
    /// One dimension of a tensor disagrees with the contract or with another argument.
    #[error("{op}: `{arg}` dim {dim} ({dim_name}) must be {expected}, got {got} (shape {shape})")]
    Dim {
        /// The op that rejected the input.
        op: Op,
        /// The argument name.
        arg: &'static str,
        /// Index of the offending dimension.
        dim: usize,
        /// The dimension's name in the contract (`H`, `Dqk`, ...).
        dim_name: &'static str,
        /// What it should be, in words ("128 (= H of x)", ">= 1").
        expected: String,
        /// The actual size.
        got: usize,
        /// Actual shape.
        shape: Shape,
    },
    /// A tensor has the wrong element type.
    #[error("{op}: `{arg}` must be {expected}, got {got}")]
    DType {
        /// The op that rejected the input.
        op: Op,
        /// The argument name.
        arg: &'static str,
        /// Accepted types, in words ("F32", "F32|F16|BF16", "the dtype of x (BF16)").
        expected: String,
        /// The actual type.
        got: DType,
    },
    /// An op parameter is out of its valid range or inconsistent with the shapes.
    #[error("{op}: parameter `{param}` must be {expected}, got {got}")]
    Param {
        /// The op that rejected the input.
        op: Op,
        /// The parameter name (`top_k`, `softmax_scale`, ...).
        param: &'static str,
        /// The rule, in words ("<= E (256)").
        expected: String,
        /// The actual value.
        got: String,
    },
    /// A tensor is missing where the contract requires it (with another one, or for these
    /// parameters), present where it forbids it, or holds values the op cannot take (a
    /// non-finite value where finite ones are required; the first bad element is named).
    #[error("{op}: `{arg}` must be {expected}, got {got}")]
    Input {
        /// The op that rejected the input.
        op: Op,
        /// The argument name.
        arg: &'static str,
        /// The rule, in words ("given together with `input_ids`", "finite").
        expected: String,
        /// What was given ("absent", "NaN at row 3 ([3, 17])").
        got: String,
    },
    /// An index held in a tensor (expert id, block-table entry, sequence length) is out of
    /// range. Reported for the first offending element in row-major order.
    #[error("{op}: `{arg}`{index:?} = {value} is outside the valid range {valid}")]
    IndexOutOfRange {
        /// The op that rejected the input.
        op: Op,
        /// The index tensor's name.
        arg: &'static str,
        /// Position of the first bad element.
        index: Vec<usize>,
        /// Its value.
        value: i64,
        /// The valid range, e.g. "[-1, 64)".
        valid: String,
    },
    /// A tensor given to a backend was created by a different backend.
    #[error("{op}: `{arg}` lives on backend `{got}`, expected `{expected}`")]
    WrongBackend {
        /// The op (or call) that rejected the tensor.
        op: &'static str,
        /// The argument name.
        arg: &'static str,
        /// The backend the call went to.
        expected: String,
        /// The backend that owns the tensor.
        got: String,
    },
    /// The backend does not implement this op for this dtype or these parameters.
    #[error("backend `{backend}` does not support {op} ({what}): {reason}")]
    Unsupported {
        /// The backend name.
        backend: String,
        /// The op.
        op: Op,
        /// What is unsupported ("BF16", "group_select=max", ...).
        what: String,
        /// Why.
        reason: String,
    },
    /// The backend cannot run on this machine (no SDK, no driver, no device).
    #[error("backend `{backend}` is unavailable: {reason}")]
    Unavailable {
        /// The backend name.
        backend: String,
        /// Why, with every library path tried.
        reason: String,
    },
    /// An optional backend capability (a benchmark ceiling) is not provided.
    #[error("backend `{backend}` does not provide {what}")]
    NotProvided {
        /// The backend name.
        backend: String,
        /// The capability (`copy_bench`, `dense_gemm`, `limits_bench`).
        what: &'static str,
    },
    /// A shape whose element or byte count does not fit in the address space.
    #[error("a {dtype} tensor of shape {shape} is too large: its byte count overflows the address space")]
    Size {
        /// The shape asked for.
        shape: Shape,
        /// Its element type.
        dtype: DType,
    },
    /// Memory could not be allocated (host or device).
    #[error("{what}: cannot allocate {bytes} bytes")]
    OutOfMemory {
        /// What the memory was for (backend and call, e.g. "cpu alloc_zeroed").
        what: String,
        /// The size asked for.
        bytes: usize,
    },
    /// A host tensor was built from inconsistent parts.
    #[error("tensor: {0}")]
    Tensor(String),
    /// A range of elements a copy names (`upload_into`, `copy_into`) lies outside its
    /// tensor. Nothing is written.
    #[error("{call}: `{arg}` range of {len} elements at offset {offset} lies outside its {size} elements")]
    OutOfBounds {
        /// The call (`upload_into`, `copy_into`, `download_into`).
        call: &'static str,
        /// The tensor (`src`, `dst`).
        arg: &'static str,
        /// First element of the range.
        offset: usize,
        /// Elements in the range.
        len: usize,
        /// Elements in the tensor.
        size: usize,
    },
    /// The tensors a copy joins (`upload_into`, `copy_into`) have different element types.
    /// Nothing is written.
    #[error("{call}: `{arg}` must be {expected} (the dtype of `{other}`), got {got}")]
    DTypeMismatch {
        /// The call (`upload_into`, `copy_into`).
        call: &'static str,
        /// The tensor whose dtype disagrees (`dst`).
        arg: &'static str,
        /// The tensor it must agree with (`src`).
        other: &'static str,
        /// The dtype of `other`.
        expected: DType,
        /// The dtype of `arg`.
        got: DType,
    },
    /// The queue or stream handed to [`crate::Backend::with_queue`] cannot carry this
    /// backend's work (another context or device, a null handle, out-of-order execution).
    #[error("backend `{backend}`: with_queue: {reason}")]
    Queue {
        /// The backend name.
        backend: String,
        /// What is wrong with the handle.
        reason: String,
    },
    /// A device or driver call failed.
    #[error("backend `{backend}`: {call} failed: {message}")]
    Device {
        /// The backend name.
        backend: String,
        /// The vendor call (or step) that failed.
        call: String,
        /// The vendor's status and message.
        message: String,
    },
}

/// Result alias for moemla calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The [`Error::Unsupported`] a backend returns for a contract-v2 `format` of `op` it
    /// does not implement (ops never hand it one it does not list; this covers the arms of
    /// exhaustive matches).
    pub fn unsupported_format(backend: &str, op: Op, format: crate::Format) -> Self {
        Error::Unsupported {
            backend: backend.to_string(),
            op,
            what: format.name().to_string(),
            reason: "not implemented by this backend (contract v2)".to_string(),
        }
    }

    /// An [`Error::IndexOutOfRange`] for the element at row-major `linear` in a tensor of
    /// `shape`: the position is reported per dimension.
    pub fn index_out_of_range(
        op: Op,
        arg: &'static str,
        shape: &Shape,
        linear: usize,
        value: i64,
        valid: impl Into<String>,
    ) -> Self {
        Error::IndexOutOfRange {
            op,
            arg,
            index: shape.unravel(linear),
            value,
            valid: valid.into(),
        }
    }
}
