//! A plugin's device buffer behind moemla's `DeviceBuffer`: an opaque handle, released
//! with `buffer_free` when the last tensor using it is dropped.

use crate::device::Device;
use crate::ffi;
use moemla_core::DeviceBuffer;
use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// One buffer of a plugin device. Holds its device (and so the plugin library) alive.
pub(crate) struct PluginBuffer {
    /// The device that created it.
    pub device: Arc<Device>,
    /// The plugin's opaque handle; moemla never dereferences it.
    handle: NonNull<ffi::MoemlaBuffer>,
    /// Its size, as asked for when it was created.
    pub bytes: usize,
}

// SAFETY: the handle is an opaque token that moemla only passes back to the plugin, whose
// functions must accept calls from any thread (include/moemla_plugin.h, "THREADS").
unsafe impl Send for PluginBuffer {}
// SAFETY: as above; shared use only passes the handle to the plugin as an op input.
unsafe impl Sync for PluginBuffer {}

impl PluginBuffer {
    /// Takes ownership of `handle`, a buffer of `bytes` bytes that `device` created.
    pub fn new(device: Arc<Device>, handle: NonNull<ffi::MoemlaBuffer>, bytes: usize) -> Self {
        PluginBuffer {
            device,
            handle,
            bytes,
        }
    }

    /// The handle, for an input argument.
    pub fn input(&self) -> *const ffi::MoemlaBuffer {
        self.handle.as_ptr()
    }

    /// The handle, for an output argument (written by the op that receives it).
    pub fn output(&self) -> *mut ffi::MoemlaBuffer {
        self.handle.as_ptr()
    }
}

impl Drop for PluginBuffer {
    fn drop(&mut self) {
        self.device.free(self.handle);
    }
}

impl DeviceBuffer for PluginBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl fmt::Debug for PluginBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PluginBuffer({} bytes on {})",
            self.bytes, self.device.plugin.name
        )
    }
}
