//! Tensor shapes.

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

    /// The number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
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
    fn display_lists_dims() {
        assert_eq!(Shape::new([4, 576]).to_string(), "[4, 576]");
        assert_eq!(Shape::new([4, 576]).elem_count(), 2304);
    }
}
