//! Checks shared by every backend's writes into existing device memory
//! ([`crate::Backend::upload_into`], [`crate::Backend::copy_into`]), so all of them reject a
//! bad range identically before anything is written.

use crate::{DType, DeviceTensor, Error, Result};
use std::ops::Range;

/// The byte range of elements `[offset, offset + len)` of `t`: [`Error::OutOfBounds`] when
/// it does not lie within the tensor (checked arithmetic, never a wrapped range).
pub fn byte_range(
    call: &'static str,
    arg: &'static str,
    t: &DeviceTensor,
    offset: usize,
    len: usize,
) -> Result<Range<usize>> {
    let size = t.shape().checked_elem_count().ok_or_else(|| Error::Size {
        shape: t.shape().clone(),
        dtype: t.dtype(),
    })?;
    let out_of_bounds = || Error::OutOfBounds {
        call,
        arg,
        offset,
        len,
        size,
    };
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= size)
        .ok_or_else(out_of_bounds)?;
    let width = t.dtype().size_in_bytes();
    // `end <= size` and the tensor's byte count fits (`Shape::byte_len`), so neither
    // product overflows.
    t.shape().byte_len(t.dtype())?;
    Ok(offset * width..end * width)
}

/// `got` (the dtype of `arg`) must equal `expected` (that of `other`):
/// [`Error::DTypeMismatch`] otherwise.
pub fn same_dtype(
    call: &'static str,
    arg: &'static str,
    got: DType,
    other: &'static str,
    expected: DType,
) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(Error::DTypeMismatch {
        call,
        arg,
        other,
        expected,
        got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceBuffer, Shape};
    use std::any::Any;
    use std::sync::Arc;

    #[derive(Debug)]
    struct NoMemory;
    impl DeviceBuffer for NoMemory {
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn tensor(dims: &[usize], dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(NoMemory), "test".into(), Shape::from(dims), dtype)
    }

    #[test]
    fn ranges_are_in_elements_and_checked() {
        let t = tensor(&[2, 3], DType::F32);
        assert_eq!(byte_range("copy_into", "dst", &t, 0, 6).unwrap(), 0..24);
        assert_eq!(byte_range("copy_into", "dst", &t, 4, 2).unwrap(), 16..24);
        assert_eq!(byte_range("copy_into", "dst", &t, 6, 0).unwrap(), 24..24);
        for (offset, len) in [(5, 2), (7, 0), (usize::MAX, 2), (1, usize::MAX)] {
            let err = byte_range("copy_into", "dst", &t, offset, len).unwrap_err();
            assert_eq!(
                err,
                Error::OutOfBounds {
                    call: "copy_into",
                    arg: "dst",
                    offset,
                    len,
                    size: 6
                }
            );
        }
        let huge = tensor(&[usize::MAX, 2], DType::U8);
        assert!(matches!(
            byte_range("copy_into", "src", &huge, 0, 1),
            Err(Error::Size { .. })
        ));
    }

    #[test]
    fn dtypes_must_agree() {
        assert!(same_dtype("upload_into", "dst", DType::BF16, "src", DType::BF16).is_ok());
        let err = same_dtype("upload_into", "dst", DType::F16, "src", DType::BF16).unwrap_err();
        assert_eq!(
            err.to_string(),
            "upload_into: `dst` must be BF16 (the dtype of `src`), got F16"
        );
    }
}
