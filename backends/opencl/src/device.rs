//! The OpenCL device: one context and one in-order queue per process, buffers, and the
//! program cache (each (module, dtype) program is built once).

use crate::error::{cl, cl_alloc, unavailable, ClCallError};
use moemla_core::{DType, DeviceBuffer, Error, Result};
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{Device, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_GPU};
use opencl3::kernel::Kernel;
use opencl3::memory::{Buffer, ClMem, CL_MEM_COPY_HOST_PTR, CL_MEM_READ_WRITE};
use opencl3::platform::{get_platforms, Platform};
use opencl3::program::Program;
use opencl3::types::CL_BLOCKING;
use std::any::Any;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Env var choosing the device: an index into the list of every platform's devices, or a
/// case-insensitive substring of the device name. Default: the first GPU, else device 0.
pub const DEVICE_ENV: &str = "MOEMLA_OPENCL_DEVICE";

const COMMON_SRC: &str = include_str!("../../../kernels/opencl/common.cl");

/// A kernel source file under `kernels/opencl/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `moe_route.cl`
    MoeRoute,
    /// `moe_experts.cl`
    MoeExperts,
    /// `mla_decode.cl`
    MlaDecode,
    /// `ceilings.cl` (the benchmark GEMM)
    Ceilings,
}

impl Module {
    fn source(self) -> &'static str {
        match self {
            Module::MoeRoute => include_str!("../../../kernels/opencl/moe_route.cl"),
            Module::MoeExperts => include_str!("../../../kernels/opencl/moe_experts.cl"),
            Module::MlaDecode => include_str!("../../../kernels/opencl/mla_decode.cl"),
            Module::Ceilings => include_str!("../../../kernels/opencl/ceilings.cl"),
        }
    }
}

/// Build options selecting the storage type of a program.
fn build_options(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "-cl-std=CL1.2 -DDTYPE_F16",
        DType::BF16 => "-cl-std=CL1.2 -DDTYPE_BF16",
        _ => "-cl-std=CL1.2 -DDTYPE_F32",
    }
}

/// What the backend knows about its device.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    /// Platform name ("Portable Computing Language").
    pub platform: String,
    /// Platform version ("OpenCL 3.0 PoCL 3.1+debian ...").
    pub platform_version: String,
    /// Device name.
    pub name: String,
    /// Whether the device is a CPU.
    pub is_cpu: bool,
    /// Global memory in bytes.
    pub global_mem: u64,
    /// The largest single buffer in bytes (`CL_DEVICE_MAX_MEM_ALLOC_SIZE`).
    pub max_alloc: u64,
    /// Local memory per work-group in bytes.
    pub local_mem: u64,
    /// Largest work-group.
    pub max_work_group: usize,
    /// Largest work-group extent per dimension (`CL_DEVICE_MAX_WORK_ITEM_SIZES`).
    pub max_work_item_sizes: Vec<usize>,
    /// Compute units.
    pub compute_units: u32,
    /// "OpenCL C 1.2 ...".
    pub c_version: String,
    /// The device's extension list.
    pub extensions: String,
}

type ProgramCell = Arc<OnceLock<Result<Arc<Program>>>>;

/// The context, queue and program cache of one device.
pub struct ClDevice {
    /// The device's facts.
    pub facts: DeviceFacts,
    programs: Mutex<HashMap<(Module, DType), ProgramCell>>,
    builds: AtomicUsize,
    queue: CommandQueue,
    context: Context,
}

/// One kernel argument.
pub enum Arg<'a> {
    /// A buffer.
    Buf(&'a ClBuffer),
    /// An `int`.
    I32(i32),
    /// A `float`.
    F32(f32),
    /// A `__local` buffer of this many bytes.
    Local(usize),
}

impl ClDevice {
    /// Loads the ICD, picks the device (see [`DEVICE_ENV`]) and makes its context and queue.
    pub fn open() -> Result<ClDevice> {
        if let Err(e) = cl3::load_library() {
            return Err(unavailable(format!(
                "cannot load the OpenCL ICD loader libOpenCL.so.1 (or OPENCL_DYLIB_PATH): {e}; \
                 install ocl-icd-libopencl1 and a driver (e.g. pocl-opencl-icd)"
            )));
        }
        let platforms = get_platforms().map_err(|e| {
            unavailable(format!(
                "no OpenCL platform: {}",
                ClCallError::new("clGetPlatformIDs", e)
            ))
        })?;
        let mut devices: Vec<(Platform, Device)> = Vec::new();
        for p in platforms {
            if let Ok(ids) = p.get_devices(CL_DEVICE_TYPE_ALL) {
                devices.extend(ids.into_iter().map(|id| (p, Device::new(id))));
            }
        }
        let (platform, device) = choose(&devices)?;
        let facts = facts(platform, device).map_err(Error::from)?;
        let context = Context::from_device(&device).map_err(cl("clCreateContext"))?;
        #[allow(deprecated)] // clCreateCommandQueue: the OpenCL 1.2 entry point
        let queue =
            CommandQueue::create_default(&context, 0).map_err(cl("clCreateCommandQueue"))?;
        Ok(ClDevice {
            facts,
            programs: Mutex::new(HashMap::new()),
            builds: AtomicUsize::new(0),
            queue,
            context,
        })
    }

    /// The program of `module` for storage type `dtype`, built on first use.
    pub fn program(&self, module: Module, dtype: DType) -> Result<Arc<Program>> {
        let cell = {
            let mut map = self.programs.lock().unwrap_or_else(|p| p.into_inner());
            map.entry((module, dtype)).or_default().clone()
        };
        cell.get_or_init(|| self.build(module, dtype)).clone()
    }

    /// How many programs have been built so far (each (module, dtype) at most once).
    pub fn programs_built(&self) -> usize {
        self.builds.load(Ordering::SeqCst)
    }

    fn build(&self, module: Module, dtype: DType) -> Result<Arc<Program>> {
        self.builds.fetch_add(1, Ordering::SeqCst);
        // One string: opencl3's multi-source constructor passes `&str`s where C wants
        // `char*`s, so the helpers are prepended here.
        let source = format!("{COMMON_SRC}\n{}", module.source());
        self.build_source(
            &source,
            build_options(dtype),
            &format!("{module:?} {dtype}"),
        )
    }

    /// Builds `source`; a failure carries the status and the build log.
    fn build_source(&self, source: &str, options: &str, what: &str) -> Result<Arc<Program>> {
        let mut program = Program::create_from_source(&self.context, source)
            .map_err(cl("clCreateProgramWithSource"))?;
        if let Err(e) = program.build(self.context.devices(), options) {
            let log = program
                .get_build_log(self.context.default_device())
                .unwrap_or_else(|_| "(no build log)".to_string());
            return Err(ClCallError {
                call: "clBuildProgram",
                status: e.0,
                detail: Some(format!("{what}: {}", log.trim())),
            }
            .into());
        }
        Ok(Arc::new(program))
    }

    /// Creates a buffer of `bytes` bytes (at least one is allocated), holding a copy of
    /// `init` when given (then `bytes` is its length). A size over the device's largest
    /// buffer, or an allocation the device refuses, is [`Error::OutOfMemory`] naming `what`.
    fn create_buffer(&self, what: &str, bytes: usize, init: Option<&[u8]>) -> Result<Buffer<u8>> {
        let size = bytes.max(1);
        if u64::try_from(size).map_or(true, |s| s > self.facts.max_alloc) {
            return Err(Error::OutOfMemory {
                what: format!(
                    "{} {what} (the device's largest buffer is {} bytes)",
                    crate::NAME,
                    self.facts.max_alloc
                ),
                bytes,
            });
        }
        let (flags, host) = match init {
            Some(data) if !data.is_empty() => (
                CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                data.as_ptr() as *mut c_void,
            ),
            _ => (CL_MEM_READ_WRITE, ptr::null_mut()),
        };
        // SAFETY: `host` is null, or (CL_MEM_COPY_HOST_PTR) points to `init`, a live slice of
        // exactly `size` bytes that OpenCL copies during the call and does not keep.
        unsafe { Buffer::<u8>::create(&self.context, flags, size, host) }.map_err(cl_alloc(
            "clCreateBuffer",
            what,
            bytes,
        ))
    }

    /// A device buffer holding `data`, for `what` (at least one byte is allocated).
    pub fn upload(&self, what: &str, data: &[u8]) -> Result<ClBuffer> {
        if data.is_empty() {
            return self.alloc_zeroed(what, 0);
        }
        let mem = self.create_buffer(what, data.len(), Some(data))?;
        Ok(ClBuffer {
            mem,
            bytes: data.len(),
        })
    }

    /// A device workspace of `bytes` bytes for `what`, with undefined contents (for buffers
    /// the kernels write before they read them; skips the fill of large intermediates).
    pub fn alloc_workspace(&self, what: &str, bytes: usize) -> Result<ClBuffer> {
        let mem = self.create_buffer(what, bytes, None)?;
        Ok(ClBuffer { mem, bytes })
    }

    /// A zero-filled device buffer of `bytes` bytes for `what` (at least one is allocated).
    pub fn alloc_zeroed(&self, what: &str, bytes: usize) -> Result<ClBuffer> {
        self.alloc_filled(what, bytes, 0)
    }

    /// A device buffer of `bytes` bytes (a multiple of 4) for `what`, every 32-bit word
    /// `value`.
    pub fn alloc_filled(&self, what: &str, bytes: usize, value: u32) -> Result<ClBuffer> {
        let mut mem = self.create_buffer(what, bytes, None)?;
        let size = bytes.max(1);
        let word = value.to_le_bytes();
        // The fill pattern must divide the size: whole words, or bytes when they are equal.
        let pattern: &[u8] = if size.is_multiple_of(4) {
            &word
        } else if word.iter().all(|&b| b == word[0]) {
            &word[..1]
        } else {
            return Err(Error::Device {
                backend: crate::NAME.to_string(),
                call: "fill".to_string(),
                message: format!("{bytes} bytes for {what} are not whole 32-bit words"),
            });
        };
        // SAFETY: the fill covers exactly the buffer; the pattern is copied at enqueue time.
        unsafe {
            self.queue
                .enqueue_fill_buffer(&mut mem, pattern, 0, size, &[])
        }
        .map_err(cl_alloc("clEnqueueFillBuffer", what, bytes))?;
        Ok(ClBuffer { mem, bytes })
    }

    /// Reads `out.len()` bytes at byte `offset` of `buf` (waits for all queued work).
    pub fn read(&self, buf: &ClBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return self.finish();
        }
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > buf.bytes)
        {
            return Err(Error::Device {
                backend: crate::NAME.to_string(),
                call: "read".to_string(),
                message: format!(
                    "{} bytes at {offset} of a {}-byte buffer",
                    out.len(),
                    buf.bytes
                ),
            });
        }
        // SAFETY: blocking read into a live slice, within the buffer (checked above).
        unsafe {
            self.queue
                .enqueue_read_buffer(&buf.mem, CL_BLOCKING, offset, out, &[])
        }
        .map_err(cl("clEnqueueReadBuffer"))?;
        Ok(())
    }

    /// Reads one i32 at element `index` of `buf`.
    pub fn read_i32(&self, buf: &ClBuffer, index: usize) -> Result<i32> {
        let mut b = [0u8; 4];
        self.read(buf, index.saturating_mul(4), &mut b)?;
        Ok(i32::from_le_bytes(b))
    }

    /// Enqueues a device-to-device copy of all of `src` into `dst` (no larger than `dst`).
    pub fn copy(&self, src: &ClBuffer, dst: &mut ClBuffer) -> Result<()> {
        if src.bytes == 0 {
            return Ok(());
        }
        if src.bytes > dst.bytes {
            return Err(Error::Device {
                backend: crate::NAME.to_string(),
                call: "copy".to_string(),
                message: format!("{} bytes into a {}-byte buffer", src.bytes, dst.bytes),
            });
        }
        // SAFETY: both buffers are live and distinct (`&` and `&mut`); the range is within
        // both (checked above); the queue keeps its own references until the copy runs.
        unsafe {
            self.queue
                .enqueue_copy_buffer(&src.mem, &mut dst.mem, 0, 0, src.bytes, &[])
        }
        .map_err(cl("clEnqueueCopyBuffer"))?;
        Ok(())
    }

    /// Waits until all queued work has finished.
    pub fn finish(&self) -> Result<()> {
        self.queue.finish().map_err(cl("clFinish"))
    }

    /// Enqueues kernel `name` of `program` over `global` work-items in groups of `local`
    /// (an empty `local` lets the runtime choose). Geometry and local memory the device
    /// cannot run are refused here with an error, never handed to the runtime (PoCL aborts
    /// on local memory beyond the device's); ops check their needs first and report them
    /// as `Unsupported`.
    pub fn launch(
        &self,
        program: &Program,
        name: &str,
        args: &[Arg<'_>],
        global: &[usize],
        local: &[usize],
    ) -> Result<()> {
        let refuse = |message: String| Error::Device {
            backend: crate::NAME.to_string(),
            call: "clEnqueueNDRangeKernel".to_string(),
            message: format!("{name}: {message} (refused before launch)"),
        };
        if global.is_empty()
            || global.len() > 3
            || !(local.is_empty() || local.len() == global.len())
        {
            return Err(refuse(format!("global {global:?} with local {local:?}")));
        }
        if global.contains(&0) {
            return Ok(());
        }
        let facts = &self.facts;
        let group = local.iter().try_fold(1usize, |n, &l| n.checked_mul(l));
        let fits = |(d, (&g, &l)): (usize, (&usize, &usize))| {
            l > 0
                && g.is_multiple_of(l)
                && facts.max_work_item_sizes.get(d).is_some_and(|&m| l <= m)
        };
        if group.is_none_or(|n| n > facts.max_work_group)
            || !global.iter().zip(local).enumerate().all(fits)
        {
            return Err(refuse(format!(
                "global {global:?} in groups of {local:?} (the device allows groups of {} \
                 work-items, {:?} per dimension)",
                facts.max_work_group, facts.max_work_item_sizes
            )));
        }
        let dynamic_local = args
            .iter()
            .map(|a| match a {
                Arg::Local(bytes) => (*bytes).max(4) as u64,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add);
        if dynamic_local > facts.local_mem {
            return Err(refuse(format!(
                "{dynamic_local} bytes of local memory (the device has {})",
                facts.local_mem
            )));
        }
        let kernel = Kernel::create(program, name).map_err(cl("clCreateKernel"))?;
        for (i, arg) in args.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| refuse(format!("{} arguments", args.len())))?;
            // SAFETY: each value has the size and type of the kernel's parameter `i`
            // (cl_mem for buffers, int, float), checked by the OpenCL runtime.
            let set = unsafe {
                match arg {
                    Arg::Buf(b) => kernel.set_arg(i, &b.mem.get()),
                    Arg::I32(v) => kernel.set_arg(i, v),
                    Arg::F32(v) => kernel.set_arg(i, v),
                    Arg::Local(bytes) => kernel.set_arg_local_buffer(i, (*bytes).max(4)),
                }
            };
            set.map_err(cl("clSetKernelArg"))?;
        }
        // The kernel's own limits: static plus argument local memory, and its largest group.
        let device = self.context.default_device();
        let used = kernel
            .get_local_mem_size(device)
            .map_err(cl("clGetKernelWorkGroupInfo"))?;
        let largest = kernel
            .get_work_group_size(device)
            .map_err(cl("clGetKernelWorkGroupInfo"))?;
        if used > facts.local_mem || group.is_some_and(|n| n > largest) {
            return Err(refuse(format!(
                "{used} bytes of local memory and groups of {local:?} (the device has {} \
                 bytes; this kernel runs groups of at most {largest})",
                facts.local_mem
            )));
        }
        // SAFETY: all arguments are set; `global` has 1..=3 entries and `local` is empty
        // (null) or has as many (checked above), both live across the call; every buffer
        // argument is kept alive by the caller's `Arc`s until the queue has used it
        // (released objects outlive queued commands).
        unsafe {
            self.queue.enqueue_nd_range_kernel(
                kernel.get(),
                global.len() as u32,
                ptr::null(),
                global.as_ptr(),
                if local.is_empty() {
                    ptr::null()
                } else {
                    local.as_ptr()
                },
                &[],
            )
        }
        .map_err(cl("clEnqueueNDRangeKernel"))?;
        Ok(())
    }
}

/// The device chosen by [`DEVICE_ENV`], else the first GPU, else the first device.
fn choose(devices: &[(Platform, Device)]) -> Result<(Platform, Device)> {
    if devices.is_empty() {
        return Err(unavailable("OpenCL platforms found, but no devices"));
    }
    let name = |d: &Device| d.name().unwrap_or_default();
    if let Ok(wanted) = std::env::var(DEVICE_ENV) {
        let found = match wanted.trim().parse::<usize>() {
            Ok(i) => devices.get(i),
            Err(_) => devices
                .iter()
                .find(|(_, d)| name(d).to_lowercase().contains(&wanted.to_lowercase())),
        };
        let listed: Vec<String> = devices
            .iter()
            .enumerate()
            .map(|(i, (_, d))| format!("{i}: {}", name(d)))
            .collect();
        return found.copied().ok_or_else(|| {
            unavailable(format!(
                "{DEVICE_ENV}={wanted} matches no device (devices: {})",
                listed.join("; ")
            ))
        });
    }
    let is_gpu = |d: &Device| d.dev_type().is_ok_and(|t| t & CL_DEVICE_TYPE_GPU != 0);
    Ok(*devices
        .iter()
        .find(|(_, d)| is_gpu(d))
        .unwrap_or(&devices[0]))
}

fn facts(platform: Platform, device: Device) -> std::result::Result<DeviceFacts, ClCallError> {
    let info = |e| ClCallError::new("clGetDeviceInfo", e);
    Ok(DeviceFacts {
        platform: platform
            .name()
            .map_err(|e| ClCallError::new("clGetPlatformInfo", e))?,
        platform_version: platform
            .version()
            .map_err(|e| ClCallError::new("clGetPlatformInfo", e))?,
        name: device.name().map_err(info)?,
        is_cpu: device.dev_type().map_err(info)? & CL_DEVICE_TYPE_CPU != 0,
        global_mem: device.global_mem_size().map_err(info)?,
        max_alloc: device.max_mem_alloc_size().map_err(info)?,
        local_mem: device.local_mem_size().map_err(info)?,
        max_work_group: device.max_work_group_size().map_err(info)?,
        max_work_item_sizes: device.max_work_item_sizes().map_err(info)?,
        compute_units: device.max_compute_units().map_err(info)?,
        c_version: device.opencl_c_version().map_err(info)?,
        extensions: device.extensions().map_err(info)?,
    })
}

/// A tensor's memory on the OpenCL device.
#[derive(Debug)]
pub struct ClBuffer {
    mem: Buffer<u8>,
    bytes: usize,
}

impl ClBuffer {
    /// The size of the data in bytes (the allocation may be one byte larger when empty).
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer holds no data.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl DeviceBuffer for ClBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_build_reports_status_and_log() {
        let Ok(backend) = crate::shared() else { return };
        let src = "__kernel void broken(__global int *p) { p[0] = not_declared; }";
        match backend.device().build_source(src, "-cl-std=CL1.2", "test") {
            Err(Error::Device { call, message, .. }) => {
                assert_eq!(call, "clBuildProgram");
                assert!(
                    message.starts_with("CL_BUILD_PROGRAM_FAILURE (-11): test: "),
                    "{message}"
                );
                assert!(message.contains("not_declared"), "{message}");
            }
            other => panic!("expected a build failure, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn launch_refuses_what_the_device_cannot_run() {
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let src = "__kernel void k(__global int *p, __local int *l) { \
                   l[get_local_id(0)] = 1; barrier(CLK_LOCAL_MEM_FENCE); \
                   p[get_global_id(0)] = l[0]; }";
        let program = dev.build_source(src, "-cl-std=CL1.2", "test").unwrap();
        let out = dev.alloc_zeroed("test", 4 * 4096).unwrap();
        let refused = |local_bytes: usize, global: &[usize], local: &[usize], why: &str| {
            let args = [Arg::Buf(&out), Arg::Local(local_bytes)];
            match dev.launch(&program, "k", &args, global, local) {
                Err(Error::Device { message, .. }) => {
                    assert!(message.contains(why), "{message}");
                    assert!(message.contains("refused before launch"), "{message}");
                }
                other => panic!("expected a refusal ({why}), got {:?}", other.map(|_| ())),
            }
        };
        // PoCL aborts on local memory beyond the device's; the launch must refuse it.
        let local_mem = usize::try_from(dev.facts.local_mem).unwrap();
        refused(local_mem + 4, &[64], &[64], "local memory");
        refused(usize::MAX, &[64], &[64], "local memory");
        let too_wide = dev.facts.max_work_group * 2;
        refused(4 * too_wide, &[too_wide], &[too_wide], "groups of");
        refused(256, &[65], &[64], "groups of");
        refused(256, &[64, 1], &[64], "global");
        // What fits runs.
        dev.launch(
            &program,
            "k",
            &[Arg::Buf(&out), Arg::Local(256)],
            &[128],
            &[64],
        )
        .unwrap();
        let mut got = [0u8; 4];
        dev.read(&out, 4 * 127, &mut got).unwrap();
        assert_eq!(i32::from_le_bytes(got), 1);
    }

    #[test]
    fn buffers_beyond_the_device_are_out_of_memory() {
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let bytes = usize::try_from(dev.facts.max_alloc).unwrap() + 1;
        for result in [
            dev.alloc_zeroed("test", bytes),
            dev.alloc_workspace("test", bytes),
        ] {
            match result {
                Err(Error::OutOfMemory { what, bytes: b }) => {
                    assert_eq!(b, bytes);
                    assert!(
                        what.starts_with("opencl test (the device's largest"),
                        "{what}"
                    );
                }
                other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
            }
        }
        // Reads past the end are refused, also when offset + length overflows.
        let buf = dev.alloc_zeroed("test", 8).unwrap();
        assert!(dev.read(&buf, 8, &mut [0u8; 1]).is_err());
        assert!(dev.read(&buf, usize::MAX, &mut [0u8; 2]).is_err());
        assert!(dev.read_i32(&buf, usize::MAX).is_err());
    }
}
