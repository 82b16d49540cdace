//! What a GPU API must provide for the runner: [`GpuDevice`] (memory, launches, the
//! stream), [`GpuBuffer`] (device memory), and [`KernelCache`], the per-kernel cache of
//! loaded functions both backends use so that a launch costs one driver call.

use crate::args::Arg;
use crate::module::Module;
use moemla_core::{DeviceBuffer, Op, Result};
use moemla_kernel_plan::{DeviceLimits, Launch};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// Device memory the runner can hand to kernels.
pub trait GpuBuffer: DeviceBuffer {
    /// The device address a kernel's pointer parameter receives.
    fn address(&self) -> u64;
    /// The allocation's size in bytes.
    fn bytes(&self) -> usize;
}

/// Checks that `bytes` bytes of `buffer` exist before a copy or fill touches them: a
/// device error naming `call` otherwise, never an out-of-bounds access.
pub fn check_len<B: GpuBuffer>(backend: &str, call: &str, buffer: &B, bytes: usize) -> Result<()> {
    if bytes <= buffer.bytes() {
        return Ok(());
    }
    Err(moemla_core::Error::Device {
        backend: backend.into(),
        call: call.into(),
        message: format!("{bytes} bytes asked of a {}-byte buffer", buffer.bytes()),
    })
}

/// One device and its one stream: everything the generic runner needs from CUDA or HIP.
///
/// Every method but [`GpuDevice::download`] and [`GpuDevice::synchronize`] only enqueues
/// or allocates; none may wait for the stream.
pub trait GpuDevice: Send + Sync + 'static {
    /// The device memory type, stamped into tensors.
    type Buffer: GpuBuffer;
    /// The API's name ("cuda", "hip"), in the device's own errors; tensors and the
    /// runner's checks carry the name given to [`crate::GpuRunner::new`] (`hip:1`).
    const NAME: &'static str;

    /// Makes the device current on the calling thread. The runner calls it once at the
    /// start of every entry point (op, allocation, copy, synchronize) before any other
    /// method, never per launch.
    fn enter(&self) -> Result<()>;
    /// What the plans need to know, or `Unsupported` when the device cannot run `op`'s
    /// kernels at all (a HIP device with another wavefront size).
    fn limits(&self, op: Op) -> Result<DeviceLimits>;
    /// `bytes` bytes of uninitialised device memory (`bytes` may be 0).
    fn alloc(&self, bytes: usize) -> Result<Self::Buffer>;
    /// Sets the first `bytes` bytes of `buffer` to `value`, in stream order.
    fn fill(&self, buffer: &Self::Buffer, bytes: usize, value: u8) -> Result<()>;
    /// A device copy of `data`; `data` may be dropped once this returns.
    fn upload(&self, data: &[u8]) -> Result<Self::Buffer>;
    /// Writes `data` into `buffer` from byte `offset`, in stream order; `data` may be
    /// dropped once this returns. The runner has checked that the range lies in `buffer`.
    fn upload_into(&self, buffer: &Self::Buffer, offset: usize, data: &[u8]) -> Result<()>;
    /// Copies `bytes` bytes of `src` from byte `src_offset` to `dst` at byte `dst_offset`,
    /// on the device, in stream order. The runner has checked both ranges, and that they do
    /// not overlap (it copies through a temporary when they would).
    fn copy(
        &self,
        src: &Self::Buffer,
        src_offset: usize,
        dst: &Self::Buffer,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()>;
    /// Reads `out.len()` bytes of `buffer` from byte `offset` into `out`, after the
    /// stream's pending work (waits for it). The runner has checked the range.
    fn read(&self, buffer: &Self::Buffer, offset: usize, out: &mut [u8]) -> Result<()>;
    /// The first `bytes` bytes of `buffer`, after the stream's pending work.
    fn download(&self, buffer: &Self::Buffer, bytes: usize) -> Result<Vec<u8>> {
        check_len(Self::NAME, "download", buffer, bytes)?;
        let mut out = moemla_core::alloc::try_filled_vec::<u8>(bytes, "gpu download")?;
        if bytes > 0 {
            self.read(buffer, 0, &mut out)?;
        }
        Ok(out)
    }
    /// `bytes` bytes of caller memory at device address `ptr` as a buffer that never frees
    /// it. Fails (never panics) for a null `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` addresses at least `bytes` bytes of this device's memory, valid until the
    /// buffer is dropped and the work enqueued on it has finished.
    unsafe fn wrap(&self, ptr: *mut c_void, bytes: usize) -> Result<Self::Buffer>;
    /// This device enqueuing on the caller's `stream` (a `CUstream` of the device's
    /// context, a `hipStream_t` of the device), sharing the loaded kernels; `Error::Queue`
    /// for a handle it cannot use (null, another context).
    ///
    /// # Safety
    ///
    /// `stream` is null or a valid stream handle of the API, alive until the returned
    /// device, every buffer it allocates and the work enqueued on it are gone.
    unsafe fn with_stream(&self, stream: *mut c_void) -> Result<Self>
    where
        Self: Sized;
    /// Enqueues one planned launch of an entry point of `module`, `args` in the kernel's
    /// parameter order. The plan's grid has no zero dimension.
    fn launch(&self, module: Module, launch: &Launch, args: &[Arg]) -> Result<()>;
    /// Waits until the stream's work has finished.
    fn synchronize(&self) -> Result<()>;
}

/// A loaded kernel: the driver's function handle, and the largest dynamic shared memory
/// it has been enabled for.
struct Loaded<F> {
    function: F,
    shared_bytes: u32,
}

/// Loaded modules (`M`) and their kernels' function handles (`F`), each loaded once: a
/// launch of a kernel seen before costs a map lookup, and the shared-memory attribute is
/// set only when a launch needs more than any before it.
pub struct KernelCache<M, F> {
    backend: &'static str,
    inner: Mutex<Loads<M, F>>,
}

/// The loaded modules and kernels.
struct Loads<M, F> {
    modules: HashMap<Module, M>,
    kernels: HashMap<&'static str, Loaded<F>>,
}

impl<M, F: Clone> KernelCache<M, F> {
    /// An empty cache for backend `backend` (named in its errors).
    pub fn new(backend: &'static str) -> Self {
        KernelCache {
            backend,
            inner: Mutex::new(Loads {
                modules: HashMap::new(),
                kernels: HashMap::new(),
            }),
        }
    }

    /// The function of `launch.kernel`, an entry point of `module`: on first use the module
    /// is compiled and loaded (`load_module`) and the function looked up (`get_function`);
    /// `enable_shared(function, bytes)` runs whenever the launch needs more dynamic shared
    /// memory than the function has been enabled for (it starts at `default_shared`).
    pub fn function(
        &self,
        module: Module,
        launch: &Launch,
        default_shared: u32,
        load_module: impl FnOnce(Module) -> Result<M>,
        get_function: impl FnOnce(&M, &str) -> Result<F>,
        enable_shared: impl FnOnce(&F, u32) -> Result<()>,
    ) -> Result<F> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Loads { modules, kernels } = &mut *guard;
        let name = module
            .entry_points()
            .iter()
            .copied()
            .find(|&e| e == launch.kernel)
            .ok_or_else(|| moemla_core::Error::Device {
                backend: self.backend.into(),
                call: "kernel lookup".into(),
                message: format!(
                    "{} is not an entry point of {}",
                    launch.kernel,
                    module.file_name()
                ),
            })?;
        if !kernels.contains_key(name) {
            let loaded = match modules.entry(module) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(load_module(module)?),
            };
            let function = get_function(loaded, name)?;
            kernels.insert(
                name,
                Loaded {
                    function,
                    shared_bytes: default_shared,
                },
            );
        }
        let entry = kernels.get_mut(name).expect("inserted above");
        if launch.shared_bytes > entry.shared_bytes {
            enable_shared(&entry.function, launch.shared_bytes)?;
            entry.shared_bytes = launch.shared_bytes;
        }
        Ok(entry.function.clone())
    }

    /// Every loaded module (for unloading at teardown).
    pub fn drain_modules(&mut self) -> Vec<M> {
        let Loads { modules, kernels } = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        kernels.clear();
        modules.drain().map(|(_, m)| m).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn launch(kernel: &str, shared_bytes: u32) -> Launch {
        Launch {
            kernel: kernel.into(),
            grid: [1, 1, 1],
            block: [128, 1, 1],
            shared_bytes,
        }
    }

    /// Counts the driver work a sequence of launches causes.
    #[test]
    fn modules_functions_and_the_shared_attribute_are_loaded_once() {
        let cache: KernelCache<&'static str, String> = KernelCache::new("test");
        let calls = RefCell::new(Vec::new());
        let get = |module: Module, l: &Launch| {
            cache
                .function(
                    module,
                    l,
                    48 * 1024,
                    |m| {
                        calls.borrow_mut().push(format!("load {}", m.name()));
                        Ok(m.name())
                    },
                    |m, name| {
                        calls.borrow_mut().push(format!("get {name}"));
                        Ok(format!("{m}/{name}"))
                    },
                    |f, bytes| {
                        calls.borrow_mut().push(format!("shared {f} {bytes}"));
                        Ok(())
                    },
                )
                .unwrap()
        };
        let decode = |b| launch("moemla_mla_decode_bf16", b);
        assert_eq!(
            get(Module::MlaDecode, &decode(1000)),
            "mla_decode/moemla_mla_decode_bf16"
        );
        get(Module::MlaDecode, &decode(100_000));
        get(Module::MlaDecode, &decode(100_000));
        get(Module::MlaDecode, &decode(60_000));
        get(Module::MlaDecode, &launch("moemla_mla_check", 0));
        get(Module::MlaDecode, &decode(120_000));
        assert_eq!(
            calls.into_inner(),
            [
                "load mla_decode",
                "get moemla_mla_decode_bf16",
                "shared mla_decode/moemla_mla_decode_bf16 100000",
                "get moemla_mla_check",
                "shared mla_decode/moemla_mla_decode_bf16 120000",
            ]
        );
    }

    #[test]
    fn with_no_default_any_dynamic_shared_memory_opts_in_once() {
        // CUDA's choice: the 48 KiB limit without an opt-in counts static shared memory
        // too, which the launcher does not know, so any dynamic use opts in.
        let cache: KernelCache<(), ()> = KernelCache::new("test");
        let enabled = RefCell::new(Vec::new());
        for bytes in [0, 128, 128, 49_000, 60] {
            let l = launch("moemla_moe_route_f32", bytes);
            cache
                .function(
                    Module::MoeRoute,
                    &l,
                    0,
                    |_| Ok(()),
                    |_, _| Ok(()),
                    |_, b| {
                        enabled.borrow_mut().push(b);
                        Ok(())
                    },
                )
                .unwrap();
        }
        assert_eq!(enabled.into_inner(), [128, 49_000]);
    }

    #[test]
    fn a_kernel_outside_its_module_is_an_error_not_a_lookup() {
        let cache: KernelCache<(), ()> = KernelCache::new("test");
        let err = cache
            .function(
                Module::MoeRoute,
                &launch("moemla_mla_check", 0),
                0,
                |_| panic!("nothing to load"),
                |_, _| panic!("nothing to look up"),
                |_, _| Ok(()),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("not an entry point of moe_route.cu"),
            "{err}"
        );
    }
}
