//! # moemla-gpu-launch
//!
//! Everything the CUDA and HIP backends share, written once:
//!
//! - [`module`]: the kernel modules (`kernels/cuda/*.cu` behind `moemla_device.h`) and
//!   their entry points;
//! - [`device`]: the small trait each backend implements ([`GpuDevice`]: alloc, fill,
//!   upload, download, launch, synchronize) and the per-kernel cache of loaded functions
//!   ([`KernelCache`]);
//! - [`runner`]: the one generic runner ([`GpuRunner`]) that turns validated calls into
//!   launches: plans from `moemla-kernel-plan`, each launch's argument list, workspaces,
//!   and deferred index errors;
//! - [`flags`]: the error-flag rule of kernels/README.md (encoding, decoding, the
//!   per-backend flag arena);
//! - [`args`]: kernel arguments as `cuLaunchKernel` / `hipModuleLaunchKernel` take them;
//! - [`library`]: the declarative symbol table for run-time loaded vendor libraries
//!   ([`symbol_table!`]) and the search that reports every path tried.
//!
//! ## No host synchronization inside an op
//!
//! Ops enqueue their launches on the backend's one stream and return. Index errors found
//! on the device (bad `topk_ids`, `block_table`, `cache_seqlens` entries) are recorded in
//! the backend's error-flag buffer and reported, as [`moemla_core::Error::IndexOutOfRange`]
//! naming the op, the argument and the first bad position, by the next
//! [`GpuRunner::synchronize`] or [`GpuRunner::download`]; the outputs of a flagged op are
//! not meaningful. Nothing is read out of bounds either way.

pub mod args;
pub mod device;
pub mod flags;
pub mod library;
pub mod module;
pub mod runner;

#[doc(hidden)]
pub use moemla_core as __core;

/// The symbol-table macro of `moemla-dylib` (see [`library`]).
pub use moemla_dylib::symbol_table;

pub use args::{Arg, ArgSlots};
pub use device::{GpuBuffer, GpuDevice, KernelCache};
pub use module::Module;
pub use runner::{supported, GpuRunner};
