//! Per-thread buffers that hot kernels keep from one call to the next (no allocation and
//! no page faults per call), freed after a call that grew one past its limit (a large
//! prefill's buffer is not held for the life of the thread).

use crate::aligned::Aligned;
use std::cell::Cell;
use std::thread::LocalKey;

/// Runs `f` on this thread's buffer `key`, emptied (its capacity kept), then keeps the
/// buffer for the next call unless its capacity exceeds `keep` elements.
pub fn with_buffer<T, R>(
    key: &'static LocalKey<Cell<Aligned<T>>>,
    keep: usize,
    f: impl FnOnce(&mut Aligned<T>) -> R,
) -> R {
    let mut buf = key.take();
    buf.clear();
    let result = f(&mut buf);
    if buf.capacity() <= keep {
        key.set(buf);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static BUF: Cell<Aligned<u32>> = const { Cell::new(Aligned::new()) };
    }

    #[test]
    fn a_buffer_is_kept_empty_up_to_its_limit_and_freed_past_it() {
        // A small buffer comes back empty with its capacity on the next call.
        with_buffer(&BUF, 64, |b| b.try_resize(10, 3, "test").unwrap());
        let (len, cap) = with_buffer(&BUF, 64, |b| (b.len(), b.capacity()));
        assert_eq!(len, 0);
        assert!((10..=64).contains(&cap), "capacity {cap}");
        // Grown past the limit, it is dropped: the next call starts with nothing.
        // What the kernels rely on: a kept buffer grown with a value holds only that value,
        // whatever the last call left in it, and starts on a boundary.
        with_buffer(&BUF, 64, |b| {
            b.try_resize(12, 0, "test").unwrap();
            assert!(b.iter().all(|&v| v == 0));
            assert!((b.as_ptr() as usize).is_multiple_of(crate::aligned::ALIGN));
        });
        with_buffer(&BUF, 64, |b| b.try_resize(1000, 3, "test").unwrap());
        assert_eq!(with_buffer(&BUF, 64, |b| b.capacity()), 0);
    }
}
