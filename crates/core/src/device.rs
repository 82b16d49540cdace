//! Tensors that live in a backend's memory.

use crate::{DType, Error, Result, Shape};
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A backend's storage for one tensor (a host `Vec`, a `cl_mem`, a device pointer, ...).
///
/// Backends implement this for their buffer type and get it back with
/// [`DeviceTensor::buffer`]. The buffer frees its memory when dropped.
pub trait DeviceBuffer: Any + Send + Sync + fmt::Debug {
    /// Upcast used for downcasting to the backend's concrete buffer type.
    fn as_any(&self) -> &dyn Any;
}

/// A tensor owned by a backend: a shared handle to its buffer plus shape and dtype.
///
/// Cloning is cheap and shares the buffer. Ops take device tensors and return new ones;
/// no op copies data back to the host.
#[derive(Clone)]
pub struct DeviceTensor {
    buffer: Arc<dyn DeviceBuffer>,
    backend: Arc<str>,
    shape: Shape,
    dtype: DType,
}

impl DeviceTensor {
    /// Wraps a backend buffer. `backend` is the owning backend's [`crate::Backend::name`];
    /// the buffer must hold at least `shape.elem_count() * dtype.size_in_bytes()` bytes.
    pub fn new(
        buffer: Arc<dyn DeviceBuffer>,
        backend: Arc<str>,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> Self {
        DeviceTensor {
            buffer,
            backend,
            shape: shape.into(),
            dtype,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// The size of the data in bytes.
    pub fn size_in_bytes(&self) -> usize {
        // Saturating, like `elem_count`: a tensor built by a backend always fits.
        self.elem_count().saturating_mul(self.dtype.size_in_bytes())
    }

    /// The name of the backend that owns the buffer.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<DeviceTensor> {
        let shape = shape.into();
        shape.byte_len(self.dtype)?;
        if shape.elem_count() != self.elem_count() {
            return Err(Error::Tensor(format!(
                "cannot reshape {} to {shape}: element counts differ",
                self.shape
            )));
        }
        Ok(DeviceTensor {
            shape,
            ..self.clone()
        })
    }

    /// The backend's buffer as its concrete type `B`.
    ///
    /// Fails with [`Error::WrongBackend`] when the tensor belongs to another backend
    /// (`expected_backend` is the caller's name; `call` and `arg` name the caller's use).
    pub fn buffer<B: DeviceBuffer>(
        &self,
        expected_backend: &str,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&B> {
        let wrong = || Error::WrongBackend {
            op: call,
            arg,
            expected: expected_backend.to_string(),
            got: self.backend.to_string(),
        };
        if &*self.backend != expected_backend {
            return Err(wrong());
        }
        self.buffer.as_any().downcast_ref::<B>().ok_or_else(wrong)
    }
}

impl fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceTensor({} {} on {})",
            self.dtype, self.shape, self.backend
        )
    }
}
