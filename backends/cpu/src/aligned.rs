//! Working buffers whose first element starts on a 64-byte boundary (a cache line, and
//! the width of a tile row and of an AVX-512 register). The kernels load their packed
//! operands 64 bytes at a time; from a buffer that starts elsewhere every such load spans
//! two cache lines. A `Vec` of 2- or 4-byte values starts wherever the allocator puts it:
//! glibc gives 16-byte alignment, and 16 bytes past a page for the large blocks it maps on
//! their own. One-core probes on an Intel Xeon with AMX (not committed): `TDPBF16PS` over
//! weight rows and packed tokens held in L2 (k 2048, 32 tokens) ran at 1469 GFLOP/s with
//! both operands on a line boundary and at 640 with both 16 bytes past one; the AVX-512
//! f32 kernel of [`crate::gemm_util`] at 158 against 145 GFLOP/s.

use moemla_core::{Error, Result};
use std::fmt;
use std::ops::{Deref, DerefMut};

/// The boundary the buffers start on, bytes.
pub const ALIGN: usize = 64;

/// `A` (an array the kernels load from or store to) on a 64-byte boundary, for buffers on
/// the stack.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct Lined<A>(pub A);

/// A buffer of `len` `T`s whose first element is on a 64-byte boundary: a `Vec` with
/// room for up to 63 bytes more, its elements taken from the first boundary on.
pub struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T> Aligned<T> {
    /// An empty buffer (no allocation).
    pub const fn new() -> Aligned<T> {
        Aligned {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// Sets the length to 0, keeping the allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Elements the allocation holds, the slack included.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: Copy + Default> Aligned<T> {
    /// Elements the buffer holds beyond `len`, so that a boundary lies within them.
    const SLACK: usize = {
        let size = std::mem::size_of::<T>();
        // A pointer to `T` is then a whole number of `T`s from every boundary.
        assert!(size > 0 && size == std::mem::align_of::<T>() && ALIGN.is_multiple_of(size));
        ALIGN / size - 1
    };

    /// `len` copies of `value`, allocated fallibly ([`Error::OutOfMemory`], `what` naming
    /// the buffer, as `moemla_core::alloc::try_filled_vec` allocates; a length that
    /// overflows with the slack is refused the same way).
    pub fn try_filled(len: usize, value: T, what: &str) -> Result<Aligned<T>> {
        let total = len.saturating_add(Self::SLACK);
        let mut buf: Vec<T> = Vec::new();
        buf.try_reserve_exact(total)
            .map_err(|_| Self::refused(what, total))?;
        // Large buffers on huge pages, advised before the first touch (as tensors are).
        crate::storage::advise_large(
            buf.as_mut_ptr().cast::<u8>(),
            buf.capacity() * size_of::<T>(),
        );
        // One pass: the slack holds `value` too, never read.
        buf.resize(total, value);
        let start = Self::first_boundary(&buf);
        Ok(Aligned { buf, start, len })
    }

    /// Sets the length to `len`, as [`Vec::resize`] does: the first `min(len, old)`
    /// elements kept, new ones `value` (growing may move them, to the new allocation's
    /// boundary). The growth is allocated fallibly ([`Error::OutOfMemory`], `what` naming
    /// the buffer); nothing changes then.
    pub fn try_resize(&mut self, len: usize, value: T, what: &str) -> Result<()> {
        let need = len.saturating_add(Self::SLACK);
        if self.buf.len() < need {
            self.buf
                .try_reserve(need - self.buf.len())
                .map_err(|_| Self::refused(what, need))?;
            self.buf.resize(need, T::default());
        }
        let start = Self::first_boundary(&self.buf);
        let kept = self.len.min(len);
        if start != self.start {
            self.buf.copy_within(self.start..self.start + kept, start);
            self.start = start;
        }
        self.buf[start + kept..start + len].fill(value);
        self.len = len;
        Ok(())
    }

    /// The error for an allocation of `elems` elements the allocator refused.
    fn refused(what: &str, elems: usize) -> Error {
        Error::OutOfMemory {
            what: what.to_string(),
            bytes: elems.saturating_mul(std::mem::size_of::<T>()),
        }
    }

    /// The index of `buf`'s first element on a 64-byte boundary (below `SLACK + 1`).
    fn first_boundary(buf: &[T]) -> usize {
        let past = buf.as_ptr() as usize % ALIGN;
        (ALIGN - past) % ALIGN / std::mem::size_of::<T>()
    }
}

impl<T: fmt::Debug> fmt::Debug for Aligned<T> {
    /// The elements (not the slack).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> Default for Aligned<T> {
    fn default() -> Self {
        Aligned::new()
    }
}

impl<T> Deref for Aligned<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_boundary<T>(s: &[T]) -> bool {
        (s.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    #[test]
    fn buffers_start_on_a_boundary_and_keep_their_values_when_resized() {
        for len in [0usize, 1, 15, 16, 17, 1000, 300_000] {
            let mut a = Aligned::<u16>::try_filled(len, 7, "test").unwrap();
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&v| v == 7));
            if len > 0 {
                assert!(on_boundary(&a));
            }
            for (i, v) in a.iter_mut().enumerate() {
                *v = i as u16;
            }
            // Grown many times over (moving the allocation), then shrunk.
            for grown in [len + 1, 4 * len + 100, 1 << 20, len / 2] {
                let before = a.len();
                a.try_resize(grown, 9, "test").unwrap();
                assert_eq!(a.len(), grown);
                assert!(on_boundary(&a));
                let kept = before.min(grown).min(len);
                assert!(a[..kept].iter().enumerate().all(|(i, &v)| v == i as u16));
                assert!(a[before.min(grown)..].iter().all(|&v| v == 9));
            }
        }
        let mut empty = Aligned::<f32>::default();
        assert!(empty.is_empty());
        empty.try_resize(3, 1.5, "test").unwrap();
        assert_eq!(&empty[..], &[1.5; 3]);
        assert!(on_boundary(&empty));
    }

    #[test]
    fn shrunk_cleared_and_regrown_buffers_refill_with_the_new_value() {
        let mut a = Aligned::try_filled(100, 0u32, "test").unwrap();
        a.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as u32 + 1);
        // Shrunk then grown within the allocation: the tail is the new value, not the old.
        a.try_resize(40, 0, "test").unwrap();
        a.try_resize(100, 7, "test").unwrap();
        assert!(a[..40].iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
        assert!(a[40..].iter().all(|&v| v == 7));
        // Cleared then grown (what the kept buffers do each call): all the new value.
        a.clear();
        a.try_resize(100, 0, "test").unwrap();
        assert!(a.iter().all(|&v| v == 0) && on_boundary(&a));
        // A refused growth changes nothing.
        a[3] = 9;
        let err = a.try_resize(usize::MAX / 8, 1, "test buffer").unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }));
        assert_eq!(a.len(), 100);
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, &v)| v == if i == 3 { 9 } else { 0 }));
    }

    #[test]
    fn stack_arrays_lie_on_a_boundary() {
        let a = Lined([0u16; 3]);
        let b = [Lined([0.0f32; 5]); 2];
        assert!(on_boundary(&a.0) && on_boundary(&b[0].0) && on_boundary(&b[1].0));
    }

    #[test]
    fn a_refused_buffer_is_a_typed_error() {
        let err = Aligned::<u32>::try_filled(usize::MAX / 2, 0, "test buffer").unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }));
    }
}
