//! [`SuiteConfig::allow_unsupported`](crate::SuiteConfig::allow_unsupported): the backend
//! under test seen through [`Recording`], which remembers the first `Error::Unsupported` any
//! call returns. The harness reports a test that fails after one as skipped with that
//! reason, and a property case that met one as rejected (proptest draws another input).
//! Such expected panics are kept out of the output by [`quiet_panics_after_unsupported`].

use moemla_core::vendor::calls::{
    MlaDecodeCall, MlaDecodeOutput, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::{Backend, BackendInfo, DType, DeviceTensor, Error, HostTensor, Result, Shape};
use std::cell::Cell;
use std::sync::{Mutex, Once};
use std::time::Duration;

thread_local! {
    /// Whether a call on this thread returned `Unsupported` since the last
    /// [`Recording::take`]: a panic now is reported as a skip, not a failure.
    static MET_UNSUPPORTED: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that prints nothing for a panic on a thread
/// that has met `Unsupported` (the harness reports it as a skip) and defers to the
/// previous hook for every other panic.
pub(crate) fn quiet_panics_after_unsupported() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !MET_UNSUPPORTED.get() {
                previous(info);
            }
        }));
    });
}

/// A backend that forwards every call to `inner` and records the first `Unsupported`
/// error since the last [`Recording::take`]. One per test (tests run concurrently).
pub(crate) struct Recording<'a> {
    inner: &'a dyn Backend,
    unsupported: Mutex<Option<String>>,
}

impl<'a> Recording<'a> {
    pub(crate) fn new(inner: &'a dyn Backend) -> Self {
        Recording {
            inner,
            unsupported: Mutex::new(None),
        }
    }

    /// The first `Unsupported` error (displayed) seen since the last call, if any.
    pub(crate) fn take(&self) -> Option<String> {
        MET_UNSUPPORTED.set(false);
        self.slot().take()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A test thread that panicked while holding the lock leaves the value intact.
        self.unsupported.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e @ Error::Unsupported { .. }) = &result {
            MET_UNSUPPORTED.set(true);
            self.slot().get_or_insert_with(|| e.to_string());
        }
        result
    }
}

impl Backend for Recording<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn info(&self) -> BackendInfo {
        self.inner.info()
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        self.note(self.inner.alloc_zeroed(shape, dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        self.note(self.inner.upload(host))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        self.note(self.inner.download(tensor))
    }

    fn synchronize(&self) -> Result<()> {
        self.note(self.inner.synchronize())
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        self.note(self.inner.moe_route(call))
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        self.note(self.inner.moe_experts(call))
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.note(self.inner.mla_decode(call))
    }

    fn copy_bench(&self, bytes: usize, reps: usize) -> Result<Duration> {
        self.inner.copy_bench(bytes, reps)
    }

    fn dense_gemm(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        self.inner.dense_gemm(a, b)
    }

    fn dense_gemm_impl(&self, dtype: DType) -> String {
        self.inner.dense_gemm_impl(dtype)
    }
}
