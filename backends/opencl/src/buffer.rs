//! Device memory: [`ClBuffer`] (a `cl_mem` the backend owns, or one a caller owns and
//! moemla retains) and the queue's memory commands. Everything but [`ClDevice::read`] and
//! [`ClDevice::read_all`] only enqueues: uploads into existing memory write from a host
//! copy the queue's [`Staging`] keeps until the write has run, so the host never waits for
//! the queue. Every allocation and upload into a new buffer passes through
//! `create_buffer`, every write into existing memory through [`ClDevice::write`], every
//! read through [`ClDevice::read_all`]: the backend's traffic counts are taken there.

use crate::device::{host_waited, ClDevice};
use crate::error::{cl, cl_alloc, ClCallError};
use moemla_core::{DeviceBuffer, Error, HostTensor, Result};
use opencl3::error_codes::ClError;
use opencl3::event::{wait_for_events, Event, CL_COMPLETE};
use opencl3::memory::{
    get_mem_object_info, retain_mem_object, Buffer, ClMem, CL_MEM_CONTEXT, CL_MEM_COPY_HOST_PTR,
    CL_MEM_OBJECT_BUFFER, CL_MEM_READ_WRITE, CL_MEM_SIZE, CL_MEM_TYPE,
};
use opencl3::types::{cl_event, cl_int, cl_mem, CL_NON_BLOCKING};
use std::any::Any;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::{Arc, Mutex};

/// A tensor's memory on the OpenCL device, or an op's scratch from a queue's scratch pool.
#[derive(Debug)]
pub struct ClBuffer {
    /// Our reference to the memory object (released on drop, or kept by `pool`; for caller
    /// memory, the one reference [`ClDevice::wrap`] retained).
    mem: ManuallyDrop<Buffer<u8>>,
    bytes: usize,
    /// Where scratch memory goes back to when dropped (`None`: released).
    pool: Option<Arc<Pool>>,
}

impl ClBuffer {
    /// A buffer over `mem` (our reference) holding `bytes` bytes of data.
    fn new(mem: Buffer<u8>, bytes: usize, pool: Option<Arc<Pool>>) -> ClBuffer {
        ClBuffer {
            mem: ManuallyDrop::new(mem),
            bytes,
            pool,
        }
    }
}

impl Drop for ClBuffer {
    fn drop(&mut self) {
        // SAFETY: `mem` is taken once, here, and never used again.
        let mem = unsafe { ManuallyDrop::take(&mut self.mem) };
        if let Some(pool) = self.pool.take() {
            pool.give(self.bytes, mem);
        }
    }
}

impl ClBuffer {
    /// The size of the data in bytes (the allocation may be one byte larger when empty).
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer holds no data.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The `cl_mem` handle (valid while `self` lives).
    pub fn raw(&self) -> cl_mem {
        self.mem.get()
    }
}

impl DeviceBuffer for ClBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Scratch memory of one queue, kept for reuse: ops take their workspaces here
/// ([`ClDevice::alloc_workspace`]) and the buffers come back when dropped, so a decode step
/// allocates nothing after its first run. Buffers are kept by exact size, up to
/// [`POOL_BYTES`] in all (beyond that a returned one is released). One pool per queue: the
/// queue is in order, so the next op to take a buffer runs after the last one that used it
/// (and OpenCL keeps the memory alive for commands still queued).
#[derive(Debug, Default)]
pub struct Pool {
    free: Mutex<PoolState>,
}

/// The buffers a [`Pool`] holds, by data size, and their total size.
#[derive(Debug, Default)]
struct PoolState {
    by_size: HashMap<usize, Vec<Buffer<u8>>>,
    bytes: usize,
}

/// The most scratch memory a [`Pool`] keeps (bytes, at least one counted per buffer).
pub const POOL_BYTES: usize = 512 << 20;

impl Pool {
    /// A free buffer for exactly `bytes` bytes of data, if the pool holds one.
    fn take(&self, bytes: usize) -> Option<Buffer<u8>> {
        let mut state = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mem = state.by_size.get_mut(&bytes)?.pop()?;
        state.bytes -= bytes.max(1);
        Some(mem)
    }

    /// Keeps `mem` (for `bytes` bytes of data) for the next [`Pool::take`] of that size, or
    /// releases it when the pool is full.
    fn give(&self, bytes: usize, mem: Buffer<u8>) {
        let mut state = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let size = bytes.max(1);
        if state.bytes.saturating_add(size) <= POOL_BYTES {
            state.bytes += size;
            state.by_size.entry(bytes).or_default().push(mem);
        }
    }
}

/// Host copies of the data of [`ClDevice::write`] (`upload_into`), one set per queue: a
/// non-blocking write reads its host memory when it runs, so each copy is kept until its
/// write's event has completed and is then reused by a later write. A write into device
/// memory needs no device staging buffer this way, so `upload_into` allocates no device
/// memory; the queue is in order, so the write lands after the work queued before it.
/// Up to [`STAGING_BYTES`] of free copies are kept.
#[derive(Debug, Default)]
pub struct Staging {
    state: Mutex<StagingState>,
}

/// What a [`Staging`] holds.
#[derive(Debug, Default)]
struct StagingState {
    /// Copies whose write may not have run yet, with the write's event.
    in_flight: Vec<(Event, Vec<u8>)>,
    /// Copies free for reuse, and their total capacity.
    free: Vec<Vec<u8>>,
    free_bytes: usize,
}

/// The most host memory a [`Staging`] keeps in free copies (bytes of capacity).
pub const STAGING_BYTES: usize = 64 << 20;

impl Staging {
    /// The state, locked (a write holds it from taking a copy until its write is queued).
    fn lock(&self) -> std::sync::MutexGuard<'_, StagingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many copies are kept (in flight, free): for tests.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.in_flight.len(), state.free.len())
    }
}

impl StagingState {
    /// A host copy of `data`: the smallest free copy that holds it, after taking back
    /// those whose writes have completed, else a new one.
    fn copy_of(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let mut i = 0;
        while i < self.in_flight.len() {
            // CL_COMPLETE (0), or a negative status: the command ended and no longer
            // reads the copy. A failed query keeps it in flight.
            let done = self.in_flight[i]
                .0
                .command_execution_status()
                .is_ok_and(|s| s.0 <= CL_COMPLETE);
            if done {
                let (_, copy) = self.in_flight.swap_remove(i);
                self.give(copy);
            } else {
                i += 1;
            }
        }
        let best = (0..self.free.len())
            .filter(|&i| self.free[i].capacity() >= data.len())
            .min_by_key(|&i| self.free[i].capacity());
        let mut copy = match best {
            Some(i) => {
                let copy = self.free.swap_remove(i);
                self.free_bytes -= copy.capacity();
                copy
            }
            None => Vec::new(),
        };
        copy.clear();
        copy.try_reserve_exact(data.len())
            .map_err(|_| Error::OutOfMemory {
                what: format!("{} upload_into host copy", crate::NAME),
                bytes: data.len(),
            })?;
        copy.extend_from_slice(data);
        Ok(copy)
    }

    /// Keeps `copy`, whose write has been queued, until `event` completes.
    fn in_flight(&mut self, event: Event, copy: Vec<u8>) {
        self.in_flight.push((event, copy));
    }

    /// Keeps `copy`, which nothing reads any more, for reuse, or frees it when the free
    /// copies hold [`STAGING_BYTES`] already.
    fn give(&mut self, copy: Vec<u8>) {
        let size = copy.capacity();
        if self.free_bytes.saturating_add(size) <= STAGING_BYTES {
            self.free_bytes += size;
            self.free.push(copy);
        }
    }
}

impl Drop for StagingState {
    /// Waits for the writes still queued before their copies are freed; if that wait fails,
    /// the copies are leaked rather than freed under a write that may still read them.
    fn drop(&mut self) {
        let events: Vec<cl_event> = self.in_flight.iter().map(|(e, _)| e.get()).collect();
        if !events.is_empty() && wait_for_events(&events).is_err() {
            for (_, copy) in self.in_flight.drain(..) {
                std::mem::forget(copy);
            }
        }
    }
}

/// One device-to-host read of [`ClDevice::read_all`]: `out.len()` bytes at byte `offset`
/// of `buf`.
pub struct Read<'a> {
    /// The device buffer.
    pub buf: &'a ClBuffer,
    /// Byte offset in it.
    pub offset: usize,
    /// Where the bytes go.
    pub out: &'a mut [u8],
}

/// What [`ClDevice::read_all`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Its reads (the queue is in order: so also all work queued before them).
    Reads,
    /// Everything queued (`clFinish`), as a synchronize does.
    Queue,
}

/// A failed [`ClDevice::read_all`]: the error, and whether a read may still be running.
#[derive(Debug)]
#[must_use]
pub(crate) struct ReadFailed {
    /// What failed.
    error: Error,
    /// The queue could not be finished after the failure: a read may still write into
    /// its destination at any time.
    running: bool,
}

impl From<Error> for ReadFailed {
    /// A failure with no read running (a bad range, an index error, ...).
    fn from(error: Error) -> ReadFailed {
        ReadFailed {
            error,
            running: false,
        }
    }
}

impl ReadFailed {
    /// Whether a read may still write into its destination, which must then never be
    /// freed or reused (leaked).
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// The error, for a wait that read into no memory of the caller's (a synchronize: the
    /// wait leaks its own buffers when [`ReadFailed::running`]).
    pub(crate) fn into_error(self) -> Error {
        self.error
    }

    /// The error of a read into `out`, which is leaked when a read may still write into it.
    pub(crate) fn leaking(self, out: Vec<u8>) -> Error {
        if self.running {
            std::mem::forget(out);
        }
        self.error
    }

    /// The error of a read into the bytes of `dst`, the caller's tensor. When a read may
    /// still write into them, they are leaked and `dst` gets new memory: zeros of its
    /// shape, or (when even that cannot be allocated) an empty tensor of shape `[0]`.
    pub(crate) fn leaking_host(self, dst: &mut HostTensor) -> Error {
        if self.running {
            let dtype = dst.dtype();
            let fresh = HostTensor::zeros(dst.shape().clone(), dtype)
                .or_else(|_| HostTensor::from_bytes([0], dtype, Vec::new()));
            match fresh {
                Ok(fresh) => std::mem::forget(std::mem::replace(dst, fresh)),
                // A [0] tensor of no bytes is always valid: never reached. Were it, ending
                // the process beats returning memory a read may still write into.
                Err(_) => std::process::abort(),
            }
        }
        self.error
    }
}

#[cfg(test)]
thread_local! {
    /// Test builds: how many of this thread's next waits in [`ClDevice::read_all`] fail
    /// (`CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST`, as after a failed read) without
    /// waiting.
    static FAILING_WAITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Test builds: the failure of a wait in [`ClDevice::read_all`] made on purpose (see
/// `FAILING_WAITS`); `None` otherwise.
fn injected_failure() -> Option<ClError> {
    #[cfg(test)]
    if FAILING_WAITS.with(|n| n.replace(n.get().saturating_sub(1))) > 0 {
        return Some(ClError(
            opencl3::error_codes::CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST,
        ));
    }
    None
}

/// The error of a byte range outside a buffer (`call` is the device method).
fn out_of_range(call: &str, what: String) -> Error {
    Error::Device {
        backend: crate::NAME.to_string(),
        call: call.to_string(),
        message: what,
    }
}

/// Releases the event an enqueue returned (nothing waits for it), or passes on its status.
fn enqueued(r: std::result::Result<cl_event, cl_int>) -> std::result::Result<(), ClError> {
    drop(Event::new(r.map_err(ClError)?));
    Ok(())
}

impl ClDevice {
    /// Creates a buffer of `bytes` bytes (at least one is allocated), holding a copy of
    /// `init` when given (then `bytes` is its length). A size over the device's largest
    /// buffer, or an allocation the device refuses, is [`Error::OutOfMemory`] naming `what`.
    fn create_buffer(&self, what: &str, bytes: usize, init: Option<&[u8]>) -> Result<Buffer<u8>> {
        let size = bytes.max(1);
        if u64::try_from(size).map_or(true, |s| s > self.facts.max_alloc) {
            return Err(Error::OutOfMemory {
                what: format!(
                    "{} {what} (the device's largest buffer is {} bytes)",
                    crate::NAME,
                    self.facts.max_alloc
                ),
                bytes,
            });
        }
        let (flags, host) = match init {
            Some(data) if !data.is_empty() => (
                CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                data.as_ptr() as *mut c_void,
            ),
            _ => (CL_MEM_READ_WRITE, ptr::null_mut()),
        };
        // SAFETY: `host` is null, or (CL_MEM_COPY_HOST_PTR) points to `init`, a live slice of
        // exactly `size` bytes that OpenCL copies during the call and does not keep.
        let mem = unsafe { Buffer::<u8>::create(&self.context, flags, size, host) }
            .map_err(cl_alloc("clCreateBuffer", what, bytes))?;
        // Every device allocation (and every upload: a buffer created from host data)
        // passes here.
        self.traffic.count_allocation(size);
        if !host.is_null() {
            self.traffic.count_upload(bytes);
        }
        Ok(mem)
    }

    /// A device buffer holding `data`, for `what` (at least one byte is allocated).
    pub fn upload(&self, what: &str, data: &[u8]) -> Result<ClBuffer> {
        if data.is_empty() {
            return self.tensor_filled(what, 0, 0);
        }
        let mem = self.create_buffer(what, data.len(), Some(data))?;
        Ok(ClBuffer::new(mem, data.len(), None))
    }

    /// A new device buffer of `bytes` bytes for `what`, never pooled (a tensor's), with
    /// undefined contents (an op's output, which its kernels write in full).
    pub fn tensor_buffer(&self, what: &str, bytes: usize) -> Result<ClBuffer> {
        let mem = self.create_buffer(what, bytes, None)?;
        Ok(ClBuffer::new(mem, bytes, None))
    }

    /// A new device buffer of `bytes` bytes (a multiple of 4, or all four bytes of `value`
    /// equal) for `what`, never pooled, every 32-bit word `value` (the fill is enqueued).
    pub fn tensor_filled(&self, what: &str, bytes: usize, value: u32) -> Result<ClBuffer> {
        let buf = self.tensor_buffer(what, bytes)?;
        self.fill_pattern(&buf, what, bytes, value)?;
        Ok(buf)
    }

    /// Scratch of `bytes` bytes for `what` with undefined contents (for buffers the
    /// kernels write before anything reads them), from this queue's [`Pool`], to which it
    /// returns when dropped: a repeated call allocates nothing. Never make a tensor of it
    /// (a tensor may be used on another queue; use [`ClDevice::tensor_buffer`]).
    pub fn alloc_workspace(&self, what: &str, bytes: usize) -> Result<ClBuffer> {
        let mem = match self.pool.take(bytes) {
            Some(mem) => mem,
            None => self.create_buffer(what, bytes, None)?,
        };
        Ok(ClBuffer::new(mem, bytes, Some(self.pool.clone())))
    }

    /// Zero-filled scratch of `bytes` bytes for `what` (see [`ClDevice::alloc_workspace`];
    /// the fill is enqueued).
    pub fn alloc_zeroed(&self, what: &str, bytes: usize) -> Result<ClBuffer> {
        self.alloc_filled(what, bytes, 0)
    }

    /// Scratch of `bytes` bytes (a multiple of 4) for `what`, every 32-bit word `value`
    /// (see [`ClDevice::alloc_workspace`]; the fill is enqueued).
    pub fn alloc_filled(&self, what: &str, bytes: usize, value: u32) -> Result<ClBuffer> {
        let buf = self.alloc_workspace(what, bytes)?;
        self.fill_pattern(&buf, what, bytes, value)?;
        Ok(buf)
    }

    /// Enqueues the fill of all of `buf` (`bytes` bytes, at least one allocated) with the
    /// 32-bit `value`.
    fn fill_pattern(&self, buf: &ClBuffer, what: &str, bytes: usize, value: u32) -> Result<()> {
        let size = bytes.max(1);
        let word = value.to_le_bytes();
        // The fill pattern must divide the size: whole words, or bytes when they are equal.
        let pattern: &[u8] = if size.is_multiple_of(4) {
            &word
        } else if word.iter().all(|&b| b == word[0]) {
            &word[..1]
        } else {
            return Err(out_of_range(
                "fill",
                format!("{bytes} bytes for {what} are not whole 32-bit words"),
            ));
        };
        // SAFETY: the fill covers exactly the allocation; the pattern is copied at enqueue
        // time.
        let r = unsafe {
            cl3::command_queue::enqueue_fill_buffer(
                self.queue.get(),
                buf.raw(),
                pattern.as_ptr().cast(),
                pattern.len(),
                0,
                size,
                0,
                ptr::null(),
            )
        };
        enqueued(r).map_err(cl_alloc("clEnqueueFillBuffer", what, bytes))
    }

    /// Enqueues a fill of bytes `[offset, offset + len)` of `buf` with the 32-bit `word`
    /// (offset and length multiples of 4, within the buffer).
    pub fn fill_words(&self, buf: &ClBuffer, offset: usize, len: usize, word: u32) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > buf.bytes)
            || !offset.is_multiple_of(4)
            || !len.is_multiple_of(4)
        {
            return Err(out_of_range(
                "fill",
                format!("{len} bytes at {offset} of a {}-byte buffer", buf.bytes),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let pattern = word.to_le_bytes();
        // SAFETY: the range is within the buffer (checked above); the pattern is copied at
        // enqueue time.
        let r = unsafe {
            cl3::command_queue::enqueue_fill_buffer(
                self.queue.get(),
                buf.raw(),
                pattern.as_ptr().cast(),
                4,
                offset,
                len,
                0,
                ptr::null(),
            )
        };
        enqueued(r).map_err(cl("clEnqueueFillBuffer"))
    }

    /// Reads `out.len()` bytes at byte `offset` of `buf`: waits for all queued work.
    pub fn read(
        &self,
        buf: &ClBuffer,
        offset: usize,
        out: &mut [u8],
    ) -> std::result::Result<(), ReadFailed> {
        self.read_all(&mut [Read { buf, offset, out }], Wait::Reads)
    }

    /// Enqueues every read of `reads`, in order and without blocking, then waits once, as
    /// `wait` says. Every range is checked first (one outside its buffer reads nothing);
    /// an empty read is skipped. With nothing to read it waits for the whole queue.
    ///
    /// On failure no read is running any more, unless [`ReadFailed::running`] says so:
    /// then the queue could not be finished and a read may still write into its `out` at
    /// any time, so the caller must never free or reuse that memory (it leaks it, see
    /// [`ReadFailed::leaking`]).
    pub fn read_all(
        &self,
        reads: &mut [Read<'_>],
        wait: Wait,
    ) -> std::result::Result<(), ReadFailed> {
        for r in reads.iter() {
            if r.offset
                .checked_add(r.out.len())
                .is_none_or(|end| end > r.buf.bytes)
            {
                return Err(ReadFailed::from(out_of_range(
                    "read",
                    format!(
                        "{} bytes at {} of a {}-byte buffer",
                        r.out.len(),
                        r.offset,
                        r.buf.bytes
                    ),
                )));
            }
        }
        let mut events = Vec::with_capacity(reads.len());
        let mut failed = None;
        for r in reads.iter_mut().filter(|r| !r.out.is_empty()) {
            // SAFETY: a non-blocking read within the buffer (checked above) into `r.out`,
            // which outlives this call; every read enqueued here has finished before this
            // returns (waited for below, also when a later enqueue fails, and after a
            // failed wait the whole queue is finished), or the failure says that one may
            // still run (`ReadFailed::running`) and the caller leaks the memory.
            let read = unsafe {
                self.queue
                    .enqueue_read_buffer(&r.buf.mem, CL_NON_BLOCKING, r.offset, r.out, &[])
            };
            match read {
                Ok(event) => {
                    // Every device-to-host copy passes here.
                    self.traffic.count_download(r.out.len());
                    events.push(event);
                }
                Err(e) => {
                    failed = Some(cl("clEnqueueReadBuffer")(e));
                    break;
                }
            }
        }
        host_waited();
        let waited = match injected_failure() {
            Some(e) => Err(cl("clWaitForEvents")(e)),
            None if events.is_empty() || wait == Wait::Queue => {
                self.queue.finish().map_err(cl("clFinish"))
            }
            None => {
                let raw: Vec<cl_event> = events.iter().map(Event::get).collect();
                wait_for_events(&raw).map_err(|e| cl("clWaitForEvents")(ClError(e)))
            }
        };
        let error = match (failed, waited) {
            (None, Ok(())) => return Ok(()),
            (Some(error), Ok(())) => return Err(ReadFailed::from(error)),
            (failed, Err(waited)) => failed.unwrap_or(waited),
        };
        if events.is_empty() {
            return Err(ReadFailed::from(error));
        }
        // The wait failed (a read ended with an error status, say): OpenCL does not say
        // that the other reads have finished, so finish the queue before any `out` is
        // freed or reused.
        host_waited();
        let finished = match injected_failure() {
            Some(e) => Err(e),
            None => self.queue.finish(),
        };
        match finished {
            Ok(()) => Err(ReadFailed::from(error)),
            Err(e) => Err(ReadFailed {
                error: Error::Device {
                    backend: crate::NAME.to_string(),
                    call: "clFinish".to_string(),
                    message: format!(
                        "{} ({}) after a failed read ({error}): a read may still be running, \
                         so its host memory is never freed",
                        crate::error::status_name(e.0),
                        e.0
                    ),
                },
                running: true,
            }),
        }
    }

    /// Enqueues a write of `data` into `dst` at byte `offset`, without waiting: `data` is
    /// copied at once into a host copy from this queue's [`Staging`], which the device
    /// writes into place after the work already queued (no device memory is allocated).
    pub fn write(&self, dst: &ClBuffer, offset: usize, data: &[u8]) -> Result<()> {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > dst.bytes)
        {
            return Err(out_of_range(
                "write",
                format!(
                    "{} bytes at {offset} of a {}-byte buffer",
                    data.len(),
                    dst.bytes
                ),
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut staging = self.staging.lock();
        let copy = staging.copy_of(data)?;
        // SAFETY: `dst` is live for the call (the queue keeps its own reference until the
        // write runs) and the range is within it (checked above); `copy` holds exactly
        // `data.len()` bytes and is kept in `staging` (its heap memory unmoved) until the
        // write's event has completed.
        let r = unsafe {
            cl3::command_queue::enqueue_write_buffer(
                self.queue.get(),
                dst.raw(),
                CL_NON_BLOCKING,
                offset,
                copy.len(),
                copy.as_ptr().cast(),
                0,
                ptr::null(),
            )
        };
        match r {
            Ok(event) => {
                // Every host-to-device copy into existing memory passes here.
                self.traffic.count_upload(data.len());
                staging.in_flight(Event::new(event), copy);
                Ok(())
            }
            Err(status) => {
                staging.give(copy);
                Err(cl("clEnqueueWriteBuffer")(ClError(status)))
            }
        }
    }

    /// Enqueues a device copy of `len` bytes from byte `src_at` of `src` to byte `dst_at`
    /// of `dst`. Overlapping ranges of one memory object go through a temporary buffer.
    pub fn copy(
        &self,
        src: &ClBuffer,
        src_at: usize,
        dst: &ClBuffer,
        dst_at: usize,
        len: usize,
    ) -> Result<()> {
        for (buf, at, which) in [(src, src_at, "source"), (dst, dst_at, "destination")] {
            if at.checked_add(len).is_none_or(|end| end > buf.bytes) {
                return Err(out_of_range(
                    "copy",
                    format!("{len} bytes at {at} of a {}-byte {which} buffer", buf.bytes),
                ));
            }
        }
        if len == 0 {
            return Ok(());
        }
        let overlap = src.raw() == dst.raw() && src_at < dst_at + len && dst_at < src_at + len;
        if overlap {
            let temp = self.alloc_workspace("copy temporary", len)?;
            self.copy(src, src_at, &temp, 0, len)?;
            return self.copy(&temp, 0, dst, dst_at, len);
        }
        // SAFETY: both memory objects are live for the call (the queue keeps its own
        // references until the copy runs); the ranges are within them (checked above) and
        // do not overlap.
        let r = unsafe {
            cl3::command_queue::enqueue_copy_buffer(
                self.queue.get(),
                src.raw(),
                dst.raw(),
                src_at,
                dst_at,
                len,
                0,
                ptr::null(),
            )
        };
        enqueued(r).map_err(cl("clEnqueueCopyBuffer"))
    }

    /// A buffer over `mem`, a memory object the caller owns, for a tensor of `bytes` bytes.
    /// moemla retains `mem` and releases that reference when the buffer is dropped; the
    /// caller keeps (and eventually releases) its own. Fails when `mem` is null, not a
    /// buffer of this backend's context, or smaller than `bytes`.
    ///
    /// # Safety
    ///
    /// `mem` is null or a valid `cl_mem` handle (the rest of `DeviceTensor::from_raw`'s
    /// contract is the caller's to keep while the tensor is used).
    pub unsafe fn wrap(&self, mem: cl_mem, bytes: usize) -> Result<ClBuffer> {
        let refuse = |why: String| Error::Tensor(format!("opencl wrap_raw: {why}"));
        if mem.is_null() {
            return Err(refuse("the cl_mem is null".into()));
        }
        let info = |param| {
            get_mem_object_info(mem, param)
                .map_err(|s| Error::from(ClCallError::new("clGetMemObjectInfo", ClError(s))))
        };
        let kind: u32 = info(CL_MEM_TYPE)?.into();
        if kind != CL_MEM_OBJECT_BUFFER {
            return Err(refuse(format!(
                "the cl_mem is not a buffer (type {kind:#x})"
            )));
        }
        let context: isize = info(CL_MEM_CONTEXT)?.into();
        if context as usize != self.context.get() as usize {
            return Err(refuse(
                "the buffer belongs to another OpenCL context (use the backend's: one per \
                 process)"
                    .into(),
            ));
        }
        let size: usize = info(CL_MEM_SIZE)?.into();
        if size < bytes {
            return Err(refuse(format!(
                "the buffer has {size} bytes, the tensor needs {bytes}"
            )));
        }
        // SAFETY: `mem` is a valid buffer (queried above); the reference taken here is the
        // one `Buffer` releases on drop.
        unsafe { retain_mem_object(mem) }
            .map_err(|s| Error::from(ClCallError::new("clRetainMemObject", ClError(s))))?;
        Ok(ClBuffer::new(Buffer::new(mem), bytes, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_beyond_the_device_are_out_of_memory() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        let dev = backend.device();
        let bytes = usize::try_from(dev.facts.max_alloc).unwrap() + 1;
        for result in [
            dev.alloc_zeroed("test", bytes),
            dev.alloc_workspace("test", bytes),
        ] {
            match result {
                Err(Error::OutOfMemory { what, bytes: b }) => {
                    assert_eq!(b, bytes);
                    assert!(
                        what.starts_with("opencl test (the device's largest"),
                        "{what}"
                    );
                }
                other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
            }
        }
        // Reads past the end are refused, also when offset + length overflows.
        let buf = dev.alloc_zeroed("test", 8).unwrap();
        assert!(dev.read(&buf, 8, &mut [0u8; 1]).is_err());
        assert!(dev.read(&buf, usize::MAX, &mut [0u8; 2]).is_err());
    }

    /// Writes into device memory take their host copies from the queue's staging: a copy
    /// is reused once its write has run, never while it may still be read, and the device
    /// gets the bytes as they were at the call.
    #[test]
    fn writes_reuse_host_copies_once_their_writes_have_run() {
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        // A queue of its own, so the counts are this test's.
        let shared = backend.device();
        #[allow(deprecated)] // clCreateCommandQueue: the OpenCL 1.2 entry point
        let queue =
            opencl3::command_queue::CommandQueue::create_default(&shared.context, 0).unwrap();
        // SAFETY: `queue` is a live queue of the backend's context; `with_queue` retains it.
        let dev = unsafe { shared.with_queue(queue.get()) }.unwrap();
        let dst = dev.alloc_zeroed("test", 64).unwrap();
        let mut data = [0u8; 16];
        for round in 0..4u8 {
            data.fill(round + 1);
            dev.write(&dst, 16 * round as usize, &data).unwrap();
            // The write copied `data`: changing it now changes nothing on the device.
            data.fill(0xEE);
            // The earlier rounds' writes ran (finish below): their one copy is reused.
            assert_eq!(dev.staging.counts(), (1, 0), "round {round}");
            dev.finish().unwrap();
        }
        // Writes queued back to back, none waited for: each keeps its own copy until it
        // has run (at most these 8; some may have run and been reused already).
        for i in 0..8u8 {
            dev.write(&dst, 8 * i as usize, &[i + 10; 8]).unwrap();
        }
        let (in_flight, free) = dev.staging.counts();
        assert!(
            (1..=8).contains(&(in_flight + free)),
            "{in_flight} + {free}"
        );
        let mut got = [0u8; 64];
        dev.read(&dst, 0, &mut got).unwrap();
        let want: Vec<u8> = (0..64).map(|b| 10 + (b / 8) as u8).collect();
        assert_eq!(got.to_vec(), want);
    }

    /// A wait that fails (as when one read ends with an error status) is followed by a
    /// finish of the queue before the error returns, so no read still writes into memory
    /// the caller frees or reuses; when even that finish fails, the failure says that a
    /// read may still run, and the downloads leak their memory (`download_into` gives the
    /// caller's tensor new memory).
    #[test]
    fn a_failed_wait_finishes_the_reads_or_leaks_their_memory() {
        use moemla_core::Backend;
        let _beside = crate::flags::test_lock::beside_others();
        let Ok(backend) = crate::shared() else { return };
        // A queue of its own (and its own flags: no index check is pending there).
        #[allow(deprecated)] // clCreateCommandQueue: the OpenCL 1.2 entry point
        let queue =
            opencl3::command_queue::CommandQueue::create_default(&backend.device().context, 0)
                .unwrap();
        // SAFETY: `queue` is a live, in-order queue of the backend's context; the handle
        // retains it.
        let be = unsafe { backend.with_queue(queue.get().cast()) }.unwrap();
        let dev = backend.device();
        let fail_next_waits = |n: usize| FAILING_WAITS.with(|c| c.set(n));
        let data: Vec<u8> = (0..64u8).collect();
        let buf = dev.upload("test", &data).unwrap();

        // The wait fails, the finish after it succeeds: the read has run in full.
        fail_next_waits(1);
        let before = crate::device::host_waits();
        let mut got = [0u8; 48];
        let failed = dev.read(&buf, 16, &mut got).unwrap_err();
        assert_eq!(
            crate::device::host_waits() - before,
            2,
            "the wait, then a finish"
        );
        assert!(!failed.running());
        assert_eq!(&got[..], &data[16..]);
        match failed.into_error() {
            Error::Device { call, message, .. } => {
                assert_eq!(call, "clWaitForEvents");
                assert!(
                    message.contains("CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST"),
                    "{message}"
                );
            }
            other => panic!("expected a device error, got {other:?}"),
        }

        // The finish fails too: a read may still run.
        fail_next_waits(2);
        let mut got = [0u8; 8];
        let failed = dev.read(&buf, 0, &mut got).unwrap_err();
        assert!(failed.running());
        // (The read is real and `got` still live: let it land before `got` goes.)
        dev.finish().unwrap();
        match failed.into_error() {
            Error::Device { call, message, .. } => {
                assert_eq!(call, "clFinish");
                assert!(message.contains("may still be running"), "{message}");
            }
            other => panic!("expected a device error, got {other:?}"),
        }

        // Through the backend, on its own queue: download_into keeps the caller's memory
        // (with the data) when the finish succeeds, and leaks it, giving `dst` new zeroed
        // memory of its shape, when it fails; download reports the same errors.
        let t = be
            .upload(
                &HostTensor::from_bytes([16], moemla_core::DType::U8, data[..16].to_vec()).unwrap(),
            )
            .unwrap();
        let mut dst = HostTensor::zeros([8], moemla_core::DType::U8).unwrap();
        let old = dst.as_bytes().as_ptr();
        fail_next_waits(1);
        let err = be.download_into(&t, 8, &mut dst).unwrap_err();
        assert!(matches!(&err, Error::Device { call, .. } if call == "clWaitForEvents"));
        assert_eq!(
            (dst.as_bytes().as_ptr(), dst.as_bytes()),
            (old, &data[8..16])
        );
        fail_next_waits(2);
        let err = be.download_into(&t, 0, &mut dst).unwrap_err();
        assert!(matches!(&err, Error::Device { call, .. } if call == "clFinish"));
        assert_ne!(
            dst.as_bytes().as_ptr(),
            old,
            "the caller's memory was not leaked"
        );
        assert_eq!((dst.dims(), dst.as_bytes()), (&[8][..], &[0u8; 8][..]));
        fail_next_waits(2);
        let err = be.download(&t).unwrap_err();
        assert!(matches!(&err, Error::Device { call, .. } if call == "clFinish"));
        // Nothing left injected, and the queue works.
        be.synchronize().unwrap();
        assert_eq!(be.download(&t).unwrap().as_bytes(), &data[..16]);
    }
}
