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

    /// Whether `self` and `other` share one buffer (clones and reshapes of one tensor).
    /// Tensors wrapped separately over the same caller memory ([`DeviceTensor::from_raw`])
    /// are not recognised.
    pub fn same_buffer(&self, other: &DeviceTensor) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.buffer), Arc::as_ptr(&other.buffer))
    }

    /// Wraps memory the caller owns as a tensor of `backend`, without copying it and without
    /// taking ownership: moemla never frees it. Ops read it and write it in place
    /// ([`crate::Backend::upload_into`], [`crate::Backend::copy_into`], the ops' `_into`
    /// forms), so an engine can run moemla on its own buffers. Backends that cannot wrap
    /// memory return [`Error::NotProvided`].
    ///
    /// `ptr` is, per backend: `cpu` a host pointer; `opencl` a `cl_mem` handle created in
    /// the backend's context (moemla retains it and releases its own reference when the
    /// last tensor over it is dropped; the caller keeps and releases its own); `cuda` / `hip`
    /// a device pointer in the backend's context.
    ///
    /// Fails with [`Error::Size`] when `shape` and `dtype` make an unrepresentable size, and
    /// with the backend's error when `ptr` is null, misaligned or (where the backend can
    /// tell) smaller than the tensor.
    ///
    /// # Safety
    ///
    /// - `ptr` points to at least `shape.byte_len(dtype)` bytes of memory of that kind,
    ///   readable and writable, aligned to `dtype.size_in_bytes()` (a `cl_mem` buffer of at
    ///   least that size).
    /// - The memory stays valid until every tensor made from it (clones and reshapes
    ///   included) is dropped and every op enqueued on it has finished
    ///   ([`crate::Backend::synchronize`]).
    /// - While moemla may use it, nothing else writes it, or reads it while an op or copy
    ///   writes it (on the CPU: no other thread touches it during a call that uses it).
    /// - It does not overlap another tensor an op or copy uses with it, unless both are only
    ///   read: an output never overlaps an input or another output.
    pub unsafe fn from_raw(
        backend: &dyn crate::Backend,
        ptr: *mut std::ffi::c_void,
        shape: impl Into<Shape>,
        dtype: DType,
    ) -> Result<DeviceTensor> {
        let shape = shape.into();
        let bytes = shape.byte_len(dtype)?;
        // SAFETY: the caller upholds this function's contract, which is `wrap_raw`'s, for
        // `bytes`, the checked size of `shape` in `dtype`.
        unsafe { backend.wrap_raw(ptr, bytes, &shape, dtype) }
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
