//! Large f32 working buffers kept from one op call to the next. A fresh allocation of many
//! MiB is new pages from the OS (glibc maps such a block on its own and unmaps it when it
//! is freed), each faulted in and cleared by the kernel on first touch: on a 2-core Zen 5,
//! bf16 experts at V2-Lite T=256 (about 45 MB of such buffers per call) took 43.2-44.3 ms
//! as allocated fresh and 37.1-38.2 ms with glibc told to keep freed memory (its mmap and
//! trim thresholds raised through `GLIBC_TUNABLES`), the same binary in the same minutes.
//! A [`Pooled`] buffer hands its allocation to a small process-wide pool when dropped instead,
//! and [`zeroed`] takes the smallest kept buffer that fits (zero-filled again, as a fresh
//! one is). The pool keeps at most [`KEPT`] buffers and [`KEPT_BYTES`] in all, so a call
//! with huge buffers does not pin them, and none below [`MIN_BYTES`] (cheap to allocate).
//! (Kernels keep their own per-thread buffers: [`crate::kept`].)

use moemla_core::{DType, Result, Shape};
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// Most buffers the pool keeps.
const KEPT: usize = 8;
/// Most bytes the kept buffers hold together.
const KEPT_BYTES: usize = 256 << 20;
/// Smallest buffer (bytes of capacity) the pool keeps.
const MIN_BYTES: usize = 1 << 20;

/// The process-wide pool behind [`zeroed`].
static POOL: Pool = Pool::new(KEPT, KEPT_BYTES);

/// A zero-filled f32 buffer of `dims` elements (sized with checked arithmetic:
/// [`moemla_core::Error::Size`]; allocated fallibly: [`moemla_core::Error::OutOfMemory`],
/// `what` naming it), reusing a kept allocation where one fits.
pub fn zeroed(dims: &[usize], what: &str) -> Result<Pooled> {
    POOL.zeroed(dims, what)
}

/// Buffers kept for reuse: at most `buffers` of them and `bytes` in all.
pub struct Pool {
    kept: Mutex<Vec<Vec<f32>>>,
    buffers: usize,
    bytes: usize,
}

impl Pool {
    /// An empty pool with these caps.
    const fn new(buffers: usize, bytes: usize) -> Pool {
        Pool {
            kept: Mutex::new(Vec::new()),
            buffers,
            bytes,
        }
    }

    /// See [`zeroed`].
    fn zeroed(&'static self, dims: &[usize], what: &str) -> Result<Pooled> {
        let len = Shape::from(dims).byte_len(DType::F32)? / 4;
        let buf = match self.take(len) {
            Some(mut buf) => {
                // Within its capacity: no allocation.
                buf.clear();
                buf.resize(len, 0.0);
                buf
            }
            None => crate::storage::zeroed::<f32>(&[len], what)?,
        };
        Ok(Pooled { buf, pool: self })
    }

    /// The smallest kept buffer that holds `len` elements and is at most twice that (a
    /// small request does not take a large buffer), removed from the pool.
    fn take(&self, len: usize) -> Option<Vec<f32>> {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = |v: &Vec<f32>| v.capacity() >= len && v.capacity() / 2 <= len;
        let best = (kept.iter().enumerate())
            .filter(|(_, v)| fits(v))
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i)?;
        Some(kept.swap_remove(best))
    }

    /// Keeps `buf` where the caps allow; drops it (outside the lock) otherwise.
    fn keep(&self, buf: Vec<f32>) {
        let bytes = buf.capacity().saturating_mul(4);
        if bytes < MIN_BYTES {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let held: usize = kept.iter().map(|v| v.capacity().saturating_mul(4)).sum();
        if kept.len() < self.buffers && held.saturating_add(bytes) <= self.bytes {
            kept.push(buf);
        } else {
            drop(kept);
            drop(buf);
        }
    }
}

/// An f32 working buffer from [`zeroed`]: a slice while it lives, its allocation handed
/// back to the pool when dropped.
pub struct Pooled {
    buf: Vec<f32>,
    pool: &'static Pool,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("len", &self.buf.len())
            .finish()
    }
}

impl Deref for Pooled {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.keep(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of its own for one test (the process-wide one is shared by every test).
    fn pool(buffers: usize, bytes: usize) -> &'static Pool {
        Box::leak(Box::new(Pool::new(buffers, bytes)))
    }

    #[test]
    fn a_dropped_buffer_is_reused_zero_filled_by_a_request_it_fits() {
        let p = pool(2, 64 << 20);
        let mut a = p.zeroed(&[1 << 20], "test").unwrap();
        a.fill(1.5);
        let at = a.as_ptr();
        drop(a);
        // A little shorter: the same allocation, every element zero again.
        let b = p.zeroed(&[(1 << 20) - 5], "test").unwrap();
        assert_eq!((b.as_ptr(), b.len()), (at, (1 << 20) - 5));
        assert!(b.iter().all(|&x| x == 0.0));
        drop(b);
        // Less than half of it: a fresh buffer, the kept one stays for a better fit.
        let c = p.zeroed(&[300_000], "test").unwrap();
        assert_ne!(c.as_ptr(), at);
        assert_eq!(c.len(), 300_000);
        // Longer than it: fresh too.
        let d = p.zeroed(&[(1 << 20) + 1], "test").unwrap();
        assert_ne!(d.as_ptr(), at);
        let again = p.zeroed(&[1 << 20], "test").unwrap();
        assert_eq!(again.as_ptr(), at);
    }

    #[test]
    fn the_pool_keeps_neither_small_buffers_nor_more_than_its_caps() {
        // How many of `n` buffers of `len` elements, all alive at once and then dropped,
        // a pool with these caps keeps.
        let kept_of = |(buffers, bytes): (usize, usize), n: usize, len: usize| {
            let p = pool(buffers, bytes);
            let bufs: Vec<Pooled> = (0..n).map(|_| p.zeroed(&[len], "test").unwrap()).collect();
            drop(bufs);
            let count = p.kept.lock().unwrap().len();
            count
        };
        // Below MIN_BYTES: none. Of 1 MiB each: all three within the caps, one where it
        // keeps one buffer, two against 2.5 MiB in all (the third would pass it).
        assert_eq!(kept_of((4, 64 << 20), 1, 1000), 0);
        assert_eq!(kept_of((4, 64 << 20), 3, 1 << 18), 3);
        assert_eq!(kept_of((1, 64 << 20), 2, 1 << 18), 1);
        assert_eq!(kept_of((4, 5 << 19), 3, 1 << 18), 2);
    }

    #[test]
    fn sizes_are_checked_not_wrapped() {
        assert!(matches!(
            zeroed(&[usize::MAX / 2, 3], "test"),
            Err(moemla_core::Error::Size { .. })
        ));
    }
}
