//! # moemla-testsuite
//!
//! The op test suite of moemla, written once over `&dyn Backend` and instantiated by every
//! backend crate in its `tests/suite.rs` (the model: burn's backend tests, IREE's CTS):
//!
//! ```ignore
//! moemla_testsuite::backend_tests!(cpu, || Ok(std::sync::Arc::new(moemla_cpu::CpuBackend::new())));
//! ```
//!
//! - [`cases`]: each op, each dtype, small and DeepSeek-sized shapes, against the f64
//!   [`reference`](mod@reference) computed from the exact inputs the backend received.
//! - [`props`]: proptest properties of each op.
//! - [`errors`]: every validation rule of core and every index-content check, asserting
//!   the error variant and its key fields.
//! - [`memory`]: checks of caller-owned memory (`download_into`) that backend crates call
//!   from their own tests.
//!
//! Nothing here is timed; benchmarks live in `benches/`.

pub mod cases;
pub mod compare;
pub mod errors;
mod harness;
mod macros;
pub mod memory;
pub mod props;
pub mod reference;
pub mod rng;
mod unsupported;

pub use harness::{Ctx, Suite, SuiteConfig};

/// Items the macros need; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use moemla_core::DType;
}
