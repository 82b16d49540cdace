//! Device memory: tensors' buffers, freed on drop.

use crate::device::Device;
use crate::error::HipError;
use crate::loader;
use std::ffi::c_void;
use std::sync::Arc;

/// Device memory owned by a tensor; freed on drop.
#[derive(Debug)]
pub struct HipBuffer {
    ptr: *mut c_void,
    bytes: usize,
    device: Arc<DeviceHandle>,
}

/// Keeps the device (and its libraries) alive while buffers exist.
pub(crate) struct DeviceHandle(pub(crate) Device);

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HipDevice({}, {})", self.0.props.name, self.0.props.arch)
    }
}

// SAFETY: a device pointer is an address in the device's memory, valid from any thread.
unsafe impl Send for HipBuffer {}
// SAFETY: as above; the buffer is never mutated through &self on the host.
unsafe impl Sync for HipBuffer {}

impl HipBuffer {
    /// `bytes` of uninitialised device memory (a null pointer for zero bytes).
    pub(crate) fn alloc(device: &Arc<DeviceHandle>, bytes: usize) -> Result<HipBuffer, HipError> {
        let mut ptr = std::ptr::null_mut();
        if bytes > 0 {
            let dev = &device.0;
            dev.select()?;
            // SAFETY: valid out-pointer.
            let status = unsafe { (dev.libs.runtime.hipMalloc)(&mut ptr, bytes) };
            dev.check("hipMalloc", status)?;
        }
        Ok(HipBuffer {
            ptr,
            bytes,
            device: device.clone(),
        })
    }

    /// `bytes` of zero-filled device memory, zeroed in order on the device's stream.
    pub(crate) fn zeroed(device: &Arc<DeviceHandle>, bytes: usize) -> Result<HipBuffer, HipError> {
        let buffer = HipBuffer::alloc(device, bytes)?;
        if bytes > 0 {
            let dev = &device.0;
            // SAFETY: `ptr` holds `bytes` bytes; ordered on the device's stream.
            let status =
                unsafe { (dev.libs.runtime.hipMemsetAsync)(buffer.ptr, 0, bytes, dev.stream()) };
            dev.check("hipMemsetAsync", status)?;
        }
        Ok(buffer)
    }

    /// The device address.
    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// Copies `data` (exactly the buffer's size) to the device; returns once copied.
    pub(crate) fn write(&self, data: &[u8]) -> Result<(), HipError> {
        debug_assert_eq!(data.len(), self.bytes, "host and device sizes differ");
        if self.bytes == 0 {
            return Ok(());
        }
        let dev = &self.device.0;
        // SAFETY: both ranges hold `bytes` bytes; the stream is synchronised before `data`
        // can go away.
        let status = unsafe {
            (dev.libs.runtime.hipMemcpyAsync)(
                self.ptr,
                data.as_ptr().cast(),
                self.bytes,
                loader::MEMCPY_HOST_TO_DEVICE,
                dev.stream(),
            )
        };
        dev.check("hipMemcpyAsync", status)?;
        dev.synchronize()
    }

    /// Copies the buffer to the host after the stream's pending work.
    pub(crate) fn read(&self) -> Result<Vec<u8>, HipError> {
        let mut out = vec![0u8; self.bytes];
        if self.bytes == 0 {
            return Ok(out);
        }
        let dev = &self.device.0;
        // SAFETY: both ranges hold `bytes` bytes; synchronised before `out` is read.
        let status = unsafe {
            (dev.libs.runtime.hipMemcpyAsync)(
                out.as_mut_ptr().cast(),
                self.ptr,
                self.bytes,
                loader::MEMCPY_DEVICE_TO_HOST,
                dev.stream(),
            )
        };
        dev.check("hipMemcpyAsync", status)?;
        dev.synchronize()?;
        Ok(out)
    }
}

impl Drop for HipBuffer {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by hipMalloc, freed once. hipFree waits for pending work.
            unsafe { (self.device.0.libs.runtime.hipFree)(self.ptr) };
        }
    }
}

impl moemla_core::DeviceBuffer for HipBuffer {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
