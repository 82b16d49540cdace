//! # moemla-cuda
//!
//! The CUDA backend: the driver API through cudarc (loaded at run time), kernels from
//! `kernels/cuda` compiled by NVRTC to CUBIN for the device's exact compute capability on
//! first use and cached per (module, arch). f16/bf16 GEMM tiles use `mma.sync` m16n8k16
//! tensor-core instructions on sm_80 and newer.
//!
//! Verification: compile-only. CI compiles every kernel for sm_80 and sm_90 (PTX and
//! CUBIN); the kernels have not run on NVIDIA silicon. `scripts/gpu-check.sh` is the one
//! command that checks them on a GPU.
//!
//! Benchmark ceilings ([`Backend::copy_bench`], [`Backend::dense_gemm`]): device copies
//! timed with CUDA events, and cuBLAS `cublasGemmEx` (libcublas loaded at run time, see
//! [`cublas`]). They are compile-only too: never run on a GPU.
//!
//! [`CudaBackend::new`] never panics on a machine without the driver, NVRTC or a device:
//! it returns [`Error::Unavailable`] with the reason.

mod ceilings;
pub mod cublas;
mod device;
mod error;
pub mod loader;
pub mod nvrtc;
mod ops;

pub use device::CudaBuffer;
pub use error::CudaError;

use device::Device;
use moemla_core::calls::{
    MlaDecodeCall, MlaDecodeOutput, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, Error, HostTensor, OpSupport, Result, Shape,
    Verification, VerificationKind,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The backend's name.
pub const NAME: &str = "cuda";

/// How this backend has been verified, shown by `moemla devices` even where it cannot run.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::CompileOnly,
        detail: VERIFICATION_DETAIL.to_string(),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (`Err(Error::Unavailable)` with the reason where it cannot run).
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::new(NAME, claimed_verification(), || {
        Ok(Arc::new(CudaBackend::new()?) as Arc<dyn Backend>)
    })
}

/// What `moemla devices` says about how far this backend has been checked.
pub const VERIFICATION_DETAIL: &str =
    "kernels compiled by NVRTC for sm_80/sm_90 in CI and run on a host emulator; never run on NVIDIA silicon";

/// One NVIDIA GPU.
pub struct CudaBackend {
    dev: Device,
    name: Arc<str>,
    /// cuBLAS and its handle, opened by the first [`Backend::dense_gemm`].
    blas: OnceLock<Result<ceilings::Blas>>,
}

impl CudaBackend {
    /// The first CUDA device.
    pub fn new() -> Result<Self> {
        Self::with_ordinal(0)
    }

    /// CUDA device `ordinal`. Fails with [`Error::Unavailable`] (never a panic) when
    /// libcuda, NVRTC or the device is missing.
    pub fn with_ordinal(ordinal: usize) -> Result<Self> {
        let unavailable = |reason: String| Error::Unavailable {
            backend: NAME.to_string(),
            reason,
        };
        // SAFETY: only tries to dlopen the driver library's names; calls nothing in it.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable(
                "the NVIDIA driver library libcuda.so(.1) was not found by the dynamic loader \
                 (no NVIDIA driver installed?)"
                    .into(),
            ));
        }
        let nvrtc = loader::Nvrtc::load().map_err(unavailable)?;
        // cudarc panics if a driver symbol is missing (a driver older than CUDA 12.9's API);
        // report that as unavailable instead of aborting the caller.
        let count = std::panic::catch_unwind(cudarc::driver::CudaContext::device_count)
            .map_err(|_| {
                unavailable("the NVIDIA driver lacks a required symbol (driver too old)".into())
            })?
            .map_err(|e| unavailable(format!("cuInit / cuDeviceGetCount failed: {e:?}")))?;
        if count <= ordinal as i32 {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} ({count} device(s) found)"
            )));
        }
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cuDevicePrimaryCtxRetain failed: {e:?}")))?;
        let dev = Device::open(ctx, nvrtc).map_err(|e| e.into_error(NAME))?;
        Ok(CudaBackend {
            dev,
            name: Arc::from(NAME),
            blas: OnceLock::new(),
        })
    }

    fn tensor(
        &self,
        slice: cudarc::driver::CudaSlice<u8>,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> DeviceTensor {
        DeviceTensor::new(
            Arc::new(CudaBuffer { slice }),
            self.name.clone(),
            shape,
            dtype,
        )
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.to_string(),
            vendor: "NVIDIA".to_string(),
            device: format!("{} (sm_{})", self.dev.name, self.dev.arch),
            device_kind: moemla_core::DeviceKind::Accelerator,
            memory_bytes: Some(self.dev.memory_bytes),
            supported: OpSupport::all_v1(),
            verification: claimed_verification(),
            notes: vec![
                self.dev.nvrtc_note(),
                format!(
                    "{} SMs, {} bytes of shared memory per block (opt-in)",
                    self.dev.limits.compute_units, self.dev.limits.max_shared_bytes
                ),
                if self.dev.limits.tensor_cores {
                    "f16/bf16 GEMM tiles on tensor cores (mma.sync m16n8k16)".to_string()
                } else {
                    "no mma.sync below sm_80: f16/bf16 run on the CUDA-core path".to_string()
                },
            ],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let bytes = shape.elem_count() * dtype.size_in_bytes();
        let slice = self
            .dev
            .alloc_zeroed(bytes)
            .map_err(|e| e.into_error(NAME))?;
        Ok(self.tensor(slice, shape.clone(), dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let slice = self
            .dev
            .upload(host.as_bytes())
            .map_err(|e| e.into_error(NAME))?;
        Ok(self.tensor(slice, host.shape().clone(), host.dtype()))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        let buf = tensor.buffer::<CudaBuffer>(NAME, "download", "tensor")?;
        let bytes = self
            .dev
            .download(&buf.slice, 0, tensor.size_in_bytes())
            .map_err(|e| e.into_error(NAME))?;
        HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), bytes)
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize().map_err(|e| e.into_error(NAME))
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        ops::moe_route::run(self, call)
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        ops::moe_experts::run(self, call)
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        ops::mla_decode::run(self, call)
    }

    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<Duration> {
        ceilings::copy_bench(&self.dev, bytes, reps)
    }

    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        // Operands first, so bad input is reported the same with or without cuBLAS.
        ceilings::gemm_dims(a.dims(), b.dims(), a.dtype(), b.dtype())?;
        let blas = self
            .blas
            .get_or_init(|| ceilings::Blas::open(&self.dev))
            .as_ref()
            .map_err(Clone::clone)?;
        let (c, dims) = ceilings::dense_gemm(&self.dev, blas, a, b)?;
        Ok(self.tensor(c, dims, a.dtype()))
    }

    fn dense_gemm_impl(&self, dtype: DType) -> String {
        let lib = match self.blas.get() {
            Some(Ok(blas)) => format!(" [{}]", blas.path()),
            _ => String::new(),
        };
        format!("{}{lib}", ceilings::dense_gemm_impl(dtype))
    }
}
