//! # moemla-cuda
//!
//! The CUDA backend: the driver API through cudarc (loaded at run time), kernels from
//! `kernels/cuda` compiled by NVRTC to CUBIN for the device's exact compute capability on
//! first use and cached per (module, arch). f16/bf16 GEMM tiles use `mma.sync` m16n8k16
//! tensor-core instructions on sm_80 and newer.
//!
//! Verification: silicon on the NVIDIA H200 ([`VERIFIED_ON`], sm_90), where every committed
//! golden case passed with compute-sanitizer's memcheck clean on a v1 subset; unverified on
//! any other device ([`device_verification`]). CI compiles every kernel for sm_80 and sm_90
//! (PTX and CUBIN) and runs them on the host emulator; the sm_80 build has not run on
//! silicon. `scripts/device-check.sh` is the one command that checks them on a GPU (`pack`
//! here, `run` there).
//!
//! Benchmark ceilings ([`Backend::copy_bench`], [`Backend::dense_gemm`]): device copies
//! timed with CUDA events, and cuBLAS `cublasGemmEx` (libcublas loaded at run time, see
//! [`cublas`]), both run on the same H200.
//!
//! Ops run through the launch layer shared with the HIP backend
//! ([`moemla_gpu_launch::GpuRunner`] over [`CudaDevice`]): they enqueue on the device's
//! stream and return; index errors found on the device surface at the next
//! [`Backend::synchronize`] or [`Backend::download`] (kernels/README.md).
//!
//! [`CudaBackend::new`] never panics on a machine without the driver, NVRTC or a device:
//! it returns [`Error::Unavailable`] with the reason.

mod ceilings;
pub mod cublas;
mod device;
mod error;
pub mod loader;
pub mod nvrtc;

pub use device::{CudaBuffer, CudaDevice};
pub use error::CudaError;

use error::OrCore;
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, Error, Result, Verification, VerificationKind,
};
use moemla_gpu_launch::GpuRunner;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The backend's name.
pub const NAME: &str = "cuda";

/// How this backend has been verified, shown by `moemla devices` even where it cannot run;
/// [`Backend::info`] says what holds for the device in hand ([`device_verification`]).
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::Silicon,
        detail: VERIFICATION_DETAIL.to_string(),
    }
}

/// The GPU on which every committed golden case (contract v1 and v2) passed, with
/// compute-sanitizer memcheck clean on a v1 subset (`scripts/device-check.sh run`): its
/// name as the driver reports it, its compute capability (`major * 10 + minor`) and when.
pub const VERIFIED_ON: (&str, u32, &str) = ("NVIDIA H200", 90, "2026-12-04");

/// The verification that holds for a device named `name` of compute capability `arch`:
/// silicon for the verified device ([`VERIFIED_ON`]: name and architecture), unverified for
/// every other, a sibling of the same architecture included (it gets its own NVRTC build
/// and its own plan: another SM count, other split counts and grids).
pub fn device_verification(name: &str, arch: u32) -> Verification {
    let (verified, verified_arch, date) = VERIFIED_ON;
    if name == verified && arch == verified_arch {
        return Verification {
            kind: VerificationKind::Silicon,
            detail: format!("golden sets passed on this {verified} (sm_{arch}), {date}"),
        };
    }
    let how = if arch == verified_arch {
        "the same architecture as the verified"
    } else {
        "verified:"
    };
    Verification {
        kind: VerificationKind::Unverified,
        detail: format!(
            "the golden set has not run on this {name} (sm_{arch}) ({how} {verified}, \
             sm_{verified_arch}, {date}); run `moemla conformance --backend cuda`"
        ),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (`Err(Error::Unavailable)` with the reason where it cannot run).
/// Its devices are the driver's, by ordinal ([`device_count`]): `cuda:i` opens CUDA device
/// `i`, `cuda` device 0.
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::with_devices(NAME, claimed_verification(), device_count, |i| {
        Ok(Arc::new(CudaBackend::with_ordinal(i)?) as Arc<dyn Backend>)
    })
}

/// How many CUDA devices the driver reports (`cuDeviceGetCount`); 0 where libcuda is
/// missing, lacks a symbol or fails (opening device 0 then says why).
pub fn device_count() -> usize {
    // SAFETY: only tries to dlopen the driver library's names; calls nothing in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    match std::panic::catch_unwind(cudarc::driver::CudaContext::device_count) {
        Ok(Ok(count)) => usize::try_from(count).unwrap_or(0),
        _ => 0,
    }
}

/// What `moemla devices` says about how far this backend has been checked.
pub const VERIFICATION_DETAIL: &str = "NVIDIA H200 (sm_90), 2026-12-04, driver 580 / CUDA 13.0: \
     every golden case of the set then (v1 and v2) passed (the six v2 experts cases with \
     UE8M0 weight scales, added 2026-12-06, not yet run there), compute-sanitizer memcheck \
     clean on a v1 subset; other devices unverified; sm_80 compiled by NVRTC in CI and run \
     on a host emulator, not on silicon; the launcher's shared-memory opt-in changed after that run (every kernel \
     with dynamic shared memory now opts in, 2026-12-04): compiled and unit-tested, not yet \
     run on silicon";

/// One NVIDIA GPU (named `cuda` for device 0, `cuda:i` for device `i`).
pub struct CudaBackend {
    gpu: GpuRunner<CudaDevice>,
    /// cuBLAS and its handle, opened by the first [`Backend::dense_gemm`].
    blas: OnceLock<Result<ceilings::Blas>>,
}

impl CudaBackend {
    /// The first CUDA device.
    pub fn new() -> Result<Self> {
        Self::with_ordinal(0)
    }

    /// CUDA device `ordinal`, as the backend named `cuda` (ordinal 0) or `cuda:ordinal`.
    /// Fails with [`Error::Unavailable`] (never a panic) when libcuda, NVRTC or the device
    /// is missing.
    pub fn with_ordinal(ordinal: usize) -> Result<Self> {
        let name = moemla_core::device_backend_name(NAME, ordinal);
        let unavailable = |reason: String| Error::Unavailable {
            backend: name.clone(),
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
        if usize::try_from(count).map_or(true, |n| n <= ordinal) {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} ({count} device(s) found)"
            )));
        }
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cuDevicePrimaryCtxRetain failed: {e:?}")))?;
        let dev = CudaDevice::open(ctx, nvrtc).or_core()?;
        Ok(CudaBackend {
            gpu: GpuRunner::new(dev, name),
            blas: OnceLock::new(),
        })
    }

    /// The device.
    pub fn device(&self) -> &CudaDevice {
        self.gpu.device()
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        self.gpu.name()
    }

    fn info(&self) -> BackendInfo {
        let dev = self.device();
        BackendInfo {
            name: self.gpu.name().to_string(),
            vendor: "NVIDIA".to_string(),
            device: format!("{} (sm_{})", dev.name, dev.arch),
            device_kind: moemla_core::DeviceKind::Accelerator,
            memory_bytes: Some(dev.memory_bytes),
            supported: moemla_gpu_launch::supported(),
            verification: device_verification(&dev.name, dev.arch),
            notes: vec![
                dev.nvrtc_note(),
                format!(
                    "{} SMs, {} bytes of shared memory per block (opt-in)",
                    dev.limits.compute_units, dev.limits.max_shared_bytes
                ),
                if dev.limits.tensor_cores {
                    "f16/bf16 GEMM tiles on tensor cores (mma.sync m16n8k16)".to_string()
                } else {
                    "no mma.sync below sm_80: f16/bf16 run on the CUDA-core path".to_string()
                },
            ],
        }
    }

    moemla_gpu_launch::runner_backend_methods!(gpu);

    /// `queue` is a `CUstream` of this device's primary context (cuStreamGetCtx must name
    /// it: else `Error::Queue`, as for null). The handle shares the device, its memory, the
    /// loaded kernels and the traffic counts, and has its own workspace and index-error
    /// flags (reported by its own synchronize / downloads). cuBLAS (`dense_gemm`) opens
    /// its own handle on the stream.
    unsafe fn with_queue(&self, queue: *mut std::ffi::c_void) -> Result<Arc<dyn Backend>> {
        // SAFETY: the caller upholds `Backend::with_queue`'s contract: `queue` is null or a
        // valid stream of this device, alive while the handle and its tensors are used.
        let gpu = unsafe { self.gpu.with_stream(queue)? };
        Ok(Arc::new(CudaBackend {
            gpu,
            blas: OnceLock::new(),
        }))
    }

    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<Duration> {
        ceilings::copy_bench(self.device(), bytes, reps)
    }

    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        // Operands first, so bad input is reported the same with or without cuBLAS.
        ceilings::gemm_dims(a.dims(), b.dims(), a.dtype(), b.dtype())?;
        let blas = self
            .blas
            .get_or_init(|| ceilings::Blas::open(self.device()))
            .as_ref()
            .map_err(Clone::clone)?;
        let (c, dims, bytes) = ceilings::dense_gemm(self.device(), blas, a, b)?;
        let c = CudaBuffer::new(c, bytes, &self.device().stream);
        Ok(self.gpu.tensor(c, dims, a.dtype()))
    }

    fn dense_gemm_impl(&self, dtype: DType) -> String {
        let lib = match self.blas.get() {
            Some(Ok(blas)) => format!(" [{}]", blas.path()),
            _ => String::new(),
        };
        format!("{}{lib}", ceilings::dense_gemm_impl(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_verified_device_claims_silicon() {
        // The backend-wide claim names the same device, architecture and date.
        let (name, arch, date) = VERIFIED_ON;
        assert!(VERIFICATION_DETAIL.starts_with(&format!("{name} (sm_{arch}), {date}")));
        let h200 = device_verification("NVIDIA H200", 90);
        assert_eq!(h200.kind, VerificationKind::Silicon);
        assert!(
            h200.detail.contains("NVIDIA H200 (sm_90), 2026-12-04"),
            "{h200}"
        );
        // A sibling of the same architecture compiles and plans for itself: unverified.
        let h100 = device_verification("NVIDIA H100 80GB HBM3", 90);
        assert_eq!(h100.kind, VerificationKind::Unverified);
        assert!(h100
            .detail
            .contains("the same architecture as the verified NVIDIA H200"));
        for arch in [80, 86, 89, 100] {
            let v = device_verification("NVIDIA A100-SXM4-80GB", arch);
            assert_eq!(v.kind, VerificationKind::Unverified, "sm_{arch}");
            assert!(
                v.detail
                    .contains(&format!("(sm_{arch}) (verified: NVIDIA H200")),
                "{v}"
            );
        }
    }
}
