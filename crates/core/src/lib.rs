//! # moemla-core
//!
//! The op contract of moemla: DeepSeekMoE routing and experts, Multi-head Latent Attention
//! decode, and (contract v2) FP8 checkpoints, the FP8 latent cache and DeepSeek Sparse
//! Attention, defined once (shapes, dtypes, semantics, errors) for every backend.
//! Op semantics: `docs/ops.md` in the repository.
//!
//! ## Who uses what
//!
//! **Users** (an inference engine, a test, the `moemla` command) use the crate root:
//!
//! - [`ops`]: the ops, which validate input before any backend sees it (and their `_into`
//!   forms, writing into tensors the caller owns);
//! - data: [`HostTensor`] (host memory), [`DeviceTensor`] (a backend's memory, including
//!   memory the caller owns via [`DeviceTensor::from_raw`]), [`Shape`], [`DType`];
//! - parameters: [`RouteParams`], [`ExpertsParams`], [`MlaDecodeParams`], ...;
//! - outcomes: [`Error`] / [`Result`], the op outputs ([`MoeRouteOutput`], ...);
//! - backends as handles: `Arc<dyn` [`Backend`]`>` (upload, download, synchronize,
//!   [`Backend::info`]), what they support ([`OpSupport`], [`Format`]) and how they are
//!   verified ([`BackendInfo`], [`Verification`]); [`BackendFactory`] to list them;
//! - [`fp8`]: the FP8 codecs (preparing FP8 weights and the 656-byte cache rows).
//!
//! **Backend authors** use [`vendor`]: the [`vendor::Backend`] trait they implement,
//! [`vendor::DeviceBuffer`], the validated calls ([`vendor::calls`]), the index checks
//! ([`vendor::indices`]), range checks ([`vendor::memory`]), fallible allocation
//! ([`vendor::alloc`]) and the factory. `docs/adding-a-backend.md` walks through it.
//!
//! The vendor modules and [`DeviceBuffer`], [`OpenFn`] are also re-exported at the root
//! for compatibility (`moemla_core::calls` is `moemla_core::vendor::calls`); new code
//! names them through [`vendor`].

pub mod amx;
mod backend;
mod device;
mod dtype;
mod error;
mod factory;
pub mod fp8;
mod host;
pub mod ops;
mod params;
pub mod peak;
mod shape;
mod validate;
pub mod vendor;

pub use backend::{
    Backend, BackendInfo, DeviceKind, ExpertWeight, Format, MeasuredLimits, OpSupport, Traffic,
    Verification, VerificationKind,
};
pub use calls::{DsaIndexerTopkOutput, MlaDecodeOutput, MoeRouteOutput};
pub use device::{DeviceBuffer, DeviceTensor};
pub use dtype::DType;
pub use error::{Error, Op, Result};
pub use factory::{device_backend_name, BackendFactory, DeviceCountFn, OpenDeviceFn, OpenFn};
pub use host::{Element, HostTensor};
pub use params::{
    ActivationQuant, ActivationScale, CacheWriteParams, ExpertsParams, GroupSelect, IndexerParams,
    KvFormat, KvQuantizeParams, MlaDecodeParams, RouteParams, ScoreFunc, SparseDecodeParams,
};
pub use shape::Shape;
/// Also re-exported for compatibility: the modules of [`vendor`].
pub use vendor::{alloc, calls, indices, memory};
