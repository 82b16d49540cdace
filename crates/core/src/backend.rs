//! The `Backend` trait every device family implements, and what a backend says about itself.

use crate::calls::{MlaDecodeCall, MlaDecodeOutput, MoeExpertsCall, MoeRouteCall, MoeRouteOutput};
use crate::{DType, DeviceTensor, Error, HostTensor, Op, Result, Shape};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A device family's implementation of the v1 ops.
///
/// Object safe: integrators hold backends as `Arc<dyn Backend>`. The op methods receive
/// calls that [`crate::ops`] has already validated (shapes, dtypes, parameters), so every
/// backend rejects malformed input identically; index *contents* (expert ids, block-table
/// entries, sequence lengths) may live on the device and are the backend's to check,
/// returning [`crate::Error::IndexOutOfRange`] for the first bad element, without reading
/// out of bounds. Call the ops through [`crate::ops`], not these methods.
pub trait Backend: Send + Sync {
    /// The backend's name (`cpu`, `opencl`, `cuda`, ...), also stamped on its tensors.
    fn name(&self) -> &str;

    /// Device, capabilities and verification status.
    fn info(&self) -> BackendInfo;

    /// A zero-filled tensor on the device.
    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor>;

    /// Copies a host tensor to the device.
    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor>;

    /// Copies a device tensor to the host (waits for pending work on it).
    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor>;

    /// Waits until all submitted work has finished.
    fn synchronize(&self) -> Result<()>;

    /// `moe_route` on validated input. Use [`crate::ops::moe_route`].
    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput>;

    /// `moe_experts` on validated input; returns `y` [T, H] in the run dtype.
    /// Use [`crate::ops::moe_experts`].
    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor>;

    /// `mla_decode` on validated input. Use [`crate::ops::mla_decode`].
    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput>;

    /// Bandwidth ceiling for benchmarks: the median time of `reps` device-to-device copies
    /// of `bytes` bytes between two buffers allocated and touched beforehand (so neither
    /// allocation nor first-touch page faults are timed). Optional.
    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<std::time::Duration> {
        let _ = (bytes, reps);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "copy_bench",
        })
    }

    /// Compute ceiling for benchmarks: `c[M, N] = a[M, K] . b[N, K]^T` with the backend's
    /// best dense GEMM (f32 accumulation, `c` in the dtype of `a`). Optional.
    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let _ = (a, b);
        Err(Error::NotProvided {
            backend: self.name().to_string(),
            what: "dense_gemm",
        })
    }

    /// Which implementation [`Backend::dense_gemm`] uses for `dtype` (e.g. "gemm crate
    /// 0.19, f32 compute", "cuBLAS bf16"), reported beside the ceiling it measures.
    fn dense_gemm_impl(&self, dtype: DType) -> String {
        let _ = dtype;
        "not provided".to_string()
    }
}

/// How far a backend's results have been checked, and where. A promise to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerificationKind {
    /// The reference implementation itself (checked against the golden set).
    Reference,
    /// Golden cases passed on real hardware.
    Silicon,
    /// Golden cases passed against an emulator of the vendor API.
    Emulator,
    /// Kernels compile for the target; never run on it.
    CompileOnly,
    /// Runs on this device, but the golden set has not been checked on it yet.
    Unverified,
}

/// A verification status with its detail ("CPU via PoCL", "sm_80/sm_90 via NVRTC", ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The kind of evidence.
    pub kind: VerificationKind,
    /// Which device or tool, and when.
    pub detail: String,
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            VerificationKind::Reference => "reference",
            VerificationKind::Silicon => "silicon",
            VerificationKind::Emulator => "emulated",
            VerificationKind::CompileOnly => "compile-only",
            VerificationKind::Unverified => "unverified",
        };
        if self.detail.is_empty() {
            f.write_str(kind)
        } else {
            write!(f, "{kind}: {}", self.detail)
        }
    }
}

/// One (op, run dtype) pair a backend implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpSupport {
    /// The op.
    pub op: Op,
    /// The run dtype (see the contract: logits for moe_route, x for moe_experts, q for
    /// mla_decode).
    pub dtype: DType,
}

impl OpSupport {
    /// Every v1 op in every float dtype.
    pub fn all_v1() -> Vec<OpSupport> {
        Op::ALL
            .into_iter()
            .flat_map(|op| {
                DType::FLOATS
                    .into_iter()
                    .map(move |dtype| OpSupport { op, dtype })
            })
            .collect()
    }
}

/// What kind of device a backend runs on; `moemla::select(None)` prefers accelerators,
/// then CPUs, then emulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// Real accelerator silicon: a GPU, an NPU, an OpenCL GPU or accelerator device.
    Accelerator,
    /// The host CPU (the native CPU backend, or an OpenCL CPU device such as PoCL).
    Cpu,
    /// Software emulating an accelerator's API on the host (e.g. the CANN C-API emulator).
    Emulator,
}

impl DeviceKind {
    /// "accelerator", "cpu" or "emulator".
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Accelerator => "accelerator",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Emulator => "emulator",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a backend reports about itself (`moemla devices`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Backend name, as in [`Backend::name`].
    pub name: String,
    /// Hardware vendor or software stack ("NVIDIA", "AMD ROCm", "PoCL", "moemla").
    pub vendor: String,
    /// Device name as the driver reports it.
    pub device: String,
    /// What kind of device that is (accelerator, CPU, emulator).
    pub device_kind: DeviceKind,
    /// Device memory in bytes, where known.
    pub memory_bytes: Option<u64>,
    /// The (op, dtype) pairs implemented. Calls outside them fail with
    /// [`crate::Error::Unsupported`]; so may parameter combinations a vendor op cannot do
    /// (listed in `notes`).
    pub supported: Vec<OpSupport>,
    /// How the backend has been verified.
    pub verification: Verification,
    /// Further facts: API version, relevant extensions, contract gaps.
    pub notes: Vec<String>,
}

impl BackendInfo {
    /// Whether `op` is implemented for run dtype `dtype`.
    pub fn supports(&self, op: Op, dtype: DType) -> bool {
        self.supported.contains(&OpSupport { op, dtype })
    }
}
