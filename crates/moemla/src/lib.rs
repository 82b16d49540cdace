//! # moemla
//!
//! The library an inference engine depends on: the op contract ([`core`]: tensors, ops,
//! parameters, errors) and the backends compiled in, found and chosen at run time.
//!
//! Each backend is a cargo feature (`cpu`, `opencl`, `cuda`, `hip`, `ascend`, and `plugin`
//! for C plugins named by `MOEMLA_PLUGIN_PATH`; default: all), so an integrator builds only
//! what it ships, e.g. `moemla = { default-features = false, features = ["cpu"] }`. The
//! `moemla` command line (devices, conformance, benchmarks) is the separate `moemla-cli`
//! crate.
//!
//! ```
//! // `MOEMLA_BACKEND` if set, else the best available: accelerators, then CPUs, then
//! // emulators.
//! match moemla::select(None) {
//!     Ok(backend) => println!("{} on a {}", backend.name(), backend.info().device_kind),
//!     Err(why) => println!("no backend: {why}"),
//! }
//! ```

pub mod registry;

pub use moemla_core as core;
/// The C plugin loader: `plugin::factory_for(path)` for a plugin file of your own.
#[cfg(feature = "plugin")]
pub use moemla_plugin as plugin;
pub use registry::{
    compiled_in, discover, factories, names, parse_device, select, BackendEntry, Registry,
    BACKEND_ENV,
};

/// The README's Rust example, compiled and run as a doc-test.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "cpu"))]
pub struct ReadmeDoctests;
