//! Device memory: a [`DevMem`] from `aclrtMalloc`, freed on drop once no queued work can
//! use it (the deferred-free rule in [`crate::device`]).

use crate::device::Device;
use crate::loader::Handle;
use moemla_core::DeviceBuffer;
use std::any::Any;
use std::sync::Arc;

/// Device memory from `aclrtMalloc`, freed on drop once no queued work can use it.
#[derive(Debug)]
pub struct DevMem {
    ptr: usize,
    bytes: usize,
    dev: Arc<Device>,
}

impl DevMem {
    /// Takes ownership of `bytes` at `ptr`, allocated on `dev`.
    pub(crate) fn new(ptr: usize, bytes: usize, dev: Arc<Device>) -> DevMem {
        DevMem { ptr, bytes, dev }
    }

    /// The device address.
    pub fn ptr(&self) -> Handle {
        self.ptr as Handle
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        let now = self.dev.frees().dropped(self.ptr);
        self.dev.free_now(now);
    }
}

impl DeviceBuffer for DevMem {
    fn as_any(&self) -> &dyn Any {
        self
    }
}
