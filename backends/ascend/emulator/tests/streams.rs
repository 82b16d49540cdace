//! Stream semantics: `aclrtSynchronizeStream` returns only once every task queued before it
//! has finished, also when another thread's synchronize is the one running them.

use moemla_cann_emulator::runtime::{
    aclInit, aclrtCreateStream, aclrtSetDevice, aclrtSynchronizeStream, enqueue,
};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// aclInit (a repeat is reported and harmless) and device 0 on this thread.
fn setup() {
    // SAFETY: plain FFI calls.
    unsafe {
        aclInit(std::ptr::null());
        assert_eq!(aclrtSetDevice(0), 0);
    }
}

#[test]
fn synchronize_waits_for_tasks_another_thread_is_running() {
    setup();
    let mut stream: *mut c_void = std::ptr::null_mut();
    // SAFETY: out-pointer to a local.
    assert_eq!(unsafe { aclrtCreateStream(&mut stream) }, 0);
    let (started, wait_started) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let task = move || {
        started.send(()).expect("test thread waits");
        std::thread::sleep(Duration::from_millis(200));
        flag.store(true, Ordering::SeqCst);
        Ok(())
    };
    enqueue(stream, Box::new(task)).expect("stream exists");
    let addr = stream as usize;
    let other = std::thread::spawn(move || {
        setup();
        // SAFETY: a stream created above, never destroyed.
        unsafe { aclrtSynchronizeStream(addr as *mut c_void) }
    });
    wait_started
        .recv()
        .expect("task started on the other thread");
    // SAFETY: as above.
    assert_eq!(unsafe { aclrtSynchronizeStream(stream) }, 0);
    assert!(
        done.load(Ordering::SeqCst),
        "synchronize returned while a task queued before it was still running"
    );
    assert_eq!(other.join().expect("no panic"), 0);
}
