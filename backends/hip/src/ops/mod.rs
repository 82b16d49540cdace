//! Op launches: argument marshalling for the shared CUDA/HIP kernels, with launch
//! geometry and workspace sizes from `moemla-kernel-plan`.

pub(crate) mod mla_decode;
pub(crate) mod moe_experts;
pub(crate) mod moe_route;

use crate::args::KernelArgs;
use crate::kernels::KernelModule;
use crate::memory::HipBuffer;
use crate::{HipBackend, NAME};
use moemla_core::{Backend, DType, DeviceTensor, HostTensor, Op, Result, Shape};
use moemla_kernel_plan::{DeviceLimits, Launch, PlanError};
use std::ffi::c_void;

/// Lanes per wavefront the kernels are compiled for on HIP: `moemla_device.h` takes
/// `__AMDGCN_WAVEFRONT_SIZE` and falls back to 64 where the macro is gone (removed in
/// ROCm 7.2), so only 64-lane devices (gfx9: CDNA, Hygon DCU) are known to match.
pub(crate) const KERNEL_WAVEFRONT: i32 = 64;

impl HipBackend {
    /// Refuses devices whose wavefront differs from the kernels' (RDNA runs wave32).
    pub(crate) fn check_wavefront(&self, op: Op) -> Result<()> {
        let warp = self.props().warp_size;
        if warp == KERNEL_WAVEFRONT {
            return Ok(());
        }
        Err(moemla_core::Error::Unsupported {
            backend: NAME.to_string(),
            op,
            what: format!("wavefront of {warp} lanes ({})", self.props().arch),
            reason: format!(
                "the HIP kernels are built for {KERNEL_WAVEFRONT}-lane wavefronts (gfx9: \
                 MI300X, MI250, Hygon DCU)"
            ),
        })
    }

    /// What the launch plans need to know about the device. The kernels' portable path
    /// is used on HIP (no MFMA yet), hence `tensor_cores: false`.
    pub(crate) fn limits(&self) -> DeviceLimits {
        let p = self.props();
        DeviceLimits {
            compute_units: p.compute_units.max(1) as u32,
            warp_size: p.warp_size as u32,
            max_shared_bytes: p.max_shared_per_block.max(0) as u32,
            tensor_cores: false,
        }
    }

    /// The device address of a tensor of this backend.
    pub(crate) fn device_ptr(
        &self,
        t: &DeviceTensor,
        call: &'static str,
        arg: &'static str,
    ) -> Result<*mut c_void> {
        Ok(t.buffer::<HipBuffer>(NAME, call, arg)?.ptr())
    }

    /// A zero-filled scratch tensor of `len` elements.
    pub(crate) fn workspace(&self, len: usize, dtype: DType) -> Result<DeviceTensor> {
        self.alloc_zeroed(&Shape::new(vec![len]), dtype)
    }

    /// `len` error flags set to `INT_MAX` (the kernels atomic-min a bad index into them).
    pub(crate) fn error_flags(&self, len: usize) -> Result<DeviceTensor> {
        self.upload(&HostTensor::from_slice(vec![len], &vec![i32::MAX; len])?)
    }

    /// Reads an error flag: `None` when no element was flagged, else the flagged linear
    /// index into `indices` and the value there (read back from the device).
    pub(crate) fn flagged(
        &self,
        flag: i32,
        indices: &DeviceTensor,
        kernel: &str,
    ) -> Result<Option<(usize, i64)>> {
        if flag == i32::MAX {
            return Ok(None);
        }
        let values = self.download(indices)?.to_i32_vec()?;
        match usize::try_from(flag)
            .ok()
            .and_then(|i| values.get(i).map(|&v| (i, v)))
        {
            Some((linear, value)) => Ok(Some((linear, value as i64))),
            None => Err(moemla_core::Error::Device {
                backend: NAME.to_string(),
                call: kernel.to_string(),
                message: format!(
                    "error flag {flag} is not an index of a {}-element tensor",
                    values.len()
                ),
            }),
        }
    }

    /// Launches one planned kernel of `module` on the device's stream. A grid with a zero
    /// dimension (an empty problem) launches nothing.
    pub(crate) fn launch(
        &self,
        module: &KernelModule,
        launch: &Launch,
        args: &mut KernelArgs,
    ) -> Result<()> {
        if launch.grid.contains(&0) {
            return Ok(());
        }
        let dev = &self.device.0;
        dev.select()?;
        let function = dev.function(module, &launch.kernel)?;
        Ok(dev.launch(
            function,
            launch.grid,
            launch.block,
            launch.shared_bytes,
            args,
        )?)
    }
}

/// The contract's `Unsupported` for a problem the plan cannot launch.
pub(crate) fn plan_error(e: PlanError) -> moemla_core::Error {
    e.into_error(NAME)
}
