//! Tensor shapes.

use crate::{DType, Error, Result};
use std::fmt;

/// The dimensions of a tensor, outermost first (row-major, contiguous).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The number of elements (1 for a scalar), or `None` when it does not fit in `usize`.
    pub fn checked_elem_count(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// The number of elements (1 for a scalar), saturating at `usize::MAX` when the product
    /// overflows. Every tensor moemla constructs has a representable size (see
    /// [`Shape::byte_len`]), so for the shape of an existing tensor this is exact; a saturated
    /// count can never be allocated, so it fails instead of wrapping to a small buffer.
    pub fn elem_count(&self) -> usize {
        self.checked_elem_count().unwrap_or(usize::MAX)
    }

    /// The size in bytes of a `dtype` tensor of this shape, computed with checked arithmetic.
    ///
    /// Fails with [`Error::Size`] when the element count or the byte count does not fit in
    /// `isize` (the largest allocation Rust and every device API can address).
    pub fn byte_len(&self, dtype: DType) -> Result<usize> {
        self.checked_elem_count()
            .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
            .filter(|&bytes| bytes <= isize::MAX as usize)
            .ok_or_else(|| Error::Size {
                shape: self.clone(),
                dtype,
            })
    }

    /// Splits a row-major linear element index into one index per dimension.
    pub fn unravel(&self, mut linear: usize) -> Vec<usize> {
        let mut index = vec![0; self.0.len()];
        for (slot, &dim) in index.iter_mut().zip(&self.0).rev() {
            if dim > 0 {
                *slot = linear % dim;
                linear /= dim;
            }
        }
        index
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape(dims.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_splits_row_major_index() {
        let s = Shape::new([2, 3, 4]);
        assert_eq!(s.unravel(0), vec![0, 0, 0]);
        assert_eq!(s.unravel(23), vec![1, 2, 3]);
        assert_eq!(s.unravel(13), vec![1, 0, 1]);
    }

    #[test]
    fn element_and_byte_counts_are_checked() {
        let huge = Shape::new([1usize << 62, 4]);
        assert_eq!(huge.checked_elem_count(), None);
        assert_eq!(huge.elem_count(), usize::MAX);
        assert!(matches!(huge.byte_len(DType::F32), Err(Error::Size { .. })));
        // The element count fits but the byte count does not.
        let bytes_overflow = Shape::new([1usize << 62]);
        assert_eq!(bytes_overflow.checked_elem_count(), Some(1 << 62));
        assert!(bytes_overflow.byte_len(DType::F32).is_err());
        // Above isize::MAX even though it fits in usize.
        assert!(Shape::new([(1usize << 63) + 1])
            .byte_len(DType::F8E4M3)
            .is_err());
        assert_eq!(Shape::new([3, 5]).byte_len(DType::BF16).unwrap(), 30);
        assert_eq!(Shape::new([0, usize::MAX]).byte_len(DType::F32).unwrap(), 0);
    }

    #[test]
    fn display_lists_dims() {
        assert_eq!(Shape::new([4, 576]).to_string(), "[4, 576]");
        assert_eq!(Shape::new([4, 576]).elem_count(), 2304);
    }
}
