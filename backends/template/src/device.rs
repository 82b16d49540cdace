//! The device: what a real backend opens here (its SDK's library, a context and a queue)
//! and how tensors move on and off it. This one is the host, and a tensor's memory is a
//! [`TemplateBuffer`] holding its elements.

use crate::buffer::TemplateBuffer;
use moemla_core::{DType, DeviceTensor, HostTensor, Result, Shape};
use std::sync::Arc;

/// An opened device.
#[derive(Debug)]
pub struct Device {
    /// How `devices` shows it.
    description: String,
}

impl Device {
    /// Opens the device. A real backend loads its SDK here and returns
    /// `Error::Unavailable` with the reason when it cannot.
    pub fn open() -> Result<Self> {
        Ok(Device {
            description: "host memory, one thread (template backend)".to_string(),
        })
    }

    /// The device's description in `BackendInfo::device`.
    pub fn description(&self) -> String {
        self.description.clone()
    }

    /// A zero-filled tensor of backend `name` (an impossible size is an error, never an
    /// abort).
    pub fn alloc_zeroed(
        &self,
        name: &Arc<str>,
        shape: &Shape,
        dtype: DType,
    ) -> Result<DeviceTensor> {
        Ok(self.tensor(name, HostTensor::zeros(shape.clone(), dtype)?))
    }

    /// A copy of `host` on the device.
    pub fn upload(&self, name: &Arc<str>, host: &HostTensor) -> Result<DeviceTensor> {
        Ok(self.tensor(name, host.clone()))
    }

    /// A copy of `tensor`'s elements on the host.
    pub fn download(&self, name: &str, tensor: &DeviceTensor) -> Result<HostTensor> {
        Ok(TemplateBuffer::of(tensor, name, "download", "tensor")?
            .host()
            .clone())
    }

    /// `host` as a tensor of backend `name`.
    pub fn tensor(&self, name: &Arc<str>, host: HostTensor) -> DeviceTensor {
        let (shape, dtype) = (host.shape().clone(), host.dtype());
        DeviceTensor::new(
            Arc::new(TemplateBuffer::new(host)),
            name.clone(),
            shape,
            dtype,
        )
    }
}
