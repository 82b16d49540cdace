//! One opened plugin device: open/close, what it reports about itself, and the buffer
//! calls (allocate, copy in, copy out, free, synchronize).

use crate::buffer::PluginBuffer;
use crate::error::{cstr, take_error, Context};
use crate::ffi::{self, SizedStruct};
use crate::loader::Plugin;
use moemla_core::{alloc, DType, DeviceKind, Error, Op, OpSupport, Result};
use std::ptr::NonNull;
use std::sync::Arc;

/// An opened device. Closed by `device_close` when dropped, which happens after its last
/// buffer is freed (every buffer holds an `Arc<Device>`).
pub(crate) struct Device {
    /// The plugin (kept loaded while the device is open).
    pub plugin: Arc<Plugin>,
    /// The plugin's opaque handle.
    handle: NonNull<ffi::MoemlaDevice>,
}

// SAFETY: the handle is an opaque token passed back to the plugin, whose functions must
// accept calls from any thread, concurrently (include/moemla_plugin.h, "THREADS").
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

/// What `device_info` reported, copied.
pub(crate) struct Facts {
    /// The device's name.
    pub device_name: String,
    /// Its kind.
    pub device_kind: DeviceKind,
    /// Its memory in bytes, if known.
    pub memory_bytes: Option<u64>,
    /// The (op, run dtype) pairs it implements, each once.
    pub supported: Vec<OpSupport>,
    /// The plugin's notes, after moemla's own (device type, ABI).
    pub notes: Vec<String>,
}

impl Device {
    /// Opens a device of `plugin` (`Error::Unavailable` when it has none).
    pub fn open(plugin: Arc<Plugin>) -> Result<Arc<Device>> {
        let mut args = ffi::MoemlaDeviceOpenArgs::zeroed();
        // SAFETY: a zeroed ABI 1.0 args struct; the plugin writes `device`.
        let err = unsafe { (plugin.fns.device_open)(&mut args) };
        if !err.is_null() {
            // SAFETY: a non-null return is this plugin's live error, released here once.
            return Err(unsafe {
                take_error(&plugin, err, &Context::call(&plugin.name, "device_open"))
            });
        }
        let handle = NonNull::new(args.device).ok_or_else(|| Error::Device {
            backend: plugin.name.clone(),
            call: "device_open".into(),
            message: "succeeded but returned a NULL device".into(),
        })?;
        Ok(Arc::new(Device { plugin, handle }))
    }

    /// The backend name.
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    /// Calls one of the plugin's fallible functions and maps its error.
    ///
    /// # Safety
    /// `args` must be a zero-initialised args struct of `f` (struct_size set) whose
    /// handles are this device and live buffers of it, with the sizes the header requires.
    pub unsafe fn call<A>(&self, f: ffi::Call<A>, args: &mut A, ctx: &Context<'_>) -> Result<()> {
        // SAFETY: the caller's contract.
        let err = unsafe { f(args) };
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is this plugin's live error, released here once.
        Err(unsafe { take_error(&self.plugin, err, ctx) })
    }

    /// Calls `device_info` and copies what it reports.
    pub fn facts(&self) -> Result<Facts> {
        let mut args = ffi::MoemlaDeviceInfoArgs::zeroed();
        args.device = self.handle.as_ptr();
        // SAFETY: the args hold this device's live handle.
        unsafe {
            self.call(
                self.plugin.fns.device_info,
                &mut args,
                &Context::call(self.name(), "device_info"),
            )?
        };
        let bad = |what: &str| Error::Device {
            backend: self.name().to_string(),
            call: "device_info".into(),
            message: format!("{what} is NULL but its count is not 0"),
        };
        if (args.supported.is_null() && args.num_supported > 0)
            || (args.notes.is_null() && args.num_notes > 0)
        {
            return Err(bad(if args.supported.is_null() {
                "supported"
            } else {
                "notes"
            }));
        }
        let pairs: &[ffi::MoemlaOpSupport] = if args.num_supported == 0 {
            &[]
        } else {
            // SAFETY: non-null with `num_supported` entries, valid until device_close
            // (the header's rule); copied before this function returns.
            unsafe { std::slice::from_raw_parts(args.supported, args.num_supported) }
        };
        let raw_notes: &[*const std::ffi::c_char] = if args.num_notes == 0 {
            &[]
        } else {
            // SAFETY: as above, `num_notes` string pointers.
            unsafe { std::slice::from_raw_parts(args.notes, args.num_notes) }
        };
        let (device_kind, type_words) = device_type(args.device_type);
        let mut notes = vec![
            format!("device type: {type_words}"),
            format!(
                "plugin {} (ABI {}.{}; this moemla: {}.{})",
                self.plugin.path.display(),
                self.plugin.version.0,
                self.plugin.version.1,
                ffi::ABI_MAJOR,
                ffi::ABI_MINOR
            ),
        ];
        let mut supported = Vec::new();
        for pair in pairs {
            match (op(pair.op), dtype(pair.dtype)) {
                (Some(op), Some(dtype)) => {
                    let s = OpSupport::new(op, dtype);
                    if !supported.contains(&s) {
                        supported.push(s);
                    }
                }
                _ => notes.push(format!(
                    "device_info lists an (op, dtype) pair this moemla does not know: \
                     ({}, {}), ignored",
                    pair.op, pair.dtype
                )),
            }
        }
        // SAFETY: each is NULL or a NUL-terminated string valid until device_close.
        notes.extend(raw_notes.iter().filter_map(|&n| unsafe { cstr(n) }));
        // SAFETY: NULL or a NUL-terminated string valid until device_close.
        let device_name = unsafe { cstr(args.device_name) }.unwrap_or_default();
        Ok(Facts {
            device_name,
            device_kind,
            memory_bytes: (args.memory_bytes > 0).then_some(args.memory_bytes),
            supported,
            notes,
        })
    }

    /// A new buffer of `bytes` bytes for a `dtype` tensor, zero-filled if asked.
    pub fn alloc(self: &Arc<Self>, bytes: usize, dtype: DType, zero: bool) -> Result<PluginBuffer> {
        let mut args = ffi::MoemlaBufferAllocArgs::zeroed();
        args.device = self.handle.as_ptr();
        args.size_in_bytes = bytes;
        args.dtype = dtype_code(dtype);
        args.zero_fill = i32::from(zero);
        let ctx = Context::alloc(self.name(), "buffer_alloc", bytes);
        // SAFETY: the args hold this device's live handle; the plugin writes `buffer`.
        unsafe { self.call(self.plugin.fns.buffer_alloc, &mut args, &ctx)? };
        self.adopt(args.buffer, bytes, "buffer_alloc")
    }

    /// A new buffer holding a copy of `data` (a `dtype` tensor's bytes).
    pub fn from_host(self: &Arc<Self>, data: &[u8], dtype: DType) -> Result<PluginBuffer> {
        let mut args = ffi::MoemlaBufferFromHostArgs::zeroed();
        args.device = self.handle.as_ptr();
        args.host_data = if data.is_empty() {
            std::ptr::null()
        } else {
            data.as_ptr().cast()
        };
        args.size_in_bytes = data.len();
        args.dtype = dtype_code(dtype);
        let ctx = Context::alloc(self.name(), "buffer_from_host", data.len());
        // SAFETY: `host_data` points to `size_in_bytes` readable bytes for the whole call
        // (the plugin copies them before returning); the plugin writes `buffer`.
        unsafe { self.call(self.plugin.fns.buffer_from_host, &mut args, &ctx)? };
        self.adopt(args.buffer, data.len(), "buffer_from_host")
    }

    /// The whole content of `buffer` (one of this device's).
    pub fn to_host(&self, buffer: &PluginBuffer) -> Result<Vec<u8>> {
        let mut data: Vec<u8> =
            alloc::try_filled_vec(buffer.bytes, &format!("{} download", self.name()))?;
        let mut args = ffi::MoemlaBufferToHostArgs::zeroed();
        args.device = self.handle.as_ptr();
        args.buffer = buffer.input();
        args.host_data = if data.is_empty() {
            std::ptr::null_mut()
        } else {
            data.as_mut_ptr().cast()
        };
        args.size_in_bytes = data.len();
        let ctx = Context::call(self.name(), "buffer_to_host");
        // SAFETY: the buffer is this device's and live (borrowed); `host_data` has room
        // for exactly its size.
        unsafe { self.call(self.plugin.fns.buffer_to_host, &mut args, &ctx)? };
        Ok(data)
    }

    /// Waits for all submitted work.
    pub fn synchronize(&self) -> Result<()> {
        let mut args = ffi::MoemlaSynchronizeArgs::zeroed();
        args.device = self.handle.as_ptr();
        let ctx = Context::call(self.name(), "synchronize");
        // SAFETY: the args hold this device's live handle.
        unsafe { self.call(self.plugin.fns.synchronize, &mut args, &ctx) }
    }

    /// Releases a buffer (called by `PluginBuffer::drop`, once per buffer).
    pub fn free(&self, buffer: NonNull<ffi::MoemlaBuffer>) {
        let mut args = ffi::MoemlaBufferFreeArgs::zeroed();
        args.device = self.handle.as_ptr();
        args.buffer = buffer.as_ptr();
        // SAFETY: the buffer is this device's, and its owner is being dropped: it is
        // released exactly once and never used again.
        unsafe { (self.plugin.fns.buffer_free)(&mut args) };
    }

    /// Wraps a handle a successful call returned (NULL is the plugin's bug: an error).
    fn adopt(
        self: &Arc<Self>,
        handle: *mut ffi::MoemlaBuffer,
        bytes: usize,
        call: &str,
    ) -> Result<PluginBuffer> {
        let handle = NonNull::new(handle).ok_or_else(|| Error::Device {
            backend: self.name().to_string(),
            call: call.to_string(),
            message: format!("succeeded but returned a NULL buffer ({bytes} bytes asked)"),
        })?;
        Ok(PluginBuffer::new(self.clone(), handle, bytes))
    }

    /// The device handle, for op args.
    pub fn handle(&self) -> *mut ffi::MoemlaDevice {
        self.handle.as_ptr()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let mut args = ffi::MoemlaDeviceCloseArgs::zeroed();
        args.device = self.handle.as_ptr();
        // SAFETY: every buffer holds an Arc<Device>, so none is left; no call is in
        // flight (they all borrow the device). Closed exactly once.
        unsafe { (self.plugin.fns.device_close)(&mut args) };
    }
}

/// The header's code of a dtype.
pub(crate) fn dtype_code(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => ffi::DTYPE_F32,
        DType::F16 => ffi::DTYPE_F16,
        DType::BF16 => ffi::DTYPE_BF16,
        DType::I32 => ffi::DTYPE_I32,
        DType::F8E4M3 => ffi::DTYPE_F8E4M3,
        DType::U8 => ffi::DTYPE_U8,
    }
}

/// The float run dtype of a header code (what `device_info` may list).
fn dtype(code: i32) -> Option<DType> {
    match code {
        ffi::DTYPE_F32 => Some(DType::F32),
        ffi::DTYPE_F16 => Some(DType::F16),
        ffi::DTYPE_BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// The op of a header code.
fn op(code: i32) -> Option<Op> {
    match code {
        ffi::OP_MOE_ROUTE => Some(Op::MoeRoute),
        ffi::OP_MOE_EXPERTS => Some(Op::MoeExperts),
        ffi::OP_MLA_DECODE => Some(Op::MlaDecode),
        _ => None,
    }
}

/// The device kind and the words for a device type code (an unknown code is taken for
/// an accelerator, as `MOEMLA_DEVICE_TYPE_OTHER` is).
fn device_type(code: i32) -> (DeviceKind, String) {
    match code {
        ffi::DEVICE_TYPE_CPU => (DeviceKind::Cpu, "CPU".into()),
        ffi::DEVICE_TYPE_GPU => (DeviceKind::Accelerator, "GPU".into()),
        ffi::DEVICE_TYPE_NPU => (DeviceKind::Accelerator, "NPU / AI accelerator".into()),
        ffi::DEVICE_TYPE_EMULATOR => (DeviceKind::Emulator, "emulator".into()),
        ffi::DEVICE_TYPE_OTHER => (DeviceKind::Accelerator, "other accelerator".into()),
        other => (DeviceKind::Accelerator, format!("unknown ({other})")),
    }
}
