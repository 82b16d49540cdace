//! Device memory: tensors' buffers. A buffer dropped while the stream may still use it is
//! not freed at once (`hipFree` would wait for the whole device): its pointer goes to the
//! device's deferred list, freed after the next synchronize. Caller memory (`wrap_raw`) is
//! never freed.

use crate::device::Device;
use moemla_gpu_launch::GpuBuffer;
use std::ffi::c_void;
use std::sync::Arc;

/// Device memory owned by a tensor (or the runner's workspace and flags).
pub struct HipBuffer {
    pub(crate) ptr: *mut c_void,
    pub(crate) bytes: usize,
    /// Keeps the device (and its libraries) alive while the buffer exists.
    pub(crate) device: Arc<Device>,
    /// Freed on drop (false: caller memory, `wrap_raw`).
    pub(crate) owned: bool,
}

impl std::fmt::Debug for HipBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HipBuffer({:p}, {} bytes, {} {})",
            self.ptr, self.bytes, self.device.props.name, self.device.props.arch
        )
    }
}

// SAFETY: a device pointer is an address in the device's memory, valid from any thread.
unsafe impl Send for HipBuffer {}
// SAFETY: as above; the buffer is never mutated through &self on the host.
unsafe impl Sync for HipBuffer {}

impl Drop for HipBuffer {
    fn drop(&mut self) {
        if self.owned && !self.ptr.is_null() {
            self.device.defer_free(self.ptr);
        }
    }
}

impl moemla_core::DeviceBuffer for HipBuffer {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl GpuBuffer for HipBuffer {
    fn address(&self) -> u64 {
        self.ptr as u64
    }
    fn bytes(&self) -> usize {
        self.bytes
    }
}
