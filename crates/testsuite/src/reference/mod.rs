//! The f64 reference of the op contract (`docs/ops.md`), written as
//! plain loops. It shares no code with any backend: it is what backends are judged by.
//! Inputs are the exact values a backend received (after rounding to the run dtype),
//! widened to f64.

mod experts;
mod mla;
mod route;

pub use experts::moe_experts;
pub use mla::{mla_decode, MlaDims, MlaRef};
pub use route::{moe_route, RouteRef};
