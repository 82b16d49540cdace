//! Value tests: each op, each run dtype, small and DeepSeek-sized shapes, against the f64
//! reference computed from the exact (rounded) inputs; plus the memory calls.

pub mod experts;
pub mod mla;
mod mla_problem;
pub mod route;
pub mod tensors;
