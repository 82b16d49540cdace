//! The nnopbase handles: aclTensor, aclIntArray, aclTensorList, aclScalar, and the
//! argument readers ops use. Live handles are tracked, so use-after-destroy and foreign
//! pointers are reported instead of crashing.
//!
//! Signatures (<https://www.hiascend.com/document/detail/en/canncommercial/850/API/aolapi/operatorlist_00019.html>
//! and the neighbouring base-interface pages): `aclCreateTensor(const int64_t *viewDims,
//! uint64_t viewDimsNum, aclDataType dataType, const int64_t *stride, int64_t offset,
//! aclFormat format, const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData)`,
//! `aclCreateIntArray(const int64_t *value, uint64_t size)`,
//! `aclCreateTensorList(const aclTensor *const *value, uint64_t size)`,
//! `aclCreateScalar(void *value, aclDataType dataType)` and their aclDestroy*.

use crate::status::{EmuResult, Fail, ACLNN_ERR_PARAM_NULLPTR};
use crate::tensor::{decode, dtype_size, TensorDesc};
use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::Mutex;

/// Live handles of every kind, so use-after-destroy is reported instead of crashing.
static LIVE: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

fn live<R>(f: impl FnOnce(&mut HashSet<usize>) -> R) -> R {
    let mut guard = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashSet::new))
}

fn register<T>(value: T) -> *mut T {
    let ptr = Box::into_raw(Box::new(value));
    live(|l| l.insert(ptr as usize));
    ptr
}

fn unregister<T>(ptr: *mut T) -> bool {
    if ptr.is_null() || !live(|l| l.remove(&(ptr as usize))) {
        return false;
    }
    // SAFETY: the pointer was produced by `register::<T>` and was live until just now.
    drop(unsafe { Box::from_raw(ptr) });
    true
}

/// Reads a live handle of type `T` (cloned).
fn get<T: Clone>(ptr: *const T, arg: &str) -> EmuResult<T> {
    if ptr.is_null() {
        return Err(Fail::new(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("`{arg}` is a null pointer"),
        ));
    }
    if !live(|l| l.contains(&(ptr as usize))) {
        return Err(Fail::invalid(format!(
            "`{arg}` ({ptr:p}) is not a live aclnn object"
        )));
    }
    // SAFETY: live handles point at a boxed T created by `register`.
    Ok(unsafe { (*ptr).clone() })
}

/// Opaque `aclTensor`.
#[derive(Clone, Debug)]
pub struct AclTensor(pub TensorDesc);
/// Opaque `aclIntArray`.
#[derive(Clone, Debug)]
pub struct AclIntArray(pub Vec<i64>);
/// Opaque `aclTensorList` (holds its tensors; destroying the list destroys them).
#[derive(Clone, Debug)]
pub struct AclTensorList(pub Vec<*mut AclTensor>);
/// Opaque `aclScalar`.
#[derive(Clone, Debug)]
pub struct AclScalar(pub f64);

/// A required tensor argument.
pub fn tensor(ptr: *const AclTensor, arg: &str) -> EmuResult<TensorDesc> {
    Ok(get(ptr, arg)?.0)
}

/// An optional tensor argument (null = absent).
pub fn opt_tensor(ptr: *const AclTensor, arg: &str) -> EmuResult<Option<TensorDesc>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        tensor(ptr, arg).map(Some)
    }
}

/// An optional int-array argument.
pub fn opt_int_array(ptr: *const AclIntArray, arg: &str) -> EmuResult<Option<Vec<i64>>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        Ok(Some(get(ptr, arg)?.0))
    }
}

/// A required int-array argument.
pub fn int_array(ptr: *const AclIntArray, arg: &str) -> EmuResult<Vec<i64>> {
    Ok(get(ptr, arg)?.0)
}

/// A required tensor-list argument.
pub fn tensor_list(ptr: *const AclTensorList, arg: &str) -> EmuResult<Vec<TensorDesc>> {
    get(ptr, arg)?
        .0
        .into_iter()
        .map(|t| tensor(t, arg))
        .collect()
}

/// A required scalar argument.
pub fn scalar(ptr: *const AclScalar, arg: &str) -> EmuResult<f64> {
    Ok(get(ptr, arg)?.0)
}

/// # Safety
/// `p` must be null or valid for `n` reads.
unsafe fn i64s(p: *const i64, n: u64) -> Option<Vec<i64>> {
    if p.is_null() && n > 0 {
        return None;
    }
    if n == 0 {
        return Some(Vec::new());
    }
    // SAFETY: non-null and valid for n elements per the caller.
    Some(unsafe { std::slice::from_raw_parts(p, n as usize) }.to_vec())
}

fn to_usizes(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&x| usize::try_from(x).ok()).collect()
}

/// `aclCreateTensor`: null when an argument is invalid (negative dims/strides/offset, a view
/// reaching past its storage, unknown dtype); `aclGetRecentErrMsg` says why.
///
/// # Safety
/// Array pointers must be valid for their counts.
#[no_mangle]
pub unsafe extern "C" fn aclCreateTensor(
    view_dims: *const i64,
    view_dims_num: u64,
    data_type: i32,
    stride: *const i64,
    offset: i64,
    format: i32,
    storage_dims: *const i64,
    storage_dims_num: u64,
    tensor_data: *mut c_void,
) -> *mut AclTensor {
    // SAFETY: forwarded caller guarantees.
    let parts = unsafe {
        (
            i64s(view_dims, view_dims_num),
            i64s(stride, view_dims_num),
            i64s(storage_dims, storage_dims_num),
        )
    };
    let built = (|| {
        let (Some(dims), Some(strides), Some(storage)) = parts else {
            return Err(Fail::invalid(
                "aclCreateTensor: null dims/strides/storageDims",
            ));
        };
        let (Some(dims), Some(strides), Some(storage)) =
            (to_usizes(&dims), to_usizes(&strides), to_usizes(&storage))
        else {
            return Err(Fail::invalid(
                "aclCreateTensor: negative dims, strides or storageDims",
            ));
        };
        let offset = usize::try_from(offset)
            .map_err(|_| Fail::invalid("aclCreateTensor: negative offset"))?;
        if dtype_size(data_type).is_none() {
            return Err(Fail::invalid(format!(
                "aclCreateTensor: unknown aclDataType {data_type}"
            )));
        }
        let desc = TensorDesc {
            dims,
            strides,
            offset,
            dtype: data_type,
            format,
            storage,
            data: tensor_data as usize,
        };
        if desc.numel() > 0 {
            let last: usize = desc
                .dims
                .iter()
                .zip(&desc.strides)
                .map(|(d, s)| (d - 1) * s)
                .sum();
            let capacity: usize = desc.storage.iter().product();
            if desc.offset + last >= capacity {
                return Err(Fail::invalid(format!(
                    "aclCreateTensor: view {:?} strides {:?} offset {} reaches element {} of a \
                     storage of {capacity}",
                    desc.dims,
                    desc.strides,
                    desc.offset,
                    desc.offset + last
                )));
            }
        }
        Ok(desc)
    })();
    match built {
        Ok(desc) => register(AclTensor(desc)),
        Err(fail) => {
            crate::status::report(fail);
            std::ptr::null_mut()
        }
    }
}

/// `aclDestroyTensor`.
///
/// # Safety
/// Pass a pointer from `aclCreateTensor`, once.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyTensor(tensor: *const AclTensor) -> i32 {
    destroy_status(unregister(tensor as *mut AclTensor), "aclDestroyTensor")
}

fn destroy_status(ok: bool, call: &str) -> i32 {
    if ok {
        0
    } else {
        crate::status::status(Err(Fail::invalid(format!("{call}: not a live object"))))
    }
}

/// `aclCreateIntArray`.
///
/// # Safety
/// `value` must be valid for `size` reads.
#[no_mangle]
pub unsafe extern "C" fn aclCreateIntArray(value: *const i64, size: u64) -> *mut AclIntArray {
    // SAFETY: forwarded caller guarantee.
    match unsafe { i64s(value, size) } {
        Some(v) => register(AclIntArray(v)),
        None => std::ptr::null_mut(),
    }
}

/// `aclDestroyIntArray`.
///
/// # Safety
/// Pass a pointer from `aclCreateIntArray`, once.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyIntArray(array: *const AclIntArray) -> i32 {
    destroy_status(unregister(array as *mut AclIntArray), "aclDestroyIntArray")
}

/// `aclCreateTensorList`: takes the tensors over (destroyed with the list).
///
/// # Safety
/// `value` must be valid for `size` reads.
#[no_mangle]
pub unsafe extern "C" fn aclCreateTensorList(
    value: *const *const AclTensor,
    size: u64,
) -> *mut AclTensorList {
    if value.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: valid for `size` reads per the caller.
    let items = unsafe { std::slice::from_raw_parts(value, size as usize) };
    register(AclTensorList(
        items.iter().map(|&t| t as *mut AclTensor).collect(),
    ))
}

/// `aclDestroyTensorList`: also destroys the tensors it holds.
///
/// # Safety
/// Pass a pointer from `aclCreateTensorList`, once.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyTensorList(list: *const AclTensorList) -> i32 {
    let Ok(items) = get(list, "tensorList") else {
        return destroy_status(false, "aclDestroyTensorList");
    };
    for t in items.0 {
        unregister(t);
    }
    destroy_status(
        unregister(list as *mut AclTensorList),
        "aclDestroyTensorList",
    )
}

/// `aclCreateScalar`: reads one value of `data_type` at `value`.
///
/// # Safety
/// `value` must point at one element of `data_type`.
#[no_mangle]
pub unsafe extern "C" fn aclCreateScalar(value: *const c_void, data_type: i32) -> *mut AclScalar {
    let Some(size) = dtype_size(data_type) else {
        return std::ptr::null_mut();
    };
    if value.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: points at one element of `size` bytes per the caller.
    let bytes = unsafe { std::slice::from_raw_parts(value as *const u8, size) };
    register(AclScalar(decode(data_type, bytes)))
}

/// `aclDestroyScalar`.
///
/// # Safety
/// Pass a pointer from `aclCreateScalar`, once.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyScalar(scalar: *const AclScalar) -> i32 {
    destroy_status(unregister(scalar as *mut AclScalar), "aclDestroyScalar")
}
