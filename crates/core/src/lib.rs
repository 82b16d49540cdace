//! # moemla-core
//!
//! The op contract of moemla: DeepSeekMoE routing and experts, Multi-head Latent Attention
//! decode, and (contract v2) FP8 checkpoints, the FP8 latent cache and DeepSeek Sparse
//! Attention, defined once (shapes, dtypes, semantics, errors) for every backend.
//!
//! - Data: [`HostTensor`] (host memory) and [`DeviceTensor`] (a backend's memory).
//! - Backends implement [`Backend`]; users run ops through [`ops`], which validates input
//!   before any backend sees it.
//! - Op semantics: `docs/ops.md` in the repository.

pub mod alloc;
mod backend;
pub mod calls;
mod device;
mod dtype;
mod error;
mod factory;
pub mod fp8;
mod host;
pub mod indices;
pub mod memory;
pub mod ops;
mod params;
mod shape;
mod validate;

pub use backend::{
    Backend, BackendInfo, DeviceKind, Format, OpSupport, Verification, VerificationKind,
};
pub use calls::{DsaIndexerTopkOutput, MlaDecodeOutput, MoeRouteOutput};
pub use device::{DeviceBuffer, DeviceTensor};
pub use dtype::DType;
pub use error::{Error, Op, Result};
pub use factory::{BackendFactory, OpenFn};
pub use host::{Element, HostTensor};
pub use params::{
    ActivationQuant, ActivationScale, ExpertsParams, GroupSelect, IndexerParams, KvFormat,
    KvQuantizeParams, MlaDecodeParams, RouteParams, ScoreFunc, SparseDecodeParams,
};
pub use shape::Shape;
