//! ACL runtime: initialisation, the one emulated device, streams.
//!
//! Signatures (AscendCL API reference, "System Configuration", "Device Management", "Stream
//! Management", <https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/>):
//! `aclError aclInit(const char *configPath)`, `aclError aclFinalize()`,
//! `aclError aclrtSetDevice(int32_t deviceId)`, `aclError aclrtResetDevice(int32_t deviceId)`,
//! `aclError aclrtGetDeviceCount(uint32_t *count)`, `aclError aclrtCreateStream(aclrtStream *stream)`,
//! `aclError aclrtDestroyStream(aclrtStream stream)`,
//! `aclError aclrtSynchronizeStream(aclrtStream stream)`, `const char *aclrtGetSocName()`.
//!
//! Streams are queues: aclnn launches append a task, `aclrtSynchronizeStream` runs them in
//! order and returns the first failure (the rest of that queue is dropped). Tasks are
//! numbered in issue order, so that memory freed while older tasks are still pending can be
//! quarantined until they are gone (see `memory`).

use crate::status::{
    status, EmuResult, Fail, ACL_ERROR_INVALID_PARAM, ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_PARAM_INVALID,
};
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Work queued on a stream.
pub type Task = Box<dyn FnOnce() -> EmuResult<()> + Send>;

static INITIALISED: AtomicBool = AtomicBool::new(false);
static NEXT_STREAM: AtomicUsize = AtomicUsize::new(0x5000);
/// A stream's queued tasks with their issue numbers.
type Queue = Vec<(u64, Task)>;
/// Per stream, its queue.
static STREAMS: Mutex<Option<HashMap<usize, Queue>>> = Mutex::new(None);
/// The issue number of the next task.
static NEXT_TASK: AtomicU64 = AtomicU64::new(0);
/// The issue number of the first task of the batch a synchronize is running (`u64::MAX`
/// when none); read and written under the `STREAMS` lock.
static RUNNING_FROM: AtomicU64 = AtomicU64::new(u64::MAX);
/// Held while a synchronize runs tasks: a concurrent `aclrtSynchronizeStream` must not
/// return while tasks queued before it are still running on another thread.
static RUNNING: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether `aclrtSetDevice` has been called on this thread: AscendCL's current device
    /// and context are per thread ("aclrtSetDevice" page).
    static DEVICE_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// ACL_ERROR_RT_CONTEXT_NULL (rt_error_codes.h): no current context on this thread.
pub const ACL_ERROR_RT_CONTEXT_NULL: i32 = 107002;

/// Fails unless the calling thread has set a device.
pub fn require_device(call: &str) -> EmuResult<()> {
    if DEVICE_SET.with(|d| d.get()) {
        Ok(())
    } else {
        Err(Fail::new(
            ACL_ERROR_RT_CONTEXT_NULL,
            format!("{call}: no device set on this thread (call aclrtSetDevice first)"),
        ))
    }
}

/// The SoC the emulator reports: it emulates the API, not a chip.
const SOC_NAME: &[u8] = b"moemla-cann-emulator\0";

fn with_streams<R>(f: impl FnOnce(&mut HashMap<usize, Queue>) -> R) -> R {
    let mut guard = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Appends `task` to `stream`'s queue.
pub fn enqueue(stream: *mut c_void, task: Task) -> EmuResult<()> {
    with_streams(|s| match s.get_mut(&(stream as usize)) {
        Some(queue) => {
            queue.push((NEXT_TASK.fetch_add(1, Ordering::SeqCst), task));
            Ok(())
        }
        None => Err(Fail::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("stream {stream:p} was not created by aclrtCreateStream"),
        )),
    })
}

/// The number of tasks issued so far: every task issued before now has a smaller number.
pub fn tasks_issued() -> u64 {
    with_streams(|_| NEXT_TASK.load(Ordering::SeqCst))
}

/// The issue number of the oldest task not yet finished (queued on any stream, or in the
/// batch a synchronize is running); `u64::MAX` when there is none.
pub fn oldest_pending_task() -> u64 {
    with_streams(|s| {
        s.values()
            .filter_map(|q| q.first().map(|(id, _)| *id))
            .fold(RUNNING_FROM.load(Ordering::SeqCst), u64::min)
    })
}

/// `aclInit`: once per process; a second call returns ACL_ERROR_REPEAT_INITIALIZE.
///
/// # Safety
/// `config_path` may be null (no configuration file); it is not read.
#[no_mangle]
pub unsafe extern "C" fn aclInit(_config_path: *const c_char) -> i32 {
    if INITIALISED.swap(true, Ordering::SeqCst) {
        return status(Err(Fail::new(
            ACL_ERROR_REPEAT_INITIALIZE,
            "aclInit: already initialised in this process",
        )));
    }
    0
}

/// `aclFinalize`.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn aclFinalize() -> i32 {
    INITIALISED.store(false, Ordering::SeqCst);
    0
}

fn check_device(device_id: i32) -> EmuResult<()> {
    if !INITIALISED.load(Ordering::SeqCst) {
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            "aclInit has not been called",
        ));
    }
    if device_id != 0 {
        return Err(Fail::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("device {device_id} does not exist (the emulator has device 0 only)"),
        ));
    }
    Ok(())
}

/// `aclrtSetDevice`: device 0 only.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn aclrtSetDevice(device_id: i32) -> i32 {
    let result = check_device(device_id);
    if result.is_ok() {
        DEVICE_SET.with(|d| d.set(true));
    }
    status(result)
}

/// `aclrtResetDevice`.
///
/// # Safety
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn aclrtResetDevice(device_id: i32) -> i32 {
    status(check_device(device_id))
}

/// `aclrtGetDeviceCount`: one device.
///
/// # Safety
/// `count` must be null or writable.
#[no_mangle]
pub unsafe extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> i32 {
    if count.is_null() {
        return status(Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            "aclrtGetDeviceCount: null count",
        )));
    }
    // SAFETY: checked non-null.
    unsafe { *count = 1 };
    0
}

/// `aclrtGetSocName`.
///
/// # Safety
/// The returned string is static.
#[no_mangle]
pub unsafe extern "C" fn aclrtGetSocName() -> *const c_char {
    SOC_NAME.as_ptr() as *const c_char
}

/// `aclrtCreateStream`.
///
/// # Safety
/// `stream` must be null or writable.
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateStream(stream: *mut *mut c_void) -> i32 {
    if stream.is_null() {
        return status(Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            "aclrtCreateStream: null stream",
        )));
    }
    if let Err(fail) = require_device("aclrtCreateStream") {
        return status(Err(fail));
    }
    let id = NEXT_STREAM.fetch_add(16, Ordering::SeqCst);
    with_streams(|s| s.insert(id, Vec::new()));
    // SAFETY: checked non-null.
    unsafe { *stream = id as *mut c_void };
    0
}

/// `aclrtDestroyStream`: pending tasks are dropped unrun.
///
/// # Safety
/// Any value is accepted; unknown streams are reported.
#[no_mangle]
pub unsafe extern "C" fn aclrtDestroyStream(stream: *mut c_void) -> i32 {
    let removed = with_streams(|s| s.remove(&(stream as usize)));
    crate::memory::release_quarantine();
    status(match removed {
        Some(_) => Ok(()),
        None => Err(Fail::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtDestroyStream: unknown stream {stream:p}"),
        )),
    })
}

/// Not a CANN symbol: the tasks queued on `stream` and not yet run (-1: unknown stream), so
/// a test can see which stream a caller's launches went to.
#[no_mangle]
pub extern "C" fn moemla_emulator_pending_tasks(stream: *mut c_void) -> i64 {
    with_streams(|s| {
        s.get(&(stream as usize))
            .map_or(-1, |q| i64::try_from(q.len()).unwrap_or(i64::MAX))
    })
}

/// `aclrtSynchronizeStream`: runs the queued tasks in order; returns only when every task
/// queued before the call has finished, including tasks another thread's synchronize took.
///
/// # Safety
/// Any value is accepted; unknown streams are reported.
#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeStream(stream: *mut c_void) -> i32 {
    if let Err(fail) = require_device("aclrtSynchronizeStream") {
        return status(Err(fail));
    }
    let _running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let queue = with_streams(|s| {
        let queue = s.get_mut(&(stream as usize)).map(std::mem::take);
        if let Some(&(first, _)) = queue.as_ref().and_then(|q| q.first()) {
            RUNNING_FROM.store(first, Ordering::SeqCst);
        }
        queue
    });
    let result = match queue {
        None => Err(Fail::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtSynchronizeStream: unknown stream {stream:p}"),
        )),
        Some(tasks) => tasks.into_iter().try_for_each(|(_, task)| task()),
    };
    with_streams(|_| RUNNING_FROM.store(u64::MAX, Ordering::SeqCst));
    crate::memory::release_quarantine();
    status(result)
}
