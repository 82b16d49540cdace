//! Device memory: host allocations tracked by address, so that every access can be checked.
//!
//! Signatures (AscendCL API reference, "Memory Management",
//! <https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/>):
//! - `aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)`;
//!   policy ACL_MEM_MALLOC_HUGE_FIRST 0, ACL_MEM_MALLOC_HUGE_ONLY 1, ACL_MEM_MALLOC_NORMAL_ONLY 2.
//! - `aclError aclrtFree(void *devPtr)`
//! - `aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count,
//!   aclrtMemcpyKind kind)`; kind HOST_TO_HOST 0, HOST_TO_DEVICE 1, DEVICE_TO_HOST 2,
//!   DEVICE_TO_DEVICE 3. Synchronous.
//! - `aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)`
//! - `aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free, size_t *total)`

use crate::status::{
    status, EmuResult, Fail, ACL_ERROR_INVALID_PARAM, ACL_ERROR_RT_MEMORY_ALLOCATION,
    ACL_ERROR_RT_PARAM_INVALID,
};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The emulated device's capacity, reported by `aclrtGetMemInfo` (64 GiB, as a 910B).
pub const TOTAL_BYTES: usize = 64 << 30;

/// Live allocations: start address -> the owned bytes.
static HEAP: Mutex<BTreeMap<usize, Box<[u8]>>> = Mutex::new(BTreeMap::new());

/// Blocks `aclrtFree` released while tasks issued before it were still pending (CANN: "the
/// memory must not be in use", undefined otherwise): start address -> (bytes, the task
/// count at the free). Kept allocated, so a new `aclrtMalloc` cannot reuse the address and
/// hide the use; a task touching one fails with "use after free". Released once every
/// task issued before the free has finished ([`release_quarantine`]).
static QUARANTINE: Mutex<Quarantine> = Mutex::new(BTreeMap::new());

/// Quarantined blocks: start address -> (bytes, tasks issued before the free).
type Quarantine = BTreeMap<usize, (Box<[u8]>, u64)>;

/// Accesses to quarantined memory so far (see [`moemla_emulator_use_after_free_count`]).
static USE_AFTER_FREE: AtomicU64 = AtomicU64::new(0);

/// Not a CANN symbol: how many device accesses hit memory freed while still in use, since
/// the library was loaded. Each also fails its task; this count lets a test see them even
/// when the caller does not report that failure.
#[no_mangle]
pub extern "C" fn moemla_emulator_use_after_free_count() -> u64 {
    USE_AFTER_FREE.load(Ordering::SeqCst)
}

fn quarantine() -> MutexGuard<'static, Quarantine> {
    QUARANTINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops the quarantined blocks no pending task can still reach (called after every
/// synchronize and stream destruction).
pub fn release_quarantine() {
    let oldest = crate::runtime::oldest_pending_task();
    quarantine().retain(|_, (_, issued)| oldest < *issued);
}

/// Locks the heap (a panic elsewhere never poisons it for good).
pub fn heap() -> MutexGuard<'static, BTreeMap<usize, Box<[u8]>>> {
    HEAP.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes `[addr, addr + len)` inside one live allocation, mutably; `what` names the use.
pub fn range_mut<'a>(
    heap: &'a mut BTreeMap<usize, Box<[u8]>>,
    addr: usize,
    len: usize,
    what: &str,
) -> EmuResult<&'a mut [u8]> {
    let bad = || {
        let freed = quarantine()
            .range(..=addr)
            .next_back()
            .is_some_and(|(&base, (block, _))| addr < base + block.len());
        let why = if freed {
            USE_AFTER_FREE.fetch_add(1, Ordering::SeqCst);
            "use after free: it lies in memory aclrtFree released while this task was still \
             queued"
        } else {
            "is not inside one device allocation"
        };
        Fail::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("{what}: [{addr:#x}, +{len}) {why}"),
        )
    };
    let (&base, block) = heap.range_mut(..=addr).next_back().ok_or_else(bad)?;
    let start = addr - base;
    let end = start.checked_add(len).ok_or_else(bad)?;
    if end > block.len() {
        return Err(bad());
    }
    Ok(&mut block[start..end])
}

/// Copies `len` device bytes at `addr` out.
pub fn read(addr: usize, len: usize, what: &str) -> EmuResult<Vec<u8>> {
    let mut h = heap();
    Ok(range_mut(&mut h, addr, len, what)?.to_vec())
}

/// `aclrtMalloc`: memory filled with 0xFF bytes (NaN in every float type), like uninitialised
/// device memory it must not be relied on.
///
/// # Safety
/// `dev_ptr` must be null or writable.
#[no_mangle]
pub unsafe extern "C" fn aclrtMalloc(dev_ptr: *mut *mut c_void, size: usize, policy: i32) -> i32 {
    status((|| {
        if dev_ptr.is_null() || size == 0 || !(0..=2).contains(&policy) {
            return Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                format!(
                    "aclrtMalloc: devPtr null, size 0 or unknown policy {policy} (size {size})"
                ),
            ));
        }
        crate::runtime::require_device("aclrtMalloc")?;
        // A size the host cannot provide is CANN's allocation failure, never an abort.
        let mut block = Vec::new();
        block.try_reserve_exact(size).map_err(|_| {
            Fail::new(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                format!("aclrtMalloc: cannot allocate {size} bytes"),
            )
        })?;
        block.resize(size, 0xFFu8);
        let block = block.into_boxed_slice();
        let addr = block.as_ptr() as usize;
        heap().insert(addr, block);
        // SAFETY: checked non-null above; the caller provides a writable slot.
        unsafe { *dev_ptr = addr as *mut c_void };
        Ok(())
    })())
}

/// `aclrtFree`: only pointers returned by `aclrtMalloc`, once. A block freed while tasks
/// issued before are pending is quarantined (see `QUARANTINE`), not returned to the host.
///
/// # Safety
/// Any pointer value is accepted; unknown ones are reported, not freed.
#[no_mangle]
pub unsafe extern "C" fn aclrtFree(dev_ptr: *mut c_void) -> i32 {
    let removed = heap().remove(&(dev_ptr as usize));
    status(match removed {
        Some(block) => {
            let issued = crate::runtime::tasks_issued();
            if crate::runtime::oldest_pending_task() < issued {
                quarantine().insert(dev_ptr as usize, (block, issued));
            }
            Ok(())
        }
        None => Err(Fail::new(
            ACL_ERROR_RT_PARAM_INVALID,
            format!("aclrtFree: {dev_ptr:p} is not a live aclrtMalloc pointer"),
        )),
    })
}

/// `aclrtMemcpy`: synchronous; device sides must lie inside live allocations.
///
/// # Safety
/// Host sides must be valid for `count` bytes, as in C.
#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: i32,
) -> i32 {
    status((|| {
        if dst.is_null() || src.is_null() || count > dest_max {
            return Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                format!("aclrtMemcpy: null pointer or count {count} > destMax {dest_max}"),
            ));
        }
        let mut h = heap();
        let bytes: Vec<u8> = match kind {
            1 | 0 => {
                // SAFETY: host source valid for `count` bytes per the C contract.
                unsafe { std::slice::from_raw_parts(src as *const u8, count) }.to_vec()
            }
            2 | 3 => range_mut(&mut h, src as usize, count, "aclrtMemcpy src")?.to_vec(),
            _ => {
                return Err(Fail::new(
                    ACL_ERROR_RT_PARAM_INVALID,
                    format!("aclrtMemcpy: unknown aclrtMemcpyKind {kind}"),
                ))
            }
        };
        match kind {
            1 | 3 => {
                range_mut(&mut h, dst as usize, count, "aclrtMemcpy dst")?.copy_from_slice(&bytes)
            }
            _ => {
                // SAFETY: host destination valid for `count` (<= destMax) bytes.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, count) }
            }
        }
        Ok(())
    })())
}

/// `aclrtMemset`: sets `count` bytes to `value`'s low byte.
///
/// # Safety
/// Any pointer value is accepted; it must be device memory.
#[no_mangle]
pub unsafe extern "C" fn aclrtMemset(
    dev_ptr: *mut c_void,
    max_count: usize,
    value: i32,
    count: usize,
) -> i32 {
    status((|| {
        if count > max_count {
            return Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                format!("aclrtMemset: count {count} > maxCount {max_count}"),
            ));
        }
        let mut h = heap();
        range_mut(&mut h, dev_ptr as usize, count, "aclrtMemset")?.fill(value as u8);
        Ok(())
    })())
}

/// `aclrtGetMemInfo`: free and total bytes of the emulated device.
///
/// # Safety
/// `free` and `total` must be null or writable.
#[no_mangle]
pub unsafe extern "C" fn aclrtGetMemInfo(_attr: i32, free: *mut usize, total: *mut usize) -> i32 {
    if free.is_null() || total.is_null() {
        return status(Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            "aclrtGetMemInfo: null output",
        )));
    }
    let used: usize = heap().values().map(|b| b.len()).sum();
    // SAFETY: both checked non-null above.
    unsafe {
        *free = TOTAL_BYTES.saturating_sub(used);
        *total = TOTAL_BYTES;
    }
    0
}
