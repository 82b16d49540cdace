//! The device: CANN loaded, device set, one stream; allocation, copies, synchronisation
//! and the two-phase aclnn call (memory in [`crate::buffer`], aclnn's argument objects in
//! [`crate::acl`]).
//!
//! Freeing device memory: aclnn launches are asynchronous, and `aclrtFree` of memory that
//! queued work still uses is undefined on CANN (the device may write into freed memory).
//! So a [`DevMem`] dropped while launches are outstanding is not freed at once: it goes on
//! a deferred list ([`crate::frees`]), tagged with the number of launches queued so far,
//! and is freed by the first successful [`Device::synchronize`] that started after those
//! launches (a failed one frees nothing). With nothing outstanding, a drop frees at once. [`Device::op_on`] runs
//! an op's whole sequence under the stream lock and, if it fails, synchronises before
//! returning the error, so the steps it had queued finish and its temporaries are freed.
//! Dropping the device synchronises and frees what is left.

use crate::buffer::DevMem;
use crate::error::{status_name, CannError, ACL_ERROR_REPEAT_INITIALIZE};
use crate::frees::Frees;
use crate::loader::{Cann, Handle, LaunchFn};
use moemla_core::memory::TrafficCounter;
use moemla_core::{Error, Result};
use std::ffi::{c_void, CStr};
use std::sync::{Arc, Mutex, MutexGuard};

/// The backend's name.
pub const NAME: &str = "ascend";

/// ACL_MEM_MALLOC_HUGE_FIRST (AscendCL "aclrtMemMallocPolicy").
const ACL_MEM_MALLOC_HUGE_FIRST: i32 = 0;
/// aclrtMemcpyKind ACL_MEMCPY_HOST_TO_DEVICE / ACL_MEMCPY_DEVICE_TO_HOST.
const HOST_TO_DEVICE: i32 = 1;
const DEVICE_TO_HOST: i32 = 2;
/// aclrtMemcpyKind ACL_MEMCPY_DEVICE_TO_DEVICE.
const DEVICE_TO_DEVICE: i32 = 3;

thread_local! {
    /// The stream [`Device::run`] launches on inside [`Device::op_on`] (0: none set).
    static LAUNCH_STREAM: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// CANN, initialised, with device `id` set and one stream.
pub struct Device {
    /// The loaded libraries.
    pub cann: Cann,
    /// The device index.
    pub id: i32,
    /// `aclrtGetSocName()`.
    pub soc: String,
    stream: usize,
    lock: Mutex<()>,
    frees: Mutex<Frees>,
    /// Caller streams of live `Backend::with_queue` handles.
    streams: Mutex<Vec<usize>>,
    /// Host<->device copies and allocations (`Backend::traffic`).
    pub traffic: TrafficCounter,
}

// SAFETY: the stream is a process-wide CANN handle and the tables hold plain function
// pointers; every use of the stream by an op goes through `Device::lock`.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// Initialises ACL (a repeated `aclInit` is fine), sets device `id`, creates a stream.
    pub fn open(cann: Cann, id: i32) -> Result<Arc<Device>> {
        let unavailable = |reason: String| Error::Unavailable {
            backend: NAME.to_string(),
            reason,
        };
        // SAFETY: FFI calls with valid arguments (null config path, out-pointers to locals).
        unsafe {
            let st = (cann.rt.aclInit)(std::ptr::null());
            if st != 0 && st != ACL_ERROR_REPEAT_INITIALIZE {
                return Err(unavailable(format!(
                    "aclInit failed: {} ({st})",
                    status_name(st)
                )));
            }
            let mut count = 0u32;
            let st = (cann.rt.aclrtGetDeviceCount)(&mut count);
            if st != 0 || count == 0 || id < 0 || id as u32 >= count {
                return Err(unavailable(format!(
                    "no Ascend device {id}: aclrtGetDeviceCount returned {} ({st}), count {count}",
                    status_name(st)
                )));
            }
            let st = (cann.rt.aclrtSetDevice)(id);
            if st != 0 {
                return Err(unavailable(format!(
                    "aclrtSetDevice({id}) failed: {} ({st})",
                    status_name(st)
                )));
            }
            let mut stream: Handle = std::ptr::null_mut();
            let st = (cann.rt.aclrtCreateStream)(&mut stream);
            if st != 0 {
                return Err(unavailable(format!(
                    "aclrtCreateStream failed: {} ({st})",
                    status_name(st)
                )));
            }
            let soc_ptr = (cann.rt.aclrtGetSocName)();
            let soc = if soc_ptr.is_null() {
                "unknown SoC".to_string()
            } else {
                CStr::from_ptr(soc_ptr).to_string_lossy().into_owned()
            };
            Ok(Arc::new(Device {
                cann,
                id,
                soc,
                stream: stream as usize,
                lock: Mutex::new(()),
                frees: Mutex::new(Frees::default()),
                streams: Mutex::new(Vec::new()),
                traffic: TrafficCounter::default(),
            }))
        }
    }

    /// The stream handle.
    pub fn stream(&self) -> Handle {
        self.stream as Handle
    }

    /// Runs one op's sequence of launches, serialised with other ops, on `stream` (a
    /// caller's stream registered with [`Device::add_stream`]) or, with `None`, on the
    /// device's own: every [`Device::run`] inside `body`, on this thread, launches there. If
    /// it fails, waits before returning the error (its own error: a failure of that
    /// synchronize is dropped), so nothing the op queued is still running and its
    /// temporaries, dropped on the way out, are freed.
    pub fn op_on<T>(&self, stream: Option<usize>, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let previous = LAUNCH_STREAM.with(|c| c.replace(stream.unwrap_or(self.stream)));
        let result = body();
        LAUNCH_STREAM.with(|c| c.set(previous));
        if result.is_err() {
            let _ = self.synchronize();
        }
        result
    }

    /// The stream [`Device::run`] launches on: the one [`Device::op_on`] set on this
    /// thread, else the device's own.
    fn launch_stream(&self) -> Handle {
        match LAUNCH_STREAM.with(|c| c.get()) {
            0 => self.stream(),
            s => s as Handle,
        }
    }

    /// Registers a caller's stream (`Backend::with_queue`): from now on every
    /// [`Device::synchronize`] also waits for it, so the deferred frees stay correct for
    /// work queued there.
    pub fn add_stream(&self, stream: usize) {
        self.caller_streams().push(stream);
    }

    /// Waits for a caller's stream and forgets it (its handle is dropped).
    pub fn remove_stream(&self, stream: usize) {
        let _ = self.bind_thread();
        // SAFETY: the caller keeps the stream alive until its handle is dropped (the
        // contract of `Backend::with_queue`); a failure here only means nothing is left.
        let _ = unsafe { (self.cann.rt.aclrtSynchronizeStream)(stream as Handle) };
        let mut streams = self.caller_streams();
        if let Some(at) = streams.iter().position(|&s| s == stream) {
            streams.swap_remove(at);
        }
    }

    fn caller_streams(&self) -> MutexGuard<'_, Vec<usize>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn frees(&self) -> MutexGuard<'_, Frees> {
        self.frees.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `aclrtFree`s `ptrs`: allocated by `Device::alloc`, dropped, and no longer used by
    /// queued work (see [`crate::frees`]).
    pub(crate) fn free_now(&self, ptrs: impl IntoIterator<Item = usize>) {
        for ptr in ptrs {
            // SAFETY: from aclrtMalloc in `alloc`, handed out once by `Frees`, so freed
            // once, and no queued work uses it any more. A failure cannot be reported from a
            // drop; it would only mean the pointer is already gone.
            let _ = unsafe { (self.cann.rt.aclrtFree)(ptr as Handle) };
        }
    }

    /// Turns a CANN status into a moemla error naming `call` and CANN's recent message.
    pub fn check(&self, status: i32, call: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: returns null or a NUL-terminated string owned by CANN.
        let msg = unsafe {
            let p = (self.cann.rt.aclGetRecentErrMsg)();
            if p.is_null() {
                "(aclGetRecentErrMsg: no message)".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(CannError {
            call: call.to_string(),
            code: status,
            name: status_name(status),
            message: msg,
        }
        .into_error(NAME))
    }

    /// Makes this device current on the calling thread (AscendCL's device and context are
    /// per thread: "aclrtSetDevice" page); done once per thread.
    fn bind_thread(&self) -> Result<()> {
        thread_local! {
            static BOUND: std::cell::Cell<i32> = const { std::cell::Cell::new(-1) };
        }
        if BOUND.with(|b| b.get()) == self.id {
            return Ok(());
        }
        // SAFETY: plain FFI call; `id` was validated in `open`.
        let st = unsafe { (self.cann.rt.aclrtSetDevice)(self.id) };
        self.check(st, "aclrtSetDevice")?;
        BOUND.with(|b| b.set(self.id));
        Ok(())
    }

    /// Waits for the device's stream and every registered caller stream; on success frees
    /// the memory deferred until then (launches are counted across all streams, so only a
    /// wait for all of them can free).
    pub fn synchronize(&self) -> Result<()> {
        self.bind_thread()?;
        let mark = self.frees().mark();
        let callers = self.caller_streams().clone();
        for stream in std::iter::once(self.stream).chain(callers) {
            // SAFETY: the own stream lives as long as `self`; a caller's stays alive while
            // it is registered (`Backend::with_queue`'s contract).
            let st = unsafe { (self.cann.rt.aclrtSynchronizeStream)(stream as Handle) };
            self.check(st, "aclrtSynchronizeStream")?;
        }
        let ready = self.frees().completed(mark);
        self.free_now(ready);
        Ok(())
    }

    /// `bytes` of device memory (at least 1: CANN rejects size 0), contents undefined.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<Arc<DevMem>> {
        self.bind_thread()?;
        let mut ptr: Handle = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; policy is a documented value.
        let st = unsafe {
            (self.cann.rt.aclrtMalloc)(&mut ptr, bytes.max(1), ACL_MEM_MALLOC_HUGE_FIRST)
        };
        self.check(st, "aclrtMalloc")?;
        self.traffic.count_allocation(bytes);
        Ok(Arc::new(DevMem::new(ptr as usize, bytes, self.clone())))
    }

    /// Device memory holding a copy of `data`.
    pub fn upload_bytes(self: &Arc<Self>, data: &[u8]) -> Result<Arc<DevMem>> {
        let mem = self.alloc(data.len())?;
        // A fresh allocation: no queued work can use it yet.
        self.write_now(&mem, 0, data)?;
        Ok(mem)
    }

    /// Copies `data` into `mem` at byte `offset` (`offset + data.len() <= mem.bytes()`,
    /// checked by the caller) with the synchronous aclrtMemcpy, without waiting for the
    /// stream: only for memory no queued work uses.
    fn write_now(&self, mem: &DevMem, offset: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        debug_assert!(offset + data.len() <= mem.bytes());
        // SAFETY: the destination range lies inside `mem` (caller's check above).
        let st = unsafe {
            (self.cann.rt.aclrtMemcpy)(
                (mem.ptr() as usize + offset) as Handle,
                mem.bytes() - offset,
                data.as_ptr() as *const c_void,
                data.len(),
                HOST_TO_DEVICE,
            )
        };
        self.check(st, "aclrtMemcpy(HOST_TO_DEVICE)")?;
        self.traffic.count_upload(data.len());
        Ok(())
    }

    /// Waits for the stream (earlier work may still read or write `mem`), then copies
    /// `data` into `mem` at byte `offset`. The range must lie inside `mem` (checked by the
    /// caller with `moemla_core::memory::byte_range`).
    pub fn write_at(&self, mem: &DevMem, offset: usize, data: &[u8]) -> Result<()> {
        self.synchronize()?;
        self.write_now(mem, offset, data)
    }

    /// Waits for the stream, then copies the first `bytes` of `mem` to the host.
    pub fn download_bytes(&self, mem: &DevMem, bytes: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; bytes.min(mem.bytes())];
        self.read_at(mem, 0, &mut out)?;
        out.resize(bytes, 0);
        Ok(out)
    }

    /// Waits for the stream, then copies `out.len()` bytes of `mem` from byte `offset` to
    /// `out` (the range lies inside `mem`: the caller's check).
    pub fn read_at(&self, mem: &DevMem, offset: usize, out: &mut [u8]) -> Result<()> {
        self.synchronize()?;
        if out.is_empty() {
            return Ok(());
        }
        debug_assert!(offset + out.len() <= mem.bytes());
        // SAFETY: `out` holds out.len() bytes; the source range lies inside `mem`.
        let st = unsafe {
            (self.cann.rt.aclrtMemcpy)(
                out.as_mut_ptr() as Handle,
                out.len(),
                (mem.ptr() as usize + offset) as *const c_void,
                out.len(),
                DEVICE_TO_HOST,
            )
        };
        self.check(st, "aclrtMemcpy(DEVICE_TO_HOST)")?;
        self.traffic.count_download(out.len());
        Ok(())
    }

    /// Waits for the stream, then copies `len` bytes from `src` at byte `src_off` to `dst` at
    /// byte `dst_off` on the device (both ranges inside their buffers: the caller's check).
    /// Overlapping ranges of one buffer go through a temporary (aclrtMemcpy does not
    /// define overlap).
    pub fn copy_at(
        self: &Arc<Self>,
        src: &DevMem,
        src_off: usize,
        dst: &DevMem,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        self.synchronize()?;
        if len == 0 {
            return Ok(());
        }
        let overlap = src.ptr() == dst.ptr() && src_off < dst_off + len && dst_off < src_off + len;
        if overlap {
            let tmp = self.alloc(len)?;
            self.memcpy_d2d(src, src_off, &tmp, 0, len)?;
            return self.memcpy_d2d(&tmp, 0, dst, dst_off, len);
        }
        self.memcpy_d2d(src, src_off, dst, dst_off, len)
    }

    fn memcpy_d2d(
        &self,
        src: &DevMem,
        src_off: usize,
        dst: &DevMem,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        debug_assert!(src_off + len <= src.bytes() && dst_off + len <= dst.bytes());
        // SAFETY: both ranges lie inside their allocations (caller's check); they do not
        // overlap (`copy_at`).
        let st = unsafe {
            (self.cann.rt.aclrtMemcpy)(
                (dst.ptr() as usize + dst_off) as Handle,
                dst.bytes() - dst_off,
                (src.ptr() as usize + src_off) as *const c_void,
                len,
                DEVICE_TO_DEVICE,
            )
        };
        self.check(st, "aclrtMemcpy(DEVICE_TO_DEVICE)")
    }

    /// Runs one aclnn op: `prepare(&mut workspaceSize, &mut executor)` (its
    /// `GetWorkspaceSize`), allocates the workspace, then `launch` on the stream. The
    /// workspace is dropped at once: like any buffer dropped while launches are
    /// outstanding, it is freed after the stream ran (module doc).
    pub fn run(
        self: &Arc<Self>,
        op: &str,
        prepare: impl FnOnce(*mut u64, *mut Handle) -> i32,
        launch: Option<LaunchFn>,
    ) -> Result<()> {
        match self.try_run(op, prepare, launch)? {
            Launch::Queued => Ok(()),
            Launch::Declined(e) => Err(e),
        }
    }

    /// [`Device::run`], except that a CANN error from the first phase (`GetWorkspaceSize`,
    /// where an op checks its parameters and tiles) comes back as [`Launch::Declined`]:
    /// nothing was queued, so the caller may run another path instead. Every other error
    /// (the launch's included) is an `Err`.
    pub fn try_run(
        self: &Arc<Self>,
        op: &str,
        prepare: impl FnOnce(*mut u64, *mut Handle) -> i32,
        launch: Option<LaunchFn>,
    ) -> Result<Launch> {
        self.bind_thread()?;
        let launch = launch.ok_or_else(|| Error::Device {
            backend: NAME.to_string(),
            call: op.to_string(),
            message: "symbol missing from the loaded op libraries".to_string(),
        })?;
        let mut size = 0u64;
        let mut executor: Handle = std::ptr::null_mut();
        if let Err(e) = self.check(
            prepare(&mut size, &mut executor),
            &format!("{op}GetWorkspaceSize"),
        ) {
            return Ok(Launch::Declined(e));
        }
        let workspace = if size > 0 {
            Some(self.alloc(size as usize)?)
        } else {
            None
        };
        let ws_ptr = workspace.as_ref().map_or(std::ptr::null_mut(), |w| w.ptr());
        // SAFETY: executor from the matching first phase, workspace of the size it asked.
        let st = unsafe { launch(ws_ptr, size, executor, self.launch_stream()) };
        // Counted once queued, so a synchronize that reads the count covers the launch; the
        // buffers it uses (the workspace included) are only dropped after this.
        self.frees().launched();
        self.check(st, op)?;
        Ok(Launch::Queued)
    }
}

/// What [`Device::try_run`] did.
#[derive(Debug)]
pub enum Launch {
    /// The op was queued on the stream.
    Queued,
    /// The op's first phase returned this CANN error; nothing was queued.
    Declined(Error),
}

impl Drop for Device {
    fn drop(&mut self) {
        // Every buffer (each holds an Arc to this device) is gone; the deferred ones are
        // freed once the stream is idle, also if this last synchronize fails.
        let _ = self.synchronize();
        let rest = self.frees().drain();
        self.free_now(rest);
        // SAFETY: the stream was created in `open`. The device is not reset and ACL not
        // finalised: both are process-wide, and other backend instances may still use them.
        let _ = unsafe { (self.cann.rt.aclrtDestroyStream)(self.stream()) };
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({} #{})", self.soc, self.id)
    }
}
