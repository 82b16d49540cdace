//! Tensors in host memory: the way data enters and leaves a backend.

use crate::{DType, Error, Result, Shape};
use half::{bf16, f16};

/// An owned, contiguous, row-major tensor in host memory (little-endian bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    bytes: Vec<u8>,
    shape: Shape,
    dtype: DType,
}

/// Element types that a [`HostTensor`] can be built from and read back as.
pub trait Element: bytemuck::Pod {
    /// The dtype this Rust type stores.
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

impl HostTensor {
    /// A tensor from raw little-endian bytes; the length must match shape and dtype.
    pub fn from_bytes(shape: impl Into<Shape>, dtype: DType, bytes: Vec<u8>) -> Result<Self> {
        let shape = shape.into();
        let want = shape.byte_len(dtype)?;
        if bytes.len() != want {
            return Err(Error::Tensor(format!(
                "{} bytes given for a {dtype} tensor of shape {shape}, which needs {want}",
                bytes.len()
            )));
        }
        Ok(HostTensor {
            bytes,
            shape,
            dtype,
        })
    }

    /// A tensor from a slice of elements; the length must match the shape.
    pub fn from_slice<T: Element>(shape: impl Into<Shape>, data: &[T]) -> Result<Self> {
        Self::from_bytes(shape, T::DTYPE, bytemuck::cast_slice(data).to_vec())
    }

    /// A tensor of `dtype` holding `values` rounded to nearest-even (`dtype` must be a float).
    pub fn from_f32_as(shape: impl Into<Shape>, values: &[f32], dtype: DType) -> Result<Self> {
        let shape = shape.into();
        match dtype {
            DType::F32 => Self::from_slice(shape, values),
            DType::F16 => {
                let v: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                Self::from_slice(shape, &v)
            }
            DType::BF16 => {
                let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                Self::from_slice(shape, &v)
            }
            other => Err(Error::Tensor(format!(
                "cannot store f32 values as {other}: not a float type"
            ))),
        }
    }

    /// A zero-filled tensor; a size that overflows or cannot be allocated is an error.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Result<Self> {
        let shape = shape.into();
        let len = shape.byte_len(dtype)?;
        Ok(HostTensor {
            bytes: crate::alloc::try_filled_vec(len, "HostTensor::zeros")?,
            shape,
            dtype,
        })
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

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The raw little-endian bytes, for writing in place (the length is fixed:
    /// [`crate::Backend::download_into`] fills a tensor the caller reuses).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// Consumes the tensor, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The elements as `T`, which must be the tensor's own dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::Tensor(format!(
                "cannot read a {} tensor as {}",
                self.dtype,
                T::DTYPE
            )));
        }
        Ok(bytemuck::pod_collect_to_vec(&self.bytes))
    }

    /// The elements of a float tensor (F32, F16 or BF16) widened exactly to f32.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        match self.dtype {
            DType::F32 => self.to_vec::<f32>(),
            DType::F16 => Ok(self.to_vec::<f16>()?.iter().map(|x| x.to_f32()).collect()),
            DType::BF16 => Ok(self.to_vec::<bf16>()?.iter().map(|x| x.to_f32()).collect()),
            other => Err(Error::Tensor(format!(
                "cannot read a {other} tensor as f32: not a float type"
            ))),
        }
    }

    /// The elements of an I32 tensor.
    pub fn to_i32_vec(&self) -> Result<Vec<i32>> {
        self.to_vec::<i32>()
    }

    /// This float tensor converted to another float dtype (round to nearest-even).
    pub fn to_dtype(&self, dtype: DType) -> Result<HostTensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        Self::from_f32_as(self.shape.clone(), &self.to_f32_vec()?, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_rounds_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values; nearest-even rounds down to 1.0.
        let t = HostTensor::from_f32_as([2], &[1.0 + 1.0 / 256.0, 3.0], DType::BF16).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 3.0]);
        assert_eq!(t.as_bytes().len(), 4);
    }

    #[test]
    fn byte_length_must_match_shape() {
        let err = HostTensor::from_bytes([2, 2], DType::F32, vec![0; 12]).unwrap_err();
        assert!(matches!(err, Error::Tensor(_)));
    }

    #[test]
    fn unrepresentable_shapes_are_rejected_not_wrapped() {
        // 2^62 * 4 elements wrap to 0 in unchecked arithmetic: an empty byte vector matched.
        let err = HostTensor::from_bytes([1usize << 62, 4], DType::F32, vec![]).unwrap_err();
        assert!(matches!(err, Error::Size { .. }), "{err}");
        assert!(matches!(
            HostTensor::zeros([1usize << 62, 4], DType::F32),
            Err(Error::Size { .. })
        ));
        assert!(matches!(
            HostTensor::zeros([1usize << 40, 1 << 20], DType::F16),
            Err(Error::OutOfMemory { .. } | Error::Size { .. })
        ));
    }

    #[test]
    fn reading_with_the_wrong_type_is_an_error() {
        let t = HostTensor::from_slice([2], &[1i32, 2]).unwrap();
        assert_eq!(t.to_i32_vec().unwrap(), vec![1, 2]);
        assert!(t.to_f32_vec().is_err());
    }
}
