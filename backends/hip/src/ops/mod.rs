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
            compute_units: u32::try_from(p.compute_units).unwrap_or(0).max(1),
            warp_size: u32::try_from(p.warp_size).unwrap_or(0),
            max_shared_bytes: u32::try_from(p.max_shared_per_block).unwrap_or(0),
            tensor_cores: false,
            max_grid: DeviceLimits::HIP_GRID,
            max_grid_threads: DeviceLimits::HIP_GRID_THREADS,
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

    /// A zero-filled scratch tensor of at least `bytes` bytes.
    pub(crate) fn workspace(&self, bytes: usize) -> Result<DeviceTensor> {
        self.alloc_zeroed(&Shape::new(vec![bytes.div_ceil(4)]), DType::I32)
    }

    /// `len` 64-bit error flags, all ones (clean; the kernels atomic-min a bad index into
    /// them, kernels/README.md).
    pub(crate) fn error_flags(&self, len: usize) -> Result<DeviceTensor> {
        self.upload(&HostTensor::from_slice(
            vec![len * 2],
            &vec![-1i32; len * 2],
        )?)
    }

    /// Reads the error flags: `None` for a clean one, else the first bad position and the
    /// value found there.
    pub(crate) fn read_flags(&self, flags: &DeviceTensor) -> Result<Vec<Option<(usize, i64)>>> {
        let words = self.download(flags)?.into_bytes();
        Ok(words
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .map(|w| (w != u64::MAX).then(|| ((w >> 32) as usize, i64::from(w as u32 as i32))))
            .collect())
    }

    /// A kernel's `int` parameter (the plans have checked every size against `i32::MAX`).
    pub(crate) fn int(&self, op: Op, what: &str, value: usize) -> Result<i32> {
        i32::try_from(value).map_err(|_| moemla_core::Error::Unsupported {
            backend: NAME.to_string(),
            op,
            what: format!("{what} = {value}"),
            reason: "exceeds the kernels' int parameters".into(),
        })
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
