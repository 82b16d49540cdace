//! The vendor-facing API: what a backend crate implements and uses. Users of moemla (an
//! inference engine calling ops) need none of it beyond holding an `Arc<dyn Backend>`.
//!
//! - [`Backend`]: the trait a device family implements; its op methods receive validated
//!   calls ([`calls`]) and return outputs of the contract's shapes.
//! - [`DeviceBuffer`]: the trait of a backend's per-tensor memory, wrapped in a
//!   [`crate::DeviceTensor`] with [`crate::DeviceTensor::new`] and recovered with
//!   [`crate::DeviceTensor::buffer`].
//! - [`BackendFactory`] / [`OpenFn`]: how the crate announces itself to a registry.
//! - [`indices`]: the contract's index-content checks, for backends that read indices on
//!   the host; [`memory`]: the range checks of `upload_into` / `copy_into`; [`alloc`]:
//!   fallible host allocation.
//!
//! A backend's crate usually starts with
//!
//! ```
//! use moemla_core::vendor::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
//! use moemla_core::vendor::{Backend, BackendFactory, DeviceBuffer};
//! use moemla_core::{DType, DeviceTensor, Error, HostTensor, Result, Shape};
//! ```
//!
//! `backends/template` in the repository is a complete skeleton to copy.

pub mod alloc;
pub mod calls;
pub mod indices;
pub mod memory;

pub use crate::backend::Backend;
pub use crate::device::DeviceBuffer;
pub use crate::factory::{
    device_backend_name, BackendFactory, DeviceCountFn, OpenDeviceFn, OpenFn,
};
