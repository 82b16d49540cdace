//! The kernel sources hipRTC compiles are the shared launch layer's modules
//! ([`Module`]: the portability header followed by a `kernels/cuda` file, as
//! `kernels/README.md` prescribes). What is HIP's own is the offline shim.

pub use moemla_gpu_launch::Module;

/// Declarations of the HIP device built-ins hipRTC provides implicitly, for compiling the
/// same sources offline with `clang -x hip -nogpuinc -nogpulib` (CI). Never given to hipRTC.
pub const OFFLINE_SHIM: &str = include_str!("../../../kernels/hip/moemla_hip_offline.h");
