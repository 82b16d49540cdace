//! The CPU backend's tensor storage: a typed host vector per tensor.

use half::{bf16, f16};
use moemla_core::{DType, DeviceBuffer, DeviceTensor, HostTensor, Result};
use std::any::Any;

/// One tensor's elements in host memory, typed by its dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuStorage {
    /// IEEE binary32 elements.
    F32(Vec<f32>),
    /// IEEE binary16 elements.
    F16(Vec<f16>),
    /// bfloat16 elements.
    BF16(Vec<bf16>),
    /// Signed 32-bit integers (ids, block tables, sequence lengths).
    I32(Vec<i32>),
    /// FP8 e4m3fn bit patterns (no v1 op reads them).
    F8E4M3(Vec<u8>),
}

impl DeviceBuffer for CpuStorage {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CpuStorage {
    /// `len` zero elements of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; len]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; len]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; len]),
            DType::I32 => CpuStorage::I32(vec![0; len]),
            DType::F8E4M3 => CpuStorage::F8E4M3(vec![0; len]),
        }
    }

    /// A copy of a host tensor's elements.
    pub fn from_host(host: &HostTensor) -> Result<Self> {
        Ok(match host.dtype() {
            DType::F32 => CpuStorage::F32(host.to_vec()?),
            DType::F16 => CpuStorage::F16(host.to_vec()?),
            DType::BF16 => CpuStorage::BF16(host.to_vec()?),
            DType::I32 => CpuStorage::I32(host.to_vec()?),
            DType::F8E4M3 => CpuStorage::F8E4M3(host.as_bytes().to_vec()),
        })
    }

    /// The elements as little-endian bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::F16(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::I32(v) => bytemuck::cast_slice(v).to_vec(),
            CpuStorage::F8E4M3(v) => v.clone(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::I32(v) => v.len(),
            CpuStorage::F8E4M3(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I32(_) => DType::I32,
            CpuStorage::F8E4M3(_) => DType::F8E4M3,
        }
    }
}

/// A float tensor's elements, borrowed in their storage type.
#[derive(Clone, Copy, Debug)]
pub enum FloatSlice<'a> {
    /// F32 elements.
    F32(&'a [f32]),
    /// F16 elements.
    F16(&'a [f16]),
    /// BF16 elements.
    BF16(&'a [bf16]),
}

/// The CPU storage of `t`, checking it belongs to backend `backend` and holds exactly the
/// tensor's dtype and element count (so no op can index past it).
pub fn storage<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a CpuStorage> {
    let s = t.buffer::<CpuStorage>(backend, call, arg)?;
    if s.dtype() != t.dtype() || s.len() != t.elem_count() {
        return Err(moemla_core::Error::Device {
            backend: backend.to_string(),
            call: format!("{call}: `{arg}`"),
            message: format!(
                "buffer holds {} {} elements, the tensor is {:?}",
                s.len(),
                s.dtype(),
                t
            ),
        });
    }
    Ok(s)
}

/// The float elements of `t` (F32 | F16 | BF16; validation guarantees the dtype).
pub fn float_slice<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<FloatSlice<'a>> {
    match storage(t, backend, call, arg)? {
        CpuStorage::F32(v) => Ok(FloatSlice::F32(v)),
        CpuStorage::F16(v) => Ok(FloatSlice::F16(v)),
        CpuStorage::BF16(v) => Ok(FloatSlice::BF16(v)),
        other => Err(mismatch(backend, call, arg, other.dtype(), "F32|F16|BF16")),
    }
}

/// The F32 elements of `t`.
pub fn f32_slice<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a [f32]> {
    match storage(t, backend, call, arg)? {
        CpuStorage::F32(v) => Ok(v),
        other => Err(mismatch(backend, call, arg, other.dtype(), "F32")),
    }
}

/// The I32 elements of `t`.
pub fn i32_slice<'a>(
    t: &'a DeviceTensor,
    backend: &str,
    call: &'static str,
    arg: &'static str,
) -> Result<&'a [i32]> {
    match storage(t, backend, call, arg)? {
        CpuStorage::I32(v) => Ok(v),
        other => Err(mismatch(backend, call, arg, other.dtype(), "I32")),
    }
}

/// A buffer whose stored type disagrees with what validation promised: a backend bug or a
/// tensor built by hand with a mislabelled buffer.
fn mismatch(
    backend: &str,
    call: &'static str,
    arg: &'static str,
    got: DType,
    want: &str,
) -> moemla_core::Error {
    moemla_core::Error::Device {
        backend: backend.to_string(),
        call: format!("{call}: `{arg}`"),
        message: format!("buffer holds {got}, expected {want}"),
    }
}
