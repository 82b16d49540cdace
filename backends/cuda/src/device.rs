//! The CUDA device: context, stream, memory and the loaded kernels, as the shared launch
//! layer's [`GpuDevice`].

use crate::error::{CudaError, CudaResult, DriverContext, OrCore};
use crate::loader::Nvrtc;
use crate::nvrtc::compile;
use crate::NAME;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use moemla_core::{DeviceBuffer, Error, Op, Result};
use moemla_gpu_launch::device::check_len;
use moemla_gpu_launch::{Arg, ArgSlots, GpuBuffer, GpuDevice, KernelCache, Module};
use moemla_kernel_plan::{DeviceLimits, Launch};
use std::any::Any;
use std::ffi::c_void;
use std::sync::Arc;

/// Dynamic shared memory a kernel may use before it opts in
/// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`), as the launcher counts it: none.
/// CUDA's 48 KiB without an opt-in holds static and dynamic shared memory together, and the
/// launcher does not know a kernel's static part (with 48 KiB here, `moe_route`'s 128
/// static bytes took E 11,455 to 11,486 past the limit with no opt-in). So every kernel
/// that uses dynamic shared memory opts in once, to what its launch asks; the plans have
/// checked static plus dynamic against the device's opt-in limit.
const SHARED_WITHOUT_OPT_IN: u32 = 0;

/// A tensor's device memory: a byte allocation (at least one byte; the tensor may use
/// fewer), or caller memory it never frees (`wrap_raw`), and its address.
#[derive(Debug)]
pub struct CudaBuffer {
    /// The allocation, held to be freed on drop (in stream order); `None` for caller
    /// memory.
    _allocation: Option<CudaSlice<u8>>,
    address: u64,
    bytes: usize,
}

impl CudaBuffer {
    /// Wraps an allocation holding at least `bytes` bytes, made on `stream`.
    pub(crate) fn new(slice: CudaSlice<u8>, bytes: usize, stream: &Arc<CudaStream>) -> Self {
        let address = {
            // Event tracking is off (CudaDevice::open), so the guard records nothing.
            let (address, _guard) = slice.device_ptr(stream);
            address
        };
        CudaBuffer {
            _allocation: Some(slice),
            address,
            bytes,
        }
    }
}

impl DeviceBuffer for CudaBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl GpuBuffer for CudaBuffer {
    fn address(&self) -> u64 {
        self.address
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One CUDA device with its stream and loaded kernels (shared with the devices
/// `with_stream` makes on callers' streams).
pub struct CudaDevice {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) name: String,
    pub(crate) memory_bytes: u64,
    /// Compute capability as `10 * major + minor` (80, 90, ...).
    pub(crate) arch: u32,
    pub(crate) limits: DeviceLimits,
    nvrtc: Arc<Nvrtc>,
    kernels: Arc<KernelCache<Arc<CudaModule>, CudaFunction>>,
}

impl CudaDevice {
    /// Opens the device of `ctx`. The caller has checked that libcuda is present.
    pub(crate) fn open(ctx: Arc<CudaContext>, nvrtc: Nvrtc) -> CudaResult<CudaDevice> {
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
        let arch = u32::try_from(major * 10 + minor).unwrap_or(0);
        Ok(CudaDevice {
            stream,
            name,
            memory_bytes,
            arch,
            limits: DeviceLimits::cuda(
                u32::try_from(sms).unwrap_or(0).max(1),
                u32::try_from(smem).unwrap_or(0),
                major >= 8,
            ),
            nvrtc: Arc::new(nvrtc),
            kernels: Arc::new(KernelCache::new(NAME)),
        })
    }

    /// NVRTC's version and where it was loaded from.
    pub(crate) fn nvrtc_note(&self) -> String {
        let (major, minor) = self.nvrtc.version();
        format!("NVRTC {major}.{minor} ({})", self.nvrtc.path)
    }

    /// A zero-filled byte allocation of at least `bytes` (one byte for empty tensors), on
    /// the stream (for the benchmark ceilings).
    pub(crate) fn alloc_zeroed(&self, bytes: usize) -> CudaResult<CudaSlice<u8>> {
        self.stream
            .alloc_zeros::<u8>(bytes.max(1))
            .call("cuMemAllocAsync")
    }

    /// `module` compiled by NVRTC for this device's exact sm and loaded.
    fn load(&self, module: Module) -> Result<Arc<CudaModule>> {
        let compiled = compile(&self.nvrtc, module, self.arch).or_core()?;
        let image = cudarc::nvrtc::Ptx::from_binary(compiled.cubin);
        self.stream
            .context()
            .load_module(image)
            .call("cuModuleLoadData")
            .or_core()
    }
}

/// Bytes [offset, offset + len) must lie in `buffer`: a device error naming `call`
/// otherwise (checked arithmetic).
fn check_range(buffer: &CudaBuffer, call: &str, offset: usize, len: usize) -> Result<()> {
    let end = offset.saturating_add(len);
    check_len(NAME, call, buffer, end)
}

impl GpuDevice for CudaDevice {
    type Buffer = CudaBuffer;
    const NAME: &'static str = NAME;

    fn enter(&self) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .call("cuCtxSetCurrent")
            .or_core()
    }

    fn limits(&self, _op: Op) -> Result<DeviceLimits> {
        Ok(self.limits)
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuffer> {
        // SAFETY: uninitialised memory; the runner's kernels write every byte they read.
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(1)) }
            .call("cuMemAllocAsync")
            .or_core()?;
        Ok(CudaBuffer::new(slice, bytes, &self.stream))
    }

    fn fill(&self, buffer: &CudaBuffer, bytes: usize, value: u8) -> Result<()> {
        check_len(NAME, "cuMemsetD8Async", buffer, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: the first `bytes` bytes of a live allocation made on this stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                buffer.address,
                value,
                bytes,
                self.stream.cu_stream(),
            )
        }
        .call("cuMemsetD8Async")
        .or_core()
    }

    fn upload(&self, data: &[u8]) -> Result<CudaBuffer> {
        if data.is_empty() {
            return self.alloc(0);
        }
        // Pageable host memory is staged before cuMemcpyHtoDAsync returns.
        let slice = self
            .stream
            .clone_htod(data)
            .call("cuMemcpyHtoDAsync")
            .or_core()?;
        Ok(CudaBuffer::new(slice, data.len(), &self.stream))
    }

    fn upload_into(&self, buffer: &CudaBuffer, offset: usize, data: &[u8]) -> Result<()> {
        check_range(buffer, "cuMemcpyHtoDAsync", offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: bytes [offset, offset + len) of live device memory (checked above);
        // pageable host memory is staged before cuMemcpyHtoDAsync returns, so `data` may
        // go away afterwards.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(
                buffer.address + offset as u64,
                data,
                self.stream.cu_stream(),
            )
        }
        .call("cuMemcpyHtoDAsync")
        .or_core()
    }

    fn copy(
        &self,
        src: &CudaBuffer,
        src_offset: usize,
        dst: &CudaBuffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        check_range(src, "cuMemcpyDtoDAsync", src_offset, bytes)?;
        check_range(dst, "cuMemcpyDtoDAsync", dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: both ranges lie in live device memory (checked above) and do not overlap
        // (the runner's rule); ordered on this stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.address + dst_offset as u64,
                src.address + src_offset as u64,
                bytes,
                self.stream.cu_stream(),
            )
        }
        .call("cuMemcpyDtoDAsync")
        .or_core()
    }

    fn read(&self, buffer: &CudaBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        check_range(buffer, "cuMemcpyDtoHAsync", offset, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: bytes [offset, offset + len) of live device memory (checked above) into
        // `out`, which outlives the copy: the stream is synchronized before returning.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(
                out,
                buffer.address + offset as u64,
                self.stream.cu_stream(),
            )
        }
        .call("cuMemcpyDtoHAsync")
        .or_core()?;
        self.synchronize()
    }

    unsafe fn wrap(&self, ptr: *mut c_void, bytes: usize) -> Result<CudaBuffer> {
        if ptr.is_null() {
            return Err(Error::Tensor(format!(
                "{NAME} wrap_raw: a null device pointer"
            )));
        }
        Ok(CudaBuffer {
            _allocation: None,
            address: ptr as u64,
            bytes,
        })
    }

    unsafe fn with_stream(&self, stream: *mut c_void) -> Result<CudaDevice> {
        let ctx = self.stream.context();
        let raw = stream as cudarc::driver::sys::CUstream;
        let mut owner: cudarc::driver::sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `stream` is a valid stream handle (the caller's contract); valid
        // out-pointer.
        let status = unsafe { cudarc::driver::sys::cuStreamGetCtx(raw, &mut owner) };
        if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS || owner != ctx.cu_ctx() {
            return Err(Error::Queue {
                backend: NAME.into(),
                reason: format!(
                    "the stream's context ({status:?}) is not this device's primary context"
                ),
            });
        }
        // SAFETY: a valid stream of this context, kept alive by the caller for as long as
        // the device, its buffers and its work exist (the caller's contract).
        let stream = unsafe { ctx.wrap_borrowed_stream(raw) };
        Ok(CudaDevice {
            stream,
            name: self.name.clone(),
            memory_bytes: self.memory_bytes,
            arch: self.arch,
            limits: self.limits,
            nvrtc: self.nvrtc.clone(),
            kernels: self.kernels.clone(),
        })
    }

    fn launch(&self, module: Module, launch: &Launch, args: &[Arg]) -> Result<()> {
        let function = self.kernels.function(
            module,
            launch,
            SHARED_WITHOUT_OPT_IN,
            |m| self.load(m),
            |m, name| m.load_function(name).call("cuModuleGetFunction").or_core(),
            |f, bytes| {
                let bytes = i32::try_from(bytes).map_err(|_| Error::Device {
                    backend: NAME.into(),
                    call: "cuFuncSetAttribute".into(),
                    message: format!("{bytes} bytes of shared memory"),
                })?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                )
                .call("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
                .or_core()
            },
        )?;
        let mut slots = ArgSlots::new(args);
        let mut params = slots.pointers();
        let [gx, gy, gz] = launch.grid;
        let [bx, by, bz] = launch.block;
        // SAFETY: `function` is a live entry point of a loaded module; `params` holds one
        // pointer per kernel parameter, in order and of the parameter's type
        // (kernels/README.md; the runner builds the list from the plan, whose buffers it
        // sized), each into `slots`, alive for the call; the grid, block and dynamic
        // shared memory come from the plan, checked against this device's limits.
        unsafe {
            cudarc::driver::result::launch_kernel(
                function.cu_function(),
                (gx, gy, gz),
                (bx, by, bz),
                launch.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| CudaError::driver("cuLaunchKernel", e))
        .or_core()
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .call("cuStreamSynchronize")
            .or_core()
    }
}
