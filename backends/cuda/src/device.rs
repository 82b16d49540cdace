//! Context, stream, memory and the compiled-module cache.

use crate::error::{CudaResult, DriverContext};
use crate::loader::Nvrtc;
use crate::nvrtc::{compile, Module};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig};
use moemla_core::DeviceBuffer;
use moemla_kernel_plan::{DeviceLimits, Launch};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SHARED_BYTES: u32 = 48 * 1024;

/// A tensor's device memory: a byte allocation (at least one byte; the tensor may use fewer).
#[derive(Debug)]
pub struct CudaBuffer {
    /// The allocation.
    pub(crate) slice: CudaSlice<u8>,
}

impl DeviceBuffer for CudaBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One CUDA device with its stream and compiled modules.
pub(crate) struct Device {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) name: String,
    pub(crate) memory_bytes: u64,
    /// Compute capability as `10 * major + minor` (80, 90, ...).
    pub(crate) arch: u32,
    pub(crate) limits: DeviceLimits,
    nvrtc: Nvrtc,
    modules: Mutex<HashMap<(Module, u32), Arc<CudaModule>>>,
}

impl Device {
    /// Opens device `ordinal`. The caller has checked that libcuda is present.
    pub(crate) fn open(ctx: Arc<CudaContext>, nvrtc: Nvrtc) -> CudaResult<Device> {
        let (major, minor) = ctx
            .compute_capability()
            .call("cuDeviceGetAttribute(COMPUTE_CAPABILITY)")?;
        let attr = |a: CUdevice_attribute, what: &'static str| ctx.attribute(a).call(what);
        let sms = attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)",
        )?;
        let smem = attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "cuDeviceGetAttribute(MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)",
        )?;
        let name = ctx.name().call("cuDeviceGetName")?;
        let memory_bytes = ctx.total_mem().call("cuDeviceTotalMem")? as u64;
        // SAFETY: every buffer of this backend is used on this one stream only, so the
        // per-buffer events cudarc records for cross-stream ordering are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let arch = (major * 10 + minor) as u32;
        Ok(Device {
            stream,
            name,
            memory_bytes,
            arch,
            limits: DeviceLimits {
                compute_units: u32::try_from(sms).unwrap_or(0).max(1),
                warp_size: 32,
                max_shared_bytes: u32::try_from(smem).unwrap_or(0),
                tensor_cores: major >= 8,
                max_grid: DeviceLimits::CUDA_GRID,
                max_grid_threads: u64::MAX,
            },
            nvrtc,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// NVRTC's version and where it was loaded from.
    pub(crate) fn nvrtc_note(&self) -> String {
        let (major, minor) = self.nvrtc.version();
        format!("NVRTC {major}.{minor} ({})", self.nvrtc.path)
    }

    /// The entry point `kernel` of `module`, compiling and loading the module for this
    /// device's exact sm on first use.
    pub(crate) fn function(&self, module: Module, kernel: &str) -> CudaResult<CudaFunction> {
        let loaded = {
            let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&(module, self.arch)) {
                Some(m) => m.clone(),
                None => {
                    let compiled = compile(&self.nvrtc, module, self.arch)?;
                    let image = cudarc::nvrtc::Ptx::from_binary(compiled.cubin);
                    let m = self
                        .stream
                        .context()
                        .load_module(image)
                        .call("cuModuleLoadData")?;
                    cache.insert((module, self.arch), m.clone());
                    m
                }
            }
        };
        loaded.load_function(kernel).call("cuModuleGetFunction")
    }

    /// A byte allocation of at least `bytes` (one byte for empty tensors), zero-filled.
    pub(crate) fn alloc_zeroed(&self, bytes: usize) -> CudaResult<CudaSlice<u8>> {
        self.stream
            .alloc_zeros::<u8>(bytes.max(1))
            .call("cuMemAllocAsync")
    }

    /// A device copy of `data`.
    pub(crate) fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &[T],
    ) -> CudaResult<CudaSlice<T>> {
        if data.is_empty() {
            // SAFETY: a one-element allocation nothing reads (the tensor is empty).
            return unsafe { self.stream.alloc::<T>(1) }.call("cuMemAllocAsync");
        }
        self.stream.clone_htod(data).call("cuMemcpyHtoDAsync")
    }

    /// The first `len` elements of `slice`, copied to the host after the stream drains.
    pub(crate) fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        slice: &CudaSlice<T>,
        offset: usize,
        len: usize,
    ) -> CudaResult<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let view = slice.slice(offset..offset + len);
        let mut host = vec![T::default(); len];
        self.stream
            .memcpy_dtoh(&view, &mut host)
            .call("cuMemcpyDtoHAsync")?;
        self.synchronize()?;
        Ok(host)
    }

    /// Waits for the stream.
    pub(crate) fn synchronize(&self) -> CudaResult<()> {
        self.stream.synchronize().call("cuStreamSynchronize")
    }

    /// The loaded entry point of `launch` and its launch configuration (dynamic shared
    /// memory above 48 KiB opted into).
    pub(crate) fn prepare(
        &self,
        module: Module,
        launch: &Launch,
    ) -> CudaResult<(CudaFunction, LaunchConfig)> {
        let func = self.function(module, &launch.kernel)?;
        if launch.shared_bytes > DEFAULT_SHARED_BYTES {
            self.stream
                .context()
                .bind_to_thread()
                .call("cuCtxSetCurrent")?;
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                launch.shared_bytes as i32,
            )
            .call("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")?;
        }
        let cfg = LaunchConfig {
            grid_dim: (launch.grid[0], launch.grid[1], launch.grid[2]),
            block_dim: (launch.block[0], launch.block[1], launch.block[2]),
            shared_mem_bytes: launch.shared_bytes,
        };
        Ok((func, cfg))
    }
}
