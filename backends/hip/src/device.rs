//! One HIP device: the libraries, its stream, the loaded kernels and the deferred frees;
//! [`HipDevice`] is the shared launch layer's [`GpuDevice`] over it.

use crate::buffer::HipBuffer;
use crate::error::{unavailable, HipError, HipStatus};
use crate::flavour::SearchList;
use crate::hiprtc;
use crate::loader::{
    self, HipFunction, HipModule, HipStream, Libraries, MEMCPY_DEVICE_TO_DEVICE,
    MEMCPY_DEVICE_TO_HOST, MEMCPY_HOST_TO_DEVICE,
};
use crate::props::{self, DeviceProps};
use crate::NAME;
use moemla_core::{Error, Op, Result};
use moemla_gpu_launch::device::check_len;
use moemla_gpu_launch::{Arg, ArgSlots, GpuDevice, KernelCache, Module};
use moemla_kernel_plan::{DeviceLimits, Launch};
use std::ffi::{c_void, CStr, CString};
use std::sync::{Arc, Mutex};

/// Lanes per wavefront the kernels are compiled for on HIP: `moemla_device.h` takes
/// `__AMDGCN_WAVEFRONT_SIZE` and falls back to 64 where the macro is gone (removed in
/// ROCm 7.2), so only 64-lane devices (gfx9: CDNA, Hygon DCU) are known to match.
pub(crate) const KERNEL_WAVEFRONT: i32 = 64;

/// The HIP device the backend runs on.
pub struct Device {
    pub(crate) libs: Libraries,
    pub(crate) ordinal: i32,
    pub(crate) props: DeviceProps,
    stream: HipStream,
    kernels: KernelCache<HipModule, HipFunction>,
    /// Device pointers of dropped buffers, freed after the next synchronize.
    deferred: Mutex<Vec<usize>>,
}

// SAFETY: HIP stream, module and function handles are process-wide and usable from any
// thread (the HIP runtime is thread-safe); the caches are behind mutexes.
unsafe impl Send for Device {}
// SAFETY: as above; all mutation goes through a mutex or the thread-safe runtime.
unsafe impl Sync for Device {}

impl Device {
    /// Loads the libraries of `search` and opens device `ordinal`.
    pub(crate) fn open(search: &SearchList, ordinal: i32) -> Result<Device> {
        let libs = loader::load(search).map_err(unavailable)?;
        let hip = &libs.runtime;
        let mut origin = format!(
            "runtime {} ({}), hipRTC {}",
            libs.runtime_path.display(),
            libs.flavour,
            libs.rtc_path.display()
        );
        if !libs.skipped.is_empty() {
            origin.push_str(&format!("; not used: {}", libs.skipped.join("; ")));
        }
        let count = count(&libs).map_err(|e| unavailable(format!("{e} ({origin})")))?;
        if ordinal >= count {
            return Err(unavailable(format!(
                "HIP device {ordinal} requested, {count} present ({origin})"
            )));
        }
        let describe = |e: HipError| unavailable(format!("HIP device {ordinal}: {e} ({origin})"));
        let props = props::query(hip, ordinal, |call, status| check(&libs, call, status))
            .map_err(describe)?;
        let mut device = Device {
            libs,
            ordinal,
            props,
            stream: std::ptr::null_mut(),
            kernels: KernelCache::new(NAME),
            deferred: Mutex::new(Vec::new()),
        };
        device.select().map_err(describe)?;
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the device is current.
        let status = unsafe { (device.libs.runtime.hipStreamCreate)(&mut stream) };
        device.check("hipStreamCreate", status).map_err(describe)?;
        device.stream = stream;
        Ok(device)
    }

    /// Turns a status into a [`HipError`] carrying the runtime's message.
    pub(crate) fn check(&self, call: &'static str, status: HipStatus) -> Result<(), HipError> {
        check(&self.libs, call, status)
    }

    /// Makes this device current on the calling thread (HIP's current device is per thread).
    fn select(&self) -> Result<(), HipError> {
        // SAFETY: plain C call.
        let status = unsafe { (self.libs.runtime.hipSetDevice)(self.ordinal) };
        self.check("hipSetDevice", status)
    }

    /// Frees `ptr` after the next synchronize (the stream may still use it).
    pub(crate) fn defer_free(&self, ptr: *mut c_void) {
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        deferred.push(ptr as usize);
    }

    /// Waits for `stream` (this device's or a caller's), then frees the buffers dropped
    /// before the wait. (A buffer a caller's stream may still use is safe to free too:
    /// `hipFree` waits for the device.)
    fn synchronize(&self, stream: HipStream) -> Result<(), HipError> {
        let freeing = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        // SAFETY: a valid stream (this device's, or a caller's kept alive by its contract).
        let status = unsafe { (self.libs.runtime.hipStreamSynchronize)(stream) };
        if let Err(e) = self.check("hipStreamSynchronize", status) {
            // Not known to be idle: keep them for the next try.
            self.deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(freeing);
            return Err(e);
        }
        for ptr in freeing {
            // SAFETY: allocated by hipMalloc, freed once; no enqueued work uses it (the
            // stream drained after its buffer was dropped).
            unsafe { (self.libs.runtime.hipFree)(ptr as *mut c_void) };
        }
        Ok(())
    }

    /// `module` compiled by hipRTC for this device's arch and loaded.
    fn load(&self, module: Module) -> Result<HipModule> {
        let code = hiprtc::compile(
            &self.libs.rtc,
            module.name(),
            &module.source(),
            &self.props.arch,
        )?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: `code` is a complete code object; valid out-pointer.
        let status =
            unsafe { (self.libs.runtime.hipModuleLoadData)(&mut handle, code.as_ptr().cast()) };
        self.check("hipModuleLoadData", status)?;
        Ok(handle)
    }

    /// Entry point `name` of a loaded module.
    fn get_function(&self, module: HipModule, name: &str) -> Result<HipFunction> {
        let c_name = CString::new(name).map_err(|_| HipError::Hip {
            call: "hipModuleGetFunction",
            status: HipStatus::INVALID_VALUE,
            message: format!("kernel name {name:?} contains NUL"),
        })?;
        let mut function = std::ptr::null_mut();
        // SAFETY: valid module handle, NUL-terminated name, valid out-pointer.
        let status = unsafe {
            (self.libs.runtime.hipModuleGetFunction)(&mut function, module, c_name.as_ptr())
        };
        self.check("hipModuleGetFunction", status)?;
        Ok(function)
    }

    /// `bytes` of device memory (a null pointer for zero bytes).
    fn alloc(self: &Arc<Self>, bytes: usize) -> Result<HipBuffer, HipError> {
        let mut ptr = std::ptr::null_mut();
        if bytes > 0 {
            // SAFETY: valid out-pointer.
            let status = unsafe { (self.libs.runtime.hipMalloc)(&mut ptr, bytes) };
            self.check("hipMalloc", status)?;
        }
        Ok(HipBuffer {
            ptr,
            bytes,
            device: self.clone(),
            owned: true,
        })
    }

    /// An async copy of `bytes` bytes (`kind`: host to device, device to host or device to
    /// device), in `stream`'s order.
    fn copy(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        kind: i32,
        stream: HipStream,
    ) -> Result<(), HipError> {
        // SAFETY: the caller passes ranges of `bytes` bytes each, alive until the stream is
        // synchronized.
        let status = unsafe { (self.libs.runtime.hipMemcpyAsync)(dst, src, bytes, kind, stream) };
        self.check("hipMemcpyAsync", status)
    }
}

/// How many HIP devices the runtime of `libs` reports (`hipInit`, `hipGetDeviceCount`):
/// at least one, or why there is none.
fn count(libs: &Libraries) -> Result<i32, String> {
    let hip = &libs.runtime;
    // SAFETY: plain C calls with valid out-pointers.
    let init = unsafe { (hip.hipInit)(0) };
    let mut count = 0i32;
    // SAFETY: as above.
    let counted = unsafe { (hip.hipGetDeviceCount)(&mut count) };
    if counted != HipStatus::SUCCESS || count <= 0 {
        return Err(format!(
            "no HIP device: hipInit(0) returned {init}, hipGetDeviceCount returned {counted} \
             with {count} devices"
        ));
    }
    Ok(count)
}

/// How many HIP devices the first runtime of `search` reports: 0 where no runtime loads or
/// it finds none (opening device 0 then says why).
pub(crate) fn device_count(search: &SearchList) -> usize {
    loader::load(search)
        .ok()
        .and_then(|libs| count(&libs).ok())
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// A status as a [`HipError`] carrying the runtime's message.
fn check(libs: &Libraries, call: &'static str, status: HipStatus) -> Result<(), HipError> {
    if status == HipStatus::SUCCESS {
        return Ok(());
    }
    // SAFETY: hipGetErrorString accepts any status and returns a static C string.
    let text = unsafe { (libs.runtime.hipGetErrorString)(status) };
    let message = if text.is_null() {
        status.to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, static storage.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    Err(HipError::Hip {
        call,
        status,
        message,
    })
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.select();
        // Every buffer is gone (each held the device): let the stream drain, free them.
        let _ = self.synchronize(self.stream);
        for module in self.kernels.drain_modules() {
            // SAFETY: each handle came from hipModuleLoadData and is unloaded once.
            unsafe { (self.libs.runtime.hipModuleUnload)(module) };
        }
        if !self.stream.is_null() {
            // SAFETY: created by hipStreamCreate, destroyed once.
            unsafe { (self.libs.runtime.hipStreamDestroy)(self.stream) };
        }
    }
}

/// A stream handle (this device's own, or a caller's).
#[derive(Clone, Copy)]
struct Stream(HipStream);

// SAFETY: a HIP stream handle is usable from any thread (the runtime is thread-safe).
unsafe impl Send for Stream {}
// SAFETY: as above; the handle is never mutated.
unsafe impl Sync for Stream {}

/// The device as the shared launch layer's [`GpuDevice`], on its own stream or (from
/// `with_stream`) a caller's.
#[derive(Clone)]
pub struct HipDevice(pub(crate) Arc<Device>, Stream);

impl HipDevice {
    /// The device on its own stream.
    pub(crate) fn new(device: Device) -> HipDevice {
        let stream = Stream(device.stream);
        HipDevice(Arc::new(device), stream)
    }

    /// Bytes [offset, offset + len) of `buffer`, checked (a device error naming `call`
    /// otherwise), as a device address.
    fn at(&self, buffer: &HipBuffer, call: &str, offset: usize, len: usize) -> Result<*mut c_void> {
        check_len(NAME, call, buffer, offset.saturating_add(len))?;
        Ok(buffer.ptr.cast::<u8>().wrapping_add(offset).cast())
    }
}

impl GpuDevice for HipDevice {
    type Buffer = HipBuffer;
    const NAME: &'static str = NAME;

    fn enter(&self) -> Result<()> {
        Ok(self.0.select()?)
    }

    fn limits(&self, op: Op) -> Result<DeviceLimits> {
        let p = &self.0.props;
        if p.warp_size != KERNEL_WAVEFRONT {
            return Err(Error::Unsupported {
                backend: NAME.to_string(),
                op,
                what: format!("wavefront of {} lanes ({})", p.warp_size, p.arch),
                reason: format!(
                    "the HIP kernels are built for {KERNEL_WAVEFRONT}-lane wavefronts (gfx9: \
                     MI300X, MI250, Hygon DCU)"
                ),
            });
        }
        // The kernels' portable path runs on HIP (no MFMA yet).
        Ok(DeviceLimits::hip(
            u32::try_from(p.compute_units).unwrap_or(0).max(1),
            u32::try_from(p.warp_size).unwrap_or(0),
            u32::try_from(p.max_shared_per_block).unwrap_or(0),
        ))
    }

    fn alloc(&self, bytes: usize) -> Result<HipBuffer> {
        Ok(self.0.alloc(bytes)?)
    }

    fn fill(&self, buffer: &HipBuffer, bytes: usize, value: u8) -> Result<()> {
        check_len(NAME, "hipMemsetAsync", buffer, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: the first `bytes` bytes of a live allocation; ordered on the stream.
        let status = unsafe {
            (self.0.libs.runtime.hipMemsetAsync)(buffer.ptr, i32::from(value), bytes, self.1 .0)
        };
        Ok(self.0.check("hipMemsetAsync", status)?)
    }

    fn upload(&self, data: &[u8]) -> Result<HipBuffer> {
        let buffer = self.0.alloc(data.len())?;
        if !data.is_empty() {
            self.upload_into(&buffer, 0, data)?;
        }
        Ok(buffer)
    }

    fn upload_into(&self, buffer: &HipBuffer, offset: usize, data: &[u8]) -> Result<()> {
        let dst = self.at(buffer, "hipMemcpyAsync", offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let stream = self.1 .0;
        let kind = MEMCPY_HOST_TO_DEVICE;
        self.0
            .copy(dst, data.as_ptr().cast(), data.len(), kind, stream)?;
        // `data` may go away once this returns (pageable memory): wait for the copy.
        Ok(self.0.synchronize(stream)?)
    }

    fn copy(
        &self,
        src: &HipBuffer,
        src_offset: usize,
        dst: &HipBuffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let from = self.at(src, "hipMemcpyAsync", src_offset, bytes)?;
        let to = self.at(dst, "hipMemcpyAsync", dst_offset, bytes)?;
        if bytes == 0 {
            return Ok(());
        }
        Ok(self
            .0
            .copy(to, from, bytes, MEMCPY_DEVICE_TO_DEVICE, self.1 .0)?)
    }

    fn read(&self, buffer: &HipBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let src = self.at(buffer, "hipMemcpyAsync", offset, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let stream = self.1 .0;
        let kind = MEMCPY_DEVICE_TO_HOST;
        self.0
            .copy(out.as_mut_ptr().cast(), src, out.len(), kind, stream)?;
        Ok(self.0.synchronize(stream)?)
    }

    unsafe fn wrap(&self, ptr: *mut c_void, bytes: usize) -> Result<HipBuffer> {
        if ptr.is_null() {
            return Err(Error::Tensor(format!(
                "{NAME} wrap_raw: a null device pointer"
            )));
        }
        Ok(HipBuffer {
            ptr,
            bytes,
            device: self.0.clone(),
            owned: false,
        })
    }

    unsafe fn with_stream(&self, stream: *mut c_void) -> Result<HipDevice> {
        // The runtime table has no call that names a stream's device (hipStreamGetDevice is
        // ROCm 6 only): a stream of another device is the caller's error.
        Ok(HipDevice(self.0.clone(), Stream(stream)))
    }

    fn launch(&self, module: Module, launch: &Launch, args: &[Arg]) -> Result<()> {
        let dev = &self.0;
        // LDS up to the device's per-block limit needs no opt-in on HIP, and the plans keep
        // within it.
        let function = dev.kernels.function(
            module,
            launch,
            u32::try_from(dev.props.max_shared_per_block).unwrap_or(0),
            |m| dev.load(m),
            |m, name| dev.get_function(*m, name),
            |_, bytes| {
                Err(Error::Device {
                    backend: NAME.into(),
                    call: "hipModuleLaunchKernel".into(),
                    message: format!(
                        "{} needs {bytes} bytes of LDS, beyond the device's per-block limit \
                         of {}",
                        launch.kernel, dev.props.max_shared_per_block
                    ),
                })
            },
        )?;
        let mut slots = ArgSlots::new(args);
        let mut params = slots.pointers();
        let [gx, gy, gz] = launch.grid;
        let [bx, by, bz] = launch.block;
        // SAFETY: `function` came from hipModuleGetFunction on a loaded module; `params`
        // holds one pointer per kernel parameter, in order and of the parameter's type
        // (the runner builds the list from kernels/README.md and the plan), each into
        // `slots`, alive for the call; grid, block and LDS are the plan's, checked against
        // this device's limits.
        let status = unsafe {
            (dev.libs.runtime.hipModuleLaunchKernel)(
                function,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                launch.shared_bytes,
                self.1 .0,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        Ok(dev.check("hipModuleLaunchKernel", status)?)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.0.synchronize(self.1 .0)?)
    }
}
