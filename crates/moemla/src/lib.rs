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

/// The Rust snippets of README.md and docs/*.md, compiled (and, unless marked `no_run`,
/// run) as doc-tests by `cargo test -p moemla --doc`, so the docs cannot drift from the
/// API. Non-Rust blocks are marked with their language (`text`, `sh`, `toml`, ...).
#[cfg(all(doctest, feature = "cpu", feature = "plugin"))]
pub mod doc_snippets {
    /// README.md.
    #[doc = include_str!("../../../README.md")]
    pub struct Readme;
    /// docs/adding-a-backend.md.
    #[doc = include_str!("../../../docs/adding-a-backend.md")]
    pub struct AddingABackend;
    /// docs/ci.md.
    #[doc = include_str!("../../../docs/ci.md")]
    pub struct Ci;
    /// docs/engine.md.
    #[doc = include_str!("../../../docs/engine.md")]
    pub struct Engine;
    /// docs/conformance.md.
    #[doc = include_str!("../../../docs/conformance.md")]
    pub struct Conformance;
    /// docs/gpu-notes.md.
    #[doc = include_str!("../../../docs/gpu-notes.md")]
    pub struct GpuNotes;
    /// docs/ops.md.
    #[doc = include_str!("../../../docs/ops.md")]
    pub struct Ops;
    /// docs/reliability.md.
    #[doc = include_str!("../../../docs/reliability.md")]
    pub struct Reliability;
}
