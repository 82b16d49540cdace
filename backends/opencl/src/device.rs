//! The OpenCL device: one context per device and process, with its in-order queue (and any
//! caller queue a handle from `with_queue` uses), what the backend knows about the device,
//! and the state ops share (programs and kernels per context; error flags and scratch per
//! queue).
//! Memory is in `buffer.rs`, launches in `launch.rs`, programs in `program.rs`, the index
//! error flags in `flags.rs`.

use crate::buffer::{Pool, Staging};
use crate::error::{cl, unavailable, ClCallError};
use crate::flags::FlagArea;
use crate::program::Programs;
use cl3::command_queue::{
    get_command_queue_info, retain_command_queue, CL_QUEUE_CONTEXT,
    CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, CL_QUEUE_PROPERTIES,
};
use cl3::types::cl_command_queue;
use moemla_core::memory::TrafficCounter;
use moemla_core::{DType, Error, Result};
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{Device, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_GPU};
use opencl3::error_codes::ClError;
use opencl3::platform::{get_platforms, Platform};
use opencl3::program::Program;
use std::sync::{Arc, Mutex};

pub use crate::launch::Arg;
pub use crate::program::Module;

/// Env var choosing the device `opencl` (device 0) opens: an index into [`devices`], or a
/// case-insensitive substring of the device name. Default: [`devices`]' first (the first
/// GPU, else the first device).
pub const DEVICE_ENV: &str = "MOEMLA_OPENCL_DEVICE";

/// What the backend knows about its device.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    /// Platform name ("Portable Computing Language").
    pub platform: String,
    /// Platform version ("OpenCL 3.0 PoCL 3.1+debian ...").
    pub platform_version: String,
    /// Device name.
    pub name: String,
    /// Whether the device is a CPU.
    pub is_cpu: bool,
    /// Global memory in bytes.
    pub global_mem: u64,
    /// The largest single buffer in bytes (`CL_DEVICE_MAX_MEM_ALLOC_SIZE`).
    pub max_alloc: u64,
    /// Local memory per work-group in bytes.
    pub local_mem: u64,
    /// Largest work-group.
    pub max_work_group: usize,
    /// Largest work-group extent per dimension (`CL_DEVICE_MAX_WORK_ITEM_SIZES`).
    pub max_work_item_sizes: Vec<usize>,
    /// Compute units.
    pub compute_units: u32,
    /// "OpenCL C 1.2 ...".
    pub c_version: String,
    /// The device's extension list.
    pub extensions: String,
}

/// One queue on a device: the context, programs and counters it shares with the device's
/// other queues ([`ClDevice::with_queue`]), and what belongs to the queue alone: its error
/// flags and its scratch pool.
pub struct ClDevice {
    /// The device's facts.
    pub facts: DeviceFacts,
    pub(crate) programs: Arc<Programs>,
    /// The index-error flags of the ops enqueued on this queue since the last check
    /// (`flags.rs`).
    pub(crate) flags: Mutex<FlagArea>,
    /// This queue's scratch memory (`buffer.rs`).
    pub(crate) pool: Arc<Pool>,
    /// This queue's host copies of `upload_into` data (`buffer.rs`); before `queue`, so it
    /// is dropped (waiting for its writes) while the queue lives.
    pub(crate) staging: Staging,
    pub(crate) queue: CommandQueue,
    pub(crate) context: Arc<Context>,
    /// Every transfer and allocation of the device's queues, counted where they happen
    /// (`buffer.rs`).
    pub(crate) traffic: Arc<TrafficCounter>,
}

impl ClDevice {
    /// Loads the ICD and opens device `index` of [`devices`], making its context and queue
    /// (`opencl:index`; device 0 is the one
    /// [`DEVICE_ENV`] names, if set): `Unavailable` naming how many there are if none has
    /// that index.
    pub fn open_index(index: usize) -> Result<ClDevice> {
        let devices = devices()?;
        let (platform, device) = match index {
            0 => choose(&devices)?,
            _ => *devices.get(index).ok_or_else(|| {
                unavailable(format!(
                    "no OpenCL device {index}: {} device(s) found",
                    devices.len()
                ))
            })?,
        };
        let facts = facts(platform, device).map_err(Error::from)?;
        let context = Context::from_device(&device).map_err(cl("clCreateContext"))?;
        #[allow(deprecated)] // clCreateCommandQueue: the OpenCL 1.2 entry point
        let queue =
            CommandQueue::create_default(&context, 0).map_err(cl("clCreateCommandQueue"))?;
        Ok(ClDevice {
            facts,
            programs: Arc::default(),
            flags: Mutex::new(FlagArea::default()),
            pool: Arc::default(),
            staging: Staging::default(),
            queue,
            context: Arc::new(context),
            traffic: Arc::default(),
        })
    }

    /// The same device, context, programs and counters with the caller's `queue`, which
    /// must be an in-order queue of this context ([`Error::Queue`] otherwise). The queue is
    /// retained (and released when the result is dropped); it gets error flags and a scratch
    /// pool of its own.
    ///
    /// # Safety
    ///
    /// `queue` is null or a valid `cl_command_queue` handle.
    pub unsafe fn with_queue(&self, queue: cl_command_queue) -> Result<ClDevice> {
        let refuse = |reason: String| Error::Queue {
            backend: crate::NAME.to_string(),
            reason,
        };
        if queue.is_null() {
            return Err(refuse("the cl_command_queue is null".into()));
        }
        let info = |param| {
            get_command_queue_info(queue, param)
                .map_err(|s| Error::from(ClCallError::new("clGetCommandQueueInfo", ClError(s))))
        };
        let context: isize = info(CL_QUEUE_CONTEXT)?.into();
        if context as usize != self.context.get() as usize {
            return Err(refuse(
                "the queue belongs to another OpenCL context (create it in the backend's, \
                 OpenClBackend::context)"
                    .into(),
            ));
        }
        let properties: u64 = info(CL_QUEUE_PROPERTIES)?.into();
        if properties & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE != 0 {
            return Err(refuse(
                "the queue executes out of order (ops rely on in-order execution)".into(),
            ));
        }
        // SAFETY: `queue` is a valid queue (queried above); the reference taken here is the
        // one `CommandQueue` releases on drop.
        unsafe { retain_command_queue(queue) }
            .map_err(|s| Error::from(ClCallError::new("clRetainCommandQueue", ClError(s))))?;
        let dims = u32::try_from(self.facts.max_work_item_sizes.len()).unwrap_or(3);
        Ok(ClDevice {
            facts: self.facts.clone(),
            programs: self.programs.clone(),
            flags: Mutex::new(FlagArea::default()),
            pool: Arc::default(),
            staging: Staging::default(),
            queue: CommandQueue::new(queue, dims),
            context: self.context.clone(),
            traffic: self.traffic.clone(),
        })
    }

    /// The program of `module` for storage type `dtype`, built on first use.
    pub fn program(&self, module: Module, dtype: DType) -> Result<Arc<Program>> {
        self.programs.get(&self.context, module, dtype)
    }

    /// How many programs have been built so far (each (module, dtype) at most once).
    pub fn programs_built(&self) -> usize {
        self.programs.built()
    }

    /// Waits until all queued work has finished.
    pub fn finish(&self) -> Result<()> {
        host_waited();
        self.queue.finish().map_err(cl("clFinish"))
    }
}

#[cfg(test)]
thread_local! {
    static HOST_WAITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Notes that the calling thread waits for the queue (a finish or a blocking read). Test
/// builds count these per thread (`host_waits`), to prove that ops never wait.
pub(crate) fn host_waited() {
    #[cfg(test)]
    HOST_WAITS.with(|n| n.set(n.get() + 1));
}

/// How many times this thread has waited for the queue so far (test builds).
#[cfg(test)]
pub(crate) fn host_waits() -> usize {
    HOST_WAITS.with(|n| n.get())
}

/// Every platform's OpenCL devices in a stable order, the devices `opencl:0`,
/// `opencl:1`, ...: GPUs first, then the others, each in platform then device order.
/// `Unavailable` when the ICD loader or every platform is missing.
pub fn devices() -> Result<Vec<(Platform, Device)>> {
    if let Err(e) = cl3::load_library() {
        return Err(unavailable(format!(
            "cannot load the OpenCL ICD loader libOpenCL.so.1 (or OPENCL_DYLIB_PATH): {e}; \
             install ocl-icd-libopencl1 and a driver (e.g. pocl-opencl-icd)"
        )));
    }
    let platforms = get_platforms().map_err(|e| {
        unavailable(format!(
            "no OpenCL platform: {}",
            ClCallError::new("clGetPlatformIDs", e)
        ))
    })?;
    let mut devices: Vec<(Platform, Device)> = Vec::new();
    for p in platforms {
        if let Ok(ids) = p.get_devices(CL_DEVICE_TYPE_ALL) {
            devices.extend(ids.into_iter().map(|id| (p, Device::new(id))));
        }
    }
    let is_gpu = |d: &Device| d.dev_type().is_ok_and(|t| t & CL_DEVICE_TYPE_GPU != 0);
    // Stable: the GPUs, then the rest, each keeping platform and device order.
    devices.sort_by_key(|(_, d)| !is_gpu(d));
    Ok(devices)
}

/// How many OpenCL devices [`devices`] finds (0 where it fails).
pub fn device_count() -> usize {
    devices().map_or(0, |d| d.len())
}

/// Device 0: the one [`DEVICE_ENV`] names, else the first of `devices` (GPUs come first).
fn choose(devices: &[(Platform, Device)]) -> Result<(Platform, Device)> {
    if devices.is_empty() {
        return Err(unavailable("OpenCL platforms found, but no devices"));
    }
    let name = |d: &Device| d.name().unwrap_or_default();
    if let Ok(wanted) = std::env::var(DEVICE_ENV) {
        let found = match wanted.trim().parse::<usize>() {
            Ok(i) => devices.get(i),
            Err(_) => devices
                .iter()
                .find(|(_, d)| name(d).to_lowercase().contains(&wanted.to_lowercase())),
        };
        let listed: Vec<String> = devices
            .iter()
            .enumerate()
            .map(|(i, (_, d))| format!("{i}: {}", name(d)))
            .collect();
        return found.copied().ok_or_else(|| {
            unavailable(format!(
                "{DEVICE_ENV}={wanted} matches no device (devices: {})",
                listed.join("; ")
            ))
        });
    }
    Ok(devices[0])
}

fn facts(platform: Platform, device: Device) -> std::result::Result<DeviceFacts, ClCallError> {
    let info = |e| ClCallError::new("clGetDeviceInfo", e);
    Ok(DeviceFacts {
        platform: platform
            .name()
            .map_err(|e| ClCallError::new("clGetPlatformInfo", e))?,
        platform_version: platform
            .version()
            .map_err(|e| ClCallError::new("clGetPlatformInfo", e))?,
        name: device.name().map_err(info)?,
        is_cpu: device.dev_type().map_err(info)? & CL_DEVICE_TYPE_CPU != 0,
        global_mem: device.global_mem_size().map_err(info)?,
        max_alloc: device.max_mem_alloc_size().map_err(info)?,
        local_mem: device.local_mem_size().map_err(info)?,
        max_work_group: device.max_work_group_size().map_err(info)?,
        max_work_item_sizes: device.max_work_item_sizes().map_err(info)?,
        compute_units: device.max_compute_units().map_err(info)?,
        c_version: device.opencl_c_version().map_err(info)?,
        extensions: device.extensions().map_err(info)?,
    })
}
