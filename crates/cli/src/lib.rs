//! # moemla
//!
//! Run-time discovery and selection of the backends compiled into this build, for
//! integrators that pick hardware at run time, and the library behind the `moemla` command.
//!
//! ```
//! let cpu = moemla::select(Some("cpu")).unwrap();
//! assert_eq!(cpu.name(), "cpu");
//! ```

pub mod registry;

pub use moemla_core as core;
pub use registry::{discover, names, select, BackendEntry};

/// The README's Rust example, compiled and run as a doc-test.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
