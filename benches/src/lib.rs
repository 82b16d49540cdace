//! # moemla-benches
//!
//! Benchmarks of the v1 ops at DeepSeek shapes. Every time is reported against a roofline
//! floor built from ceilings measured by the same run: on a CPU the host's physical limits
//! (read bandwidth, f32 FMA peak, native bf16 dot peak: [`host`]), elsewhere a large device
//! copy and the backend's best dense GEMM — so numbers mean something on a noisy shared
//! machine and compare across devices.
//!
//! Used by `moemla bench` and by the criterion benches in `benches/ops.rs`.

pub mod case;
pub mod ceilings;
pub mod cost;
pub mod host;
pub mod inputs;
pub mod peer;
pub mod report;
pub mod run;
pub mod timing;

pub use case::{BenchCase, Suite};
pub use ceilings::Ceilings;
pub use report::Row;
