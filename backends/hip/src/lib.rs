//! # moemla-hip
//!
//! The moemla backend for HIP devices: AMD ROCm (MI300X gfx942, MI250 gfx90a) and Hygon
//! DTK DCUs. The HIP runtime and hipRTC are loaded at run time (no ROCm needed to build);
//! the kernels are the CUDA backend's sources (`kernels/cuda`, with the portability header
//! `kernels/common/moemla_device.h`), compiled by hipRTC for the device's `gcnArchName`
//! and cached per (module, arch). Wavefronts are 64 lanes: lane counts come from the
//! header and the device's `warpSize`, never from a literal.
//!
//! Library search: `MOEMLA_HIP_LIB` / `MOEMLA_HIPRTC_LIB` (exact files) first, then ROCm
//! (`$ROCM_PATH`, `$HIP_PATH`, `/opt/rocm`), then DTK (`$DTK_PATH`, `/opt/dtk`); see
//! [`flavour::SearchList`].

mod args;
mod device;
pub mod error;
pub mod flavour;
pub mod hiprtc;
pub mod kernels;
pub mod loader;
mod memory;
mod ops;

use device::Device;
use flavour::SearchList;
use memory::{DeviceHandle, HipBuffer};
use moemla_core::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, HostTensor, MlaDecodeOutput, MoeRouteOutput,
    OpSupport, Result, Shape, Verification, VerificationKind,
};
use std::sync::Arc;

pub use device::DeviceProps;
pub use flavour::Flavour;

/// The backend's name, as `moemla devices` and device tensors show it.
pub const NAME: &str = "hip";

/// What has been verified, and where. Never claims more than was run.
pub const VERIFICATION_DETAIL: &str = "kernels compiled in CI, never run on AMD or Hygon \
    silicon: offline by clang-19 for gfx942, gfx90a and gfx906, and through this backend's \
    hipRTC path (Debian ROCm 5.2) for gfx90a and gfx906; code objects checked (EM_AMDGPU, \
    arch, every entry point)";

/// The HIP backend on one device.
pub struct HipBackend {
    device: Arc<DeviceHandle>,
    name: Arc<str>,
}

impl HipBackend {
    /// Device 0, with the library search list from the environment. Returns
    /// [`moemla_core::Error::Unavailable`] (listing every library tried, or saying no
    /// device was found) instead of panicking when ROCm / DTK or a GPU is missing.
    pub fn new() -> Result<HipBackend> {
        HipBackend::with_search(&SearchList::from_env(), 0)
    }

    /// Device `ordinal`, with an explicit library search list.
    pub fn with_search(search: &SearchList, ordinal: i32) -> Result<HipBackend> {
        let device = Device::open(search, ordinal)?;
        Ok(HipBackend {
            device: Arc::new(DeviceHandle(device)),
            name: Arc::from(NAME),
        })
    }

    /// The device's properties (name, arch, compute units, warp size, memory).
    pub fn props(&self) -> &DeviceProps {
        &self.device.0.props
    }

    fn buffer<'a>(
        &self,
        t: &'a DeviceTensor,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&'a HipBuffer> {
        t.buffer::<HipBuffer>(NAME, call, arg)
    }

    fn tensor(&self, buffer: HipBuffer, shape: Shape, dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(buffer), self.name.clone(), shape, dtype)
    }
}

impl Backend for HipBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        let dev = &self.device.0;
        let p = &dev.props;
        BackendInfo {
            name: NAME.to_string(),
            vendor: dev.flavour().vendor().to_string(),
            device: format!("{} ({})", p.name, p.arch),
            memory_bytes: Some(p.memory_bytes),
            supported: if p.warp_size == ops::KERNEL_WAVEFRONT {
                OpSupport::all_v1()
            } else {
                Vec::new()
            },
            verification: Verification {
                kind: VerificationKind::CompileOnly,
                detail: VERIFICATION_DETAIL.to_string(),
            },
            notes: vec![
                format!(
                    "flavour {}: runtime {}",
                    dev.flavour(),
                    dev.runtime_path().display()
                ),
                format!("hipRTC {}", dev.libs.rtc_path.display()),
                format!(
                    "gcnArchName {}, {} compute units, wavefront {} lanes",
                    p.arch, p.compute_units, p.warp_size
                ),
                "portable kernels (no MFMA matrix cores yet)".to_string(),
            ],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let bytes = shape.elem_count() * dtype.size_in_bytes();
        let buffer = HipBuffer::zeroed(&self.device, bytes)?;
        Ok(self.tensor(buffer, shape.clone(), dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let buffer = HipBuffer::alloc(&self.device, host.as_bytes().len())?;
        buffer.write(host.as_bytes())?;
        Ok(self.tensor(buffer, host.shape().clone(), host.dtype()))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        let bytes = self.buffer(tensor, "download", "tensor")?.read()?;
        HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), bytes)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.device.0.synchronize()?)
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
}
