//! The read bandwidth: every hardware thread sums its own part of a buffer much larger than
//! the last-level cache, in the widest loads the CPU has, many passes, best pass.
//!
//! What keeps it at the machine's limit rather than below it:
//! - each thread writes its own part first (the first touch places its pages on the thread's
//!   memory node) and reads that same part in every pass;
//! - the threads are started once and released together by a barrier for every pass, so a
//!   pass times reads only, not thread start-up;
//! - on Linux the buffer is its own anonymous mapping asked for 2 MiB pages
//!   (`MADV_HUGEPAGE`): far fewer TLB misses, and the hardware prefetchers, which stop at
//!   page boundaries, are not stopped every 4 KiB;
//! - a pass's time runs from the first thread's start to the last thread's end, and the best
//!   of many passes is kept (on a shared machine most passes see someone else's traffic).

use super::read_kernel;
use moemla_core::{Error, Result};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

/// What a read-bandwidth measurement found.
#[derive(Clone, Copy, Debug)]
pub struct ReadRate {
    /// Bytes per second of the best pass.
    pub bytes_per_s: f64,
    /// Whether the buffer was asked for huge pages.
    pub huge_pages: bool,
}

/// Best of `passes` parallel read-only reductions over a `bytes`-byte buffer on `threads`
/// threads, each pass reading the buffer `repeats` times (so that a pass over a buffer
/// that fits a cache is long enough to time). A buffer the host cannot map or allocate is
/// [`Error::OutOfMemory`]. Word `i` holds `i`: a last reading whose sum is not the sum of
/// `0..words` did not read every word once, and is an [`Error::Device`] rather than a rate.
pub fn read_bandwidth(
    bytes: usize,
    threads: usize,
    passes: usize,
    repeats: usize,
) -> Result<ReadRate> {
    let words = bytes / 8;
    let mut buf = Buffer::new(words)?;
    let huge_pages = buf.huge_pages();
    let words_buf = buf.words();
    let chunk = words.div_ceil(threads.max(1)).max(1);
    let parts = words.div_ceil(chunk);
    let barrier = Barrier::new(parts.max(1));
    let (passes, repeats) = (passes.max(1), repeats.max(1));
    let results: Vec<(Vec<(Instant, Instant)>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (words_buf.chunks_mut(chunk).enumerate())
            .map(|(t, part)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let base = (t * chunk) as u64;
                    for (i, w) in part.iter_mut().enumerate() {
                        *w = base + i as u64;
                    }
                    let part: &[u64] = part;
                    let sum = read_kernel();
                    black_box(sum(part)); // warm the TLB
                    let mut last = 0;
                    let spans = (0..passes)
                        .map(|_| {
                            barrier.wait();
                            let t0 = Instant::now();
                            for _ in 0..repeats {
                                last = black_box(sum(black_box(part)));
                            }
                            (t0, Instant::now())
                        })
                        .collect();
                    (spans, last)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reductions do not panic"))
            .collect()
    });
    let best = (0..passes)
        .map(|p| {
            let start = results.iter().map(|r| r.0[p].0).min();
            let end = results.iter().map(|r| r.0[p].1).max();
            match (start, end) {
                (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
                _ => 1e-9,
            }
        })
        .fold(f64::INFINITY, f64::min);
    let sum = results.iter().fold(0u64, |s, r| s.wrapping_add(r.1));
    let n = words as u64;
    let want = if n.is_multiple_of(2) {
        (n / 2).wrapping_mul(n.wrapping_sub(1))
    } else {
        n.wrapping_mul(n.wrapping_sub(1) / 2)
    };
    if sum != want {
        return Err(Error::Device {
            backend: "host".into(),
            call: "read bandwidth".into(),
            message: format!("the reduction summed {sum}, the {words} words hold {want}"),
        });
    }
    Ok(ReadRate {
        bytes_per_s: (words * 8) as f64 * repeats as f64 / best,
        huge_pages,
    })
}

/// Alignment of a huge page on x86-64 and most aarch64 kernels.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// The buffer: an anonymous mapping (zero-filled, pages placed by the first write, huge
/// pages requested), unmapped on drop.
#[cfg(target_os = "linux")]
struct Buffer {
    /// Start of the mapping (as `mmap` returned it) and its length in bytes.
    map: *mut libc::c_void,
    map_len: usize,
    /// The first 2 MiB-aligned word inside the mapping, and the number of words used.
    start: *mut u64,
    len: usize,
    /// Whether the kernel accepted the huge-page advice.
    huge: bool,
}

#[cfg(target_os = "linux")]
impl Buffer {
    fn new(words: usize) -> Result<Buffer> {
        let oom = |bytes| Error::OutOfMemory {
            what: format!("read bandwidth buffer of {words} words"),
            bytes,
        };
        let bytes = words.checked_mul(8).ok_or(oom(usize::MAX))?;
        let map_len = bytes.checked_add(HUGE_PAGE).ok_or(oom(usize::MAX))?;
        // SAFETY: an anonymous private mapping of `map_len` bytes at an address the kernel
        // chooses; no existing memory is touched. The result is checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(oom(map_len));
        }
        // SAFETY: `map` .. `map + map_len` is the mapping just made; madvise only changes
        // how the kernel backs it (a refusal is harmless: 4 KiB pages).
        let huge = unsafe { libc::madvise(map, map_len, libc::MADV_HUGEPAGE) } == 0;
        let offset = (map as usize).next_multiple_of(HUGE_PAGE) - map as usize;
        // SAFETY: offset < HUGE_PAGE, so `start` .. `start + bytes` lies inside the mapping
        // (map_len = bytes + HUGE_PAGE); mappings are page-aligned, so `start` is aligned
        // for u64.
        let start = unsafe { map.cast::<u8>().add(offset) }.cast::<u64>();
        Ok(Buffer {
            map,
            map_len,
            start,
            len: words,
            huge,
        })
    }

    fn huge_pages(&self) -> bool {
        self.huge
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: `start` .. `start + len` lies inside the live mapping (see `new`), which
        // is zero-filled (every bit pattern is a valid u64) and owned by `self` alone; the
        // borrow of `self` keeps it mapped and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.start, self.len) }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `map`, `map_len` are exactly the mapping made in `new`, unmapped once here;
        // no slice of it outlives `self`.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// The buffer: a vector (no control over pages here).
#[cfg(not(target_os = "linux"))]
struct Buffer(Vec<u64>);

#[cfg(not(target_os = "linux"))]
impl Buffer {
    fn new(words: usize) -> Result<Buffer> {
        Ok(Buffer(moemla_core::alloc::try_filled_vec(
            words,
            "read bandwidth buffer",
        )?))
    }

    fn huge_pages(&self) -> bool {
        false
    }

    fn words(&mut self) -> &mut [u64] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_is_read_once_per_pass_on_every_thread_count() {
        // Word i holds i: the sum must be n (n - 1) / 2 whatever the split into parts, or
        // the measurement is an error.
        for (words, threads) in [(1000, 1), (1003, 2), (4096, 3), (7, 8), (1 << 20, 2)] {
            let r = read_bandwidth(words * 8, threads, 2, 2)
                .unwrap_or_else(|e| panic!("{words} words on {threads} threads: {e}"));
            assert!(r.bytes_per_s > 0.0 && r.bytes_per_s.is_finite());
        }
    }

    #[test]
    fn an_impossible_buffer_is_out_of_memory() {
        let err = read_bandwidth(1 << 62, 2, 1, 1).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    }
}
