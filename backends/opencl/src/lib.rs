//! # moemla-opencl
//!
//! The moemla OpenCL backend: every v1 op as OpenCL C 1.2 kernels (`kernels/opencl/*.cl`),
//! F32 compute with F32, F16 and BF16 storage. It runs on any OpenCL 1.2 device; CI runs
//! it on PoCL's CPU device.
//!
//! The OpenCL library is loaded at run time (no SDK needed to build). The process holds one
//! context and one in-order queue, made on first use by [`shared`]; pick the device with
//! env `MOEMLA_OPENCL_DEVICE` (an index or a name substring; default the first GPU, else
//! the first device).

mod ceilings;
mod device;
mod error;
mod ops;

pub use device::ClBuffer;

use device::ClDevice;
use moemla_core::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, HostTensor, MlaDecodeOutput, MoeRouteOutput,
    OpSupport, Result, Shape, Verification, VerificationKind,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The backend's name, as `--backend opencl` selects it and as its tensors carry it.
pub const NAME: &str = "opencl";

/// How this backend has been verified as a whole, shown by `moemla devices` even where it
/// cannot run; [`Backend::info`] says what holds for the device in hand.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::Silicon,
        detail: format!(
            "CPU via PoCL {} (golden set in CI); not verified on any other OpenCL device",
            VERIFIED_POCL.join(", ")
        ),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (`Err(Error::Unavailable)` with the reason where it cannot run).
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::new(NAME, claimed_verification(), || {
        Ok(shared()? as Arc<dyn Backend>)
    })
}

/// The OpenCL backend on the process's one device, context and queue.
pub struct OpenClBackend {
    name: Arc<str>,
    device: ClDevice,
}

/// The process-wide OpenCL backend, opened on first call (later calls share it, or get
/// the same `Unavailable` error). One context per process: PoCL fails when contexts are
/// created concurrently.
pub fn shared() -> Result<Arc<OpenClBackend>> {
    static SHARED: OnceLock<Result<Arc<OpenClBackend>>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            Ok(Arc::new(OpenClBackend {
                name: NAME.into(),
                device: ClDevice::open()?,
            }))
        })
        .clone()
}

impl OpenClBackend {
    /// Programs built so far: each (kernel module, storage dtype) is built once per process.
    pub fn programs_built(&self) -> usize {
        self.device.programs_built()
    }

    /// The device, context and queue (for this crate's unit tests).
    #[cfg(test)]
    pub(crate) fn device(&self) -> &ClDevice {
        &self.device
    }

    /// Wraps a buffer as a tensor of this backend.
    fn tensor(&self, buf: ClBuffer, shape: impl Into<Shape>, dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(buf), self.name.clone(), shape, dtype)
    }

    fn verification(&self) -> Verification {
        let facts = &self.device.facts;
        match pocl_version(&facts.platform_version) {
            Some(version) if facts.is_cpu && verified_pocl(version) => Verification {
                kind: VerificationKind::Silicon,
                detail: format!("CPU via PoCL {version}"),
            },
            _ => Verification {
                kind: VerificationKind::Unverified,
                detail: "not verified on this device; run `moemla conformance --backend opencl`"
                    .to_string(),
            },
        }
    }
}

/// PoCL releases (major.minor) on whose CPU device every committed golden case has passed
/// (`moemla conformance --backend opencl`; PoCL 3.1 as Debian 12 ships it).
const VERIFIED_POCL: &[&str] = &["3.1"];

/// Whether `version` ("3.1+debian") is one of [`VERIFIED_POCL`].
fn verified_pocl(version: &str) -> bool {
    VERIFIED_POCL.iter().any(|v| {
        version
            .strip_prefix(v)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// "3.1+debian" from a PoCL platform version ("OpenCL 3.0 PoCL 3.1+debian  Linux, ...").
fn pocl_version(platform_version: &str) -> Option<&str> {
    let mut words = platform_version.split_whitespace();
    words.find(|w| *w == "PoCL")?;
    words.next()
}

impl Backend for OpenClBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> BackendInfo {
        let facts = &self.device.facts;
        let has = |ext: &str| {
            let yes = facts.extensions.split_whitespace().any(|e| e == ext);
            format!("{ext}: {}", if yes { "yes" } else { "no" })
        };
        BackendInfo {
            name: NAME.to_string(),
            vendor: facts.platform.clone(),
            device: facts.name.clone(),
            device_kind: if facts.is_cpu {
                moemla_core::DeviceKind::Cpu
            } else {
                moemla_core::DeviceKind::Accelerator
            },
            memory_bytes: Some(facts.global_mem),
            supported: OpSupport::all_v1(),
            verification: self.verification(),
            notes: vec![
                facts.c_version.trim().to_string(),
                format!(
                    "{} (f16 is read with vload_half; all arithmetic is f32)",
                    has("cl_khr_fp16")
                ),
                has("cl_khr_fp64"),
            ],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let buf = self
            .device
            .alloc_zeroed("alloc_zeroed", shape.byte_len(dtype)?)?;
        Ok(self.tensor(buf, shape.clone(), dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let buf = self.device.upload("upload", host.as_bytes())?;
        Ok(self.tensor(buf, host.shape().clone(), host.dtype()))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        let buf = tensor.buffer::<ClBuffer>(&self.name, "download", "tensor")?;
        let len = tensor.shape().byte_len(tensor.dtype())?;
        let mut bytes = moemla_core::alloc::try_filled_vec::<u8>(len, "opencl download")?;
        self.device.read(buf, 0, &mut bytes)?;
        HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), bytes)
    }

    fn synchronize(&self) -> Result<()> {
        self.device.finish()
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        let (ids, weights) = ops::moe_route::run(&self.device, &self.name, call)?;
        let dims = [call.tokens, call.params.top_k];
        Ok(MoeRouteOutput {
            topk_ids: self.tensor(ids, dims, DType::I32),
            topk_weights: self.tensor(weights, dims, DType::F32),
        })
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        let y = ops::moe_experts::run(&self.device, &self.name, call)?;
        Ok(self.tensor(y, [call.tokens, call.hidden], call.dtype))
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let (o, lse) = ops::mla_decode::run(&self.device, &self.name, call)?;
        Ok(MlaDecodeOutput {
            o: self.tensor(o, [call.batch, call.s_q, call.h_q, call.d_v], call.dtype),
            lse: self.tensor(lse, [call.batch, call.h_q, call.s_q], DType::F32),
        })
    }

    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<Duration> {
        ceilings::copy_bench(&self.device, bytes, reps)
    }

    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        let kernel = ceilings::Gemm::for_device(&self.device);
        let (c, dims) = ceilings::dense_gemm(&self.device, &self.name, kernel, a, b)?;
        Ok(self.tensor(c, dims, a.dtype()))
    }

    fn dense_gemm_impl(&self, dtype: DType) -> String {
        ceilings::dense_gemm_impl(ceilings::Gemm::for_device(&self.device), dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pocl_version_is_the_word_after_pocl() {
        let v = "OpenCL 3.0 PoCL 3.1+debian  Linux, None+Asserts, RELOC, SPIR, LLVM 15.0.6";
        assert_eq!(pocl_version(v), Some("3.1+debian"));
        assert_eq!(pocl_version("OpenCL 3.0 CUDA 12.4.131"), None);
    }

    #[test]
    fn only_verified_pocl_releases_claim_silicon() {
        assert!(verified_pocl("3.1+debian"));
        assert!(verified_pocl("3.1"));
        assert!(!verified_pocl("3.10"));
        assert!(!verified_pocl("6.0+debian"));
    }
}
