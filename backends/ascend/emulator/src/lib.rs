//! # moemla-cann-emulator
//!
//! Test infrastructure, not a product: a CPU implementation of the part of Huawei CANN's C
//! API that `moemla-ascend` calls, exported under CANN's own symbol names and signatures so
//! the backend loads it through its normal loader (`MOEMLA_ASCEND_LIB=<path to
//! libmoemla_cann_emulator.so>`).
//!
//! What it emulates, following CANN's *documented* behaviour (each file cites its pages):
//! - ACL runtime ([`runtime`], [`memory`]): device memory as tracked host allocations (filled
//!   with 0xFF bytes, i.e. NaN, so reads of never-written memory show), streams as queues run
//!   at `aclrtSynchronizeStream`, `aclGetRecentErrMsg`.
//! - aclTensor & co. ([`handles`], [`tensor`]): views (viewDims, strides, offset, storageDims) honoured
//!   and bounds-checked against the allocation.
//! - The two-phase aclnn protocol ([`executor`]): an executor per `GetWorkspaceSize`, used
//!   once, by the matching op, with at least the workspace it asked for.
//! - The aclnn ops ([`ops`]), with CANN's semantics and constraints, not moemla's.
//!
//! Every exported function is `unsafe extern "C"`: callers pass raw pointers, as in C.

pub mod executor;
pub mod handles;
pub mod memory;
pub mod ops;
pub mod runtime;
pub mod status;
pub mod tensor;
