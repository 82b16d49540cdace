//! The emulator rejects misuse of the CANN API the way CANN documents it: null pointers,
//! short workspaces, foreign or reused executors, unknown device pointers, views past their
//! storage. Calls go straight to the exported C functions.

use moemla_cann_emulator::executor::WORKSPACE_BYTES;
use moemla_cann_emulator::handles::{aclCreateTensor, AclTensor};
use moemla_cann_emulator::memory::{
    aclrtFree, aclrtMalloc, aclrtMemcpy, moemla_emulator_use_after_free_count,
};
use moemla_cann_emulator::ops::elementwise::{
    aclnnCast, aclnnCastGetWorkspaceSize, aclnnInplaceCopy,
};
use moemla_cann_emulator::runtime::{
    aclInit, aclrtCreateStream, aclrtSetDevice, aclrtSynchronizeStream, ACL_ERROR_RT_CONTEXT_NULL,
};
use moemla_cann_emulator::status::{
    aclGetRecentErrMsg, ACLNN_ERR_PARAM_INVALID, ACLNN_ERR_PARAM_NULLPTR,
    ACL_ERROR_RT_PARAM_INVALID,
};
use moemla_cann_emulator::tensor::{DT_F16, DT_F32, FORMAT_ND};
use std::ffi::{c_void, CStr};
use std::ptr::null_mut;

fn recent() -> String {
    // SAFETY: returns null or a live C string.
    unsafe {
        let p = aclGetRecentErrMsg();
        assert!(!p.is_null());
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// aclInit (once per process; a repeat is reported and harmless) and device 0 on this thread.
fn setup() {
    // SAFETY: plain FFI calls.
    unsafe {
        aclInit(std::ptr::null());
        assert_eq!(aclrtSetDevice(0), 0);
    }
}

fn malloc(bytes: usize) -> *mut c_void {
    setup();
    let mut p = null_mut();
    // SAFETY: out-pointer to a local.
    assert_eq!(unsafe { aclrtMalloc(&mut p, bytes, 0) }, 0);
    p
}

fn tensor(data: *mut c_void, n: usize, dtype: i32) -> *mut AclTensor {
    let dims = [n as i64];
    let strides = [1i64];
    // SAFETY: arrays valid for one element.
    let t = unsafe {
        aclCreateTensor(
            dims.as_ptr(),
            1,
            dtype,
            strides.as_ptr(),
            0,
            FORMAT_ND,
            dims.as_ptr(),
            1,
            data,
        )
    };
    assert!(!t.is_null());
    t
}

/// A stream and a prepared f32 -> f16 cast executor over 8 elements.
fn prepared_cast() -> (*mut c_void, *mut c_void, u64) {
    // SAFETY: plain FFI calls with valid out-pointers.
    setup();
    unsafe {
        let mut stream = null_mut();
        assert_eq!(aclrtCreateStream(&mut stream), 0);
        let (x, y) = (tensor(malloc(32), 8, DT_F32), tensor(malloc(16), 8, DT_F16));
        let (mut ws, mut exec) = (0u64, null_mut());
        assert_eq!(
            aclnnCastGetWorkspaceSize(x, DT_F16, y, &mut ws, &mut exec),
            0
        );
        (stream, exec, ws)
    }
}

#[test]
fn short_workspace_is_rejected() {
    let (stream, exec, ws) = prepared_cast();
    assert_eq!(ws, WORKSPACE_BYTES);
    let buf = malloc(ws as usize);
    // SAFETY: emulator checks every pointer.
    let st = unsafe { aclnnCast(buf, ws - 1, exec, stream) };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("less than"), "{}", recent());
}

#[test]
fn workspace_outside_device_memory_is_rejected() {
    let (stream, exec, ws) = prepared_cast();
    let mut host = vec![0u8; ws as usize];
    // SAFETY: emulator checks every pointer.
    let st = unsafe { aclnnCast(host.as_mut_ptr() as *mut c_void, ws, exec, stream) };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
}

#[test]
fn executor_of_another_op_or_used_twice_is_rejected() {
    let (stream, exec, ws) = prepared_cast();
    let buf = malloc(ws as usize);
    // SAFETY: emulator checks every pointer.
    unsafe {
        assert_eq!(
            aclnnInplaceCopy(buf, ws, exec, stream),
            ACLNN_ERR_PARAM_INVALID
        );
        assert!(
            recent().contains("aclnnCastGetWorkspaceSize"),
            "{}",
            recent()
        );
        let (stream, exec, ws) = prepared_cast();
        assert_eq!(aclnnCast(buf, ws, exec, stream), 0);
        assert_eq!(aclrtSynchronizeStream(stream), 0);
        assert_eq!(aclnnCast(buf, ws, exec, stream), ACLNN_ERR_PARAM_INVALID);
    }
}

#[test]
fn null_arguments_are_reported_as_nullptr() {
    // SAFETY: emulator checks every pointer.
    setup();
    unsafe {
        let y = tensor(malloc(16), 8, DT_F16);
        let (mut ws, mut exec) = (0u64, null_mut());
        assert_eq!(
            aclnnCastGetWorkspaceSize(std::ptr::null(), DT_F16, y, &mut ws, &mut exec),
            ACLNN_ERR_PARAM_NULLPTR
        );
        assert!(
            recent().contains("`self` is a null pointer"),
            "{}",
            recent()
        );
        let x = tensor(malloc(32), 8, DT_F32);
        assert_eq!(
            aclnnCastGetWorkspaceSize(x, DT_F16, y, null_mut(), &mut exec),
            ACLNN_ERR_PARAM_NULLPTR
        );
        assert_eq!(
            aclnnCast(null_mut(), 0, null_mut(), null_mut()),
            ACLNN_ERR_PARAM_NULLPTR
        );
    }
}

#[test]
fn freeing_unknown_or_freed_pointers_fails() {
    let p = malloc(64);
    let mut host = [0u8; 8];
    // SAFETY: emulator checks device pointers; host buffers are valid.
    unsafe {
        assert_eq!(
            aclrtFree(host.as_mut_ptr() as *mut c_void),
            ACL_ERROR_RT_PARAM_INVALID
        );
        assert_eq!(aclrtFree(p), 0);
        assert_eq!(aclrtFree(p), ACL_ERROR_RT_PARAM_INVALID);
        // Copying out of freed memory is refused, not performed.
        assert_eq!(
            aclrtMemcpy(host.as_mut_ptr() as *mut c_void, 8, p, 8, 2),
            ACL_ERROR_RT_PARAM_INVALID
        );
    }
}

#[test]
fn views_reaching_past_storage_are_refused() {
    let data = malloc(32);
    let (dims, strides, storage) = ([4i64, 4], [4i64, 1], [8i64]);
    // SAFETY: arrays valid for their counts.
    let t = unsafe {
        aclCreateTensor(
            dims.as_ptr(),
            2,
            DT_F32,
            strides.as_ptr(),
            0,
            FORMAT_ND,
            storage.as_ptr(),
            1,
            data,
        )
    };
    assert!(t.is_null());
    assert!(
        recent().contains("reaches element 15 of a storage of 8"),
        "{}",
        recent()
    );
}

#[test]
fn runtime_calls_need_a_device_set_on_the_calling_thread() {
    setup();
    let status = std::thread::spawn(|| {
        let mut p = null_mut();
        // SAFETY: out-pointer to a local.
        let st = unsafe { aclrtMalloc(&mut p, 64, 0) };
        (st, recent())
    })
    .join()
    .unwrap();
    assert_eq!(status.0, ACL_ERROR_RT_CONTEXT_NULL);
    assert!(
        status.1.contains("no device set on this thread"),
        "{}",
        status.1
    );
}

#[test]
fn a_task_touching_memory_freed_while_it_was_queued_fails_at_synchronize() {
    setup();
    // SAFETY: emulator checks every pointer; out-pointers are locals.
    unsafe {
        let mut stream = null_mut();
        assert_eq!(aclrtCreateStream(&mut stream), 0);
        let (src, dst) = (malloc(32), malloc(16));
        let (x, y) = (tensor(src, 8, DT_F32), tensor(dst, 8, DT_F16));
        let (mut ws, mut exec) = (0u64, null_mut());
        assert_eq!(
            aclnnCastGetWorkspaceSize(x, DT_F16, y, &mut ws, &mut exec),
            0
        );
        let buf = malloc(ws as usize);
        assert_eq!(aclnnCast(buf, ws, exec, stream), 0);
        // The cast is queued, not run: freeing its output now is a use after free on the
        // device, reported when the task runs.
        assert_eq!(aclrtFree(dst), 0);
        let count = moemla_emulator_use_after_free_count();
        assert_eq!(aclrtSynchronizeStream(stream), ACL_ERROR_RT_PARAM_INVALID);
        assert!(recent().contains("use after free"), "{}", recent());
        assert!(moemla_emulator_use_after_free_count() > count);
        // Once nothing queued before the free is left, the block is gone for good.
        assert_eq!(aclrtSynchronizeStream(stream), 0);
        assert_eq!(aclrtFree(dst), ACL_ERROR_RT_PARAM_INVALID);
        assert_eq!(aclrtFree(src), 0);
        assert_eq!(aclrtFree(buf), 0);
    }
}

#[test]
fn memory_freed_after_its_task_ran_is_simply_freed() {
    setup();
    // SAFETY: emulator checks every pointer; out-pointers are locals.
    unsafe {
        let mut stream = null_mut();
        assert_eq!(aclrtCreateStream(&mut stream), 0);
        let (src, dst) = (malloc(32), malloc(16));
        let (x, y) = (tensor(src, 8, DT_F32), tensor(dst, 8, DT_F16));
        let (mut ws, mut exec) = (0u64, null_mut());
        assert_eq!(
            aclnnCastGetWorkspaceSize(x, DT_F16, y, &mut ws, &mut exec),
            0
        );
        let buf = malloc(ws as usize);
        assert_eq!(aclnnCast(buf, ws, exec, stream), 0);
        assert_eq!(aclrtSynchronizeStream(stream), 0);
        for p in [src, dst, buf] {
            assert_eq!(aclrtFree(p), 0);
        }
        assert_eq!(aclrtSynchronizeStream(stream), 0);
    }
}
