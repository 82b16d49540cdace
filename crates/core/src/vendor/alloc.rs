//! Fallible host allocation: a size the machine cannot provide is a typed error, never an
//! abort.

use crate::{Error, Result};

/// A `Vec` of `len` default (zero) values, or [`Error::OutOfMemory`] when the allocator
/// refuses. `what` names the caller in the error ("cpu alloc_zeroed", "moe_experts scratch").
pub fn try_filled_vec<T: Clone + Default>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        what: what.to_string(),
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    })?;
    v.resize(len, T::default());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_allocation_is_a_typed_error() {
        let err = try_filled_vec::<u8>(isize::MAX as usize, "test").unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { bytes, .. } if bytes == isize::MAX as usize));
        assert_eq!(try_filled_vec::<f32>(3, "test").unwrap(), vec![0.0; 3]);
    }
}
