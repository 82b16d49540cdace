//! The per-tensor memory type. A real backend's buffer holds a device pointer, its size
//! and the context it belongs to, and frees the memory in `Drop`; this one holds the
//! elements in host memory.

use crate::error;
use moemla_core::vendor::DeviceBuffer;
use moemla_core::{DeviceTensor, HostTensor, Result};
use std::any::Any;

/// One tensor's memory.
#[derive(Debug)]
pub struct TemplateBuffer {
    elements: HostTensor,
}

impl DeviceBuffer for TemplateBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl TemplateBuffer {
    /// A buffer holding `elements`.
    pub fn new(elements: HostTensor) -> Self {
        TemplateBuffer { elements }
    }

    /// The elements.
    pub fn host(&self) -> &HostTensor {
        &self.elements
    }

    /// The buffer of `t`, checked to belong to backend `name` (an error naming `call` and
    /// `arg` otherwise) and to hold exactly the tensor's shape and dtype, so no op can
    /// index past it.
    pub fn of<'a>(
        t: &'a DeviceTensor,
        name: &str,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&'a TemplateBuffer> {
        let buffer = t.buffer::<TemplateBuffer>(name, call, arg)?;
        let held = &buffer.elements;
        if held.shape() != t.shape() || held.dtype() != t.dtype() {
            return Err(error::device(
                call,
                arg,
                format!(
                    "buffer holds {} {}, the tensor is {t:?}",
                    held.dtype(),
                    held.shape()
                ),
            ));
        }
        Ok(buffer)
    }
}
