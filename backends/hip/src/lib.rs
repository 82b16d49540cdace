//! # moemla-hip
//!
//! The moemla backend for HIP devices: AMD ROCm (MI300X gfx942, MI250 gfx90a) and Hygon
//! DTK DCUs. The HIP runtime and hipRTC are loaded at run time (no ROCm needed to build);
//! the kernels are the CUDA backend's sources (`kernels/cuda`, with the portability header
//! `kernels/common/moemla_device.h`), compiled by hipRTC for the device's `gcnArchName`
//! and cached per (module, arch). The kernels take lane counts from the header, which
//! gives 64 on gfx9 (CDNA, Hygon DCU); the backend checks the device's `warpSize` and
//! refuses ops on a device with another wavefront size.
//!
//! Ops run through the launch layer shared with the CUDA backend
//! ([`moemla_gpu_launch::GpuRunner`] over [`HipDevice`]): they enqueue on the device's
//! stream and return; index errors found on the device surface at the next
//! [`Backend::synchronize`] or [`Backend::download`] (kernels/README.md).
//!
//! Library search: `MOEMLA_HIP_LIB` / `MOEMLA_HIPRTC_LIB` (exact files) first, then ROCm
//! (`$ROCM_PATH`, `$HIP_PATH`, `/opt/rocm`), then DTK (`$DTK_PATH`, `/opt/dtk`); see
//! [`flavour::SearchList`].

mod buffer;
mod device;
pub mod error;
pub mod flavour;
pub mod hiprtc;
pub mod kernels;
pub mod loader;
mod props;

use device::{Device, KERNEL_WAVEFRONT};
use flavour::SearchList;
use moemla_core::{Backend, BackendInfo, Error, Result, Verification, VerificationKind};
use moemla_gpu_launch::GpuRunner;
use std::sync::{Arc, OnceLock};

pub use buffer::HipBuffer;
pub use device::HipDevice;
pub use flavour::Flavour;
pub use props::DeviceProps;

/// The backend's name, as `moemla devices` and device tensors show it.
pub const NAME: &str = "hip";

/// What has been verified, and where. Never claims more than was run.
pub const VERIFICATION_DETAIL: &str = "kernels compiled in CI, never run on AMD or Hygon \
    silicon: offline by clang-19 for gfx942, gfx90a and gfx906, and through this backend's \
    hipRTC path (Debian ROCm 5.2) for gfx90a and gfx906; code objects checked (EM_AMDGPU, \
    arch, every entry point)";

/// How this backend has been verified, shown by `moemla devices` even where it cannot run.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::CompileOnly,
        detail: VERIFICATION_DETAIL.to_string(),
    }
}

/// This backend as the registry lists it: [`NAME`], [`claimed_verification`] and the
/// function that opens it (`Err(Error::Unavailable)` with the reason where it cannot run).
///
/// Its devices are the runtime's, by ordinal ([`device_count`]): `hip:i` opens HIP device
/// `i` (`hipSetDevice(i)`), `hip` device 0.
pub fn factory() -> moemla_core::BackendFactory {
    moemla_core::BackendFactory::with_devices(NAME, claimed_verification(), device_count, |i| {
        Ok(Arc::new(HipBackend::with_search(&SearchList::from_env(), i)?) as Arc<dyn Backend>)
    })
}

/// How many HIP devices the runtime found by the environment's search list
/// ([`SearchList::from_env`]) reports (`hipGetDeviceCount`); 0 where no runtime loads or it
/// finds none. Counted once per process.
pub fn device_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| device::device_count(&SearchList::from_env()))
}

/// The HIP backend on one device (named `hip` for device 0, `hip:i` for device `i`).
pub struct HipBackend {
    gpu: GpuRunner<HipDevice>,
}

impl HipBackend {
    /// Device 0, with the library search list from the environment. Returns
    /// [`moemla_core::Error::Unavailable`] (listing every library tried, or saying no
    /// device was found) instead of panicking when ROCm / DTK or a GPU is missing.
    pub fn new() -> Result<HipBackend> {
        HipBackend::with_search(&SearchList::from_env(), 0)
    }

    /// Device `ordinal`, with an explicit library search list, as the backend named `hip`
    /// (ordinal 0) or `hip:ordinal`.
    pub fn with_search(search: &SearchList, ordinal: usize) -> Result<HipBackend> {
        let name = moemla_core::device_backend_name(NAME, ordinal);
        let named = |reason: String| Error::Unavailable {
            backend: name.clone(),
            reason,
        };
        let hip_ordinal = i32::try_from(ordinal)
            .map_err(|_| named(format!("HIP device {ordinal} is beyond hipSetDevice's int")))?;
        let device = Device::open(search, hip_ordinal).map_err(|e| match e {
            Error::Unavailable { reason, .. } => named(reason),
            other => other,
        })?;
        Ok(HipBackend {
            gpu: GpuRunner::new(HipDevice::new(device), name),
        })
    }

    /// The device's properties (name, arch, compute units, warp size, memory).
    pub fn props(&self) -> &DeviceProps {
        &self.gpu.device().0.props
    }
}

impl Backend for HipBackend {
    fn name(&self) -> &str {
        self.gpu.name()
    }

    fn info(&self) -> BackendInfo {
        let dev = &self.gpu.device().0;
        let (p, libs) = (&dev.props, &dev.libs);
        let wave_ok = p.warp_size == KERNEL_WAVEFRONT;
        let mut notes = vec![
            format!("{} runtime {}", libs.flavour, libs.runtime_path.display()),
            format!("hipRTC {}", libs.rtc_path.display()),
            format!(
                "gcnArchName {}, {} compute units, wavefront {} lanes",
                p.arch, p.compute_units, p.warp_size
            ),
            "portable kernels (no MFMA matrix cores yet)".to_string(),
        ];
        if !wave_ok {
            notes.push(format!(
                "no ops: the kernels are built for {KERNEL_WAVEFRONT}-lane wavefronts"
            ));
        }
        BackendInfo {
            name: self.gpu.name().to_string(),
            vendor: libs.flavour.vendor().to_string(),
            device: format!("{} ({})", p.name, p.arch),
            device_kind: moemla_core::DeviceKind::Accelerator,
            memory_bytes: Some(p.memory_bytes),
            supported: if wave_ok {
                moemla_gpu_launch::supported()
            } else {
                Vec::new()
            },
            verification: claimed_verification(),
            notes,
        }
    }

    moemla_gpu_launch::runner_backend_methods!(gpu);

    /// `queue` is a `hipStream_t` of this device (null: `Error::Queue`; the runtime
    /// table has no call that names a stream's device, so another device's stream is not
    /// detected). The handle shares the device, its memory, the loaded kernels and the
    /// traffic counts, and has its own workspace and index-error flags (reported by its own
    /// synchronize / downloads).
    unsafe fn with_queue(&self, queue: *mut std::ffi::c_void) -> Result<Arc<dyn Backend>> {
        // SAFETY: the caller upholds `Backend::with_queue`'s contract: `queue` is null or a
        // valid stream of this device, alive while the handle and its tensors are used.
        let gpu = unsafe { self.gpu.with_stream(queue)? };
        Ok(Arc::new(HipBackend { gpu }))
    }
}
