//! # moemla-plugin
//!
//! Backends built as C plugins: shared libraries implementing the versioned C ABI of
//! `include/moemla_plugin.h` (one entry point, `moemla_plugin_get_api`, returning a table
//! of functions). This crate loads them at run time with `libloading`, checks the ABI
//! version, and wraps each as a [`moemla_core::Backend`], so a plugin appears in `moemla
//! devices`, `conformance` and `bench` like any built-in backend.
//!
//! - [`factory_for`]: one plugin file as a [`BackendFactory`].
//! - [`factories_from_env`]: every file named by `MOEMLA_PLUGIN_PATH` (`:`-separated).
//!
//! A plugin that cannot be used (not a library, no entry point, NULL table, another ABI
//! major version, a table lacking a function) never crashes moemla: its factory opens to
//! `Error::Unavailable` with the reason. A plugin's claimed verification is shown as its
//! own claim: kind `plugin`, detail "claimed by plugin libx.so, not checked by moemla:
//! silicon; <the plugin's text>". Loading a library runs
//! its code: load only plugins you trust. `examples/plugin-c/` is the plugin to copy;
//! `docs/adding-a-backend.md` has the steps.

mod buffer;
mod device;
mod error;
pub mod ffi;
mod loader;
mod ops;

use buffer::PluginBuffer;
use device::{Device, Facts};
use loader::{name_from_file, unavailable, Plugin};
use moemla_core::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    Backend, BackendFactory, BackendInfo, DType, DeviceTensor, Error, HostTensor, MlaDecodeOutput,
    MoeRouteOutput, Op, Result, Shape, Verification, VerificationKind,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

/// The environment variable listing plugin files (`:`-separated on Unix, `;` on Windows).
pub const PLUGIN_PATH_ENV: &str = "MOEMLA_PLUGIN_PATH";

/// The plugin at `path` as a backend factory.
///
/// The library is loaded now (to learn the plugin's name and claimed verification); each
/// [`BackendFactory::open`] opens a new device of it. If it cannot be loaded, the factory
/// is named after the file (`libacme.so` -> `acme`), claims nothing, and `open()` returns
/// `Error::Unavailable` with the reason (the `dlerror` text, the missing entry point, the
/// incompatible ABI version, ...).
pub fn factory_for(path: &Path) -> BackendFactory {
    match Plugin::load(path) {
        Ok(plugin) => {
            let plugin = Arc::new(plugin);
            BackendFactory::new(plugin.name.clone(), plugin.claimed.clone(), move || {
                Ok(Arc::new(PluginBackend::open(plugin.clone())?) as Arc<dyn Backend>)
            })
        }
        Err(reason) => {
            let name = name_from_file(path);
            let claimed = Verification {
                kind: VerificationKind::Unverified,
                detail: format!("plugin {} could not be loaded", path.display()),
            };
            BackendFactory::new(name.clone(), claimed, move || {
                Err(unavailable(&name, reason.clone()))
            })
        }
    }
}

/// One factory per file in `list` (a `MOEMLA_PLUGIN_PATH`-style list; empty entries are
/// skipped), in order.
pub fn factories_from_path_list(list: &OsStr) -> Vec<BackendFactory> {
    std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| factory_for(&p))
        .collect()
}

/// One factory per file listed in env `MOEMLA_PLUGIN_PATH` (none when it is unset).
pub fn factories_from_env() -> Vec<BackendFactory> {
    std::env::var_os(PLUGIN_PATH_ENV)
        .map(|list| factories_from_path_list(&list))
        .unwrap_or_default()
}

/// A plugin device as a moemla backend. Tensors hold the plugin's buffers (freed with
/// `buffer_free` when dropped); the device closes after the backend and its last tensor.
pub(crate) struct PluginBackend {
    /// The plugin's backend name, stamped on its tensors.
    name: Arc<str>,
    /// The opened device.
    device: Arc<Device>,
    /// What `info()` returns (read once at open).
    info: BackendInfo,
}

impl PluginBackend {
    /// Opens a device of a loaded plugin and reads its facts.
    fn open(plugin: Arc<Plugin>) -> Result<PluginBackend> {
        let device = Device::open(plugin)?;
        let Facts {
            device_name,
            device_kind,
            memory_bytes,
            supported,
            notes,
        } = device.facts()?;
        let plugin = &device.plugin;
        let info = BackendInfo {
            name: plugin.name.clone(),
            vendor: plugin.vendor.clone(),
            device: device_name,
            device_kind,
            memory_bytes,
            supported,
            verification: plugin.claimed.clone(),
            notes,
        };
        Ok(PluginBackend {
            name: plugin.name.as_str().into(),
            device,
            info,
        })
    }

    /// `Error::Unsupported` unless the device listed (op, run dtype).
    fn require(&self, op: Op, dtype: DType) -> Result<()> {
        if self.info.supports(op, dtype) {
            return Ok(());
        }
        Err(Error::Unsupported {
            backend: self.name.to_string(),
            op,
            what: dtype.to_string(),
            reason: "the plugin's device_info does not list it".to_string(),
        })
    }

    /// The buffer of input `t`, checked to belong to this very device and to hold exactly
    /// the tensor's bytes (what the header promises the plugin).
    fn input<'t>(
        &self,
        t: &'t DeviceTensor,
        call: &'static str,
        arg: &'static str,
    ) -> Result<&'t PluginBuffer> {
        let buffer = t.buffer::<PluginBuffer>(&self.name, call, arg)?;
        if !Arc::ptr_eq(&buffer.device, &self.device) {
            return Err(Error::WrongBackend {
                op: call,
                arg,
                expected: format!("{} (this device)", self.name),
                got: format!("{} (another device of the same plugin)", t.backend()),
            });
        }
        let want = t.shape().byte_len(t.dtype())?;
        if buffer.bytes != want {
            return Err(Error::Device {
                backend: self.name.to_string(),
                call: format!("{call}: `{arg}`"),
                message: format!("buffer holds {} bytes, {t:?} needs {want}", buffer.bytes),
            });
        }
        Ok(buffer)
    }

    /// A new output tensor (contents unspecified) and its handle for the op's args.
    fn output(
        &self,
        dims: &[usize],
        dtype: DType,
    ) -> Result<(DeviceTensor, *mut ffi::MoemlaBuffer)> {
        let shape = Shape::from(dims);
        let bytes = shape.byte_len(dtype)?;
        let buffer = self.device.alloc(bytes, dtype, false)?;
        let handle = buffer.output();
        Ok((self.tensor(buffer, shape, dtype), handle))
    }

    /// Wraps a buffer as a tensor of this backend.
    fn tensor(&self, buffer: PluginBuffer, shape: Shape, dtype: DType) -> DeviceTensor {
        DeviceTensor::new(Arc::new(buffer), self.name.clone(), shape, dtype)
    }
}

impl Backend for PluginBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        let bytes = shape.byte_len(dtype)?;
        let buffer = self.device.alloc(bytes, dtype, true)?;
        Ok(self.tensor(buffer, shape.clone(), dtype))
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let buffer = self.device.from_host(host.as_bytes(), host.dtype())?;
        Ok(self.tensor(buffer, host.shape().clone(), host.dtype()))
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        let buffer = self.input(tensor, "download", "tensor")?;
        let bytes = self.device.to_host(buffer)?;
        HostTensor::from_bytes(tensor.shape().clone(), tensor.dtype(), bytes)
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        ops::moe_route(self, call)
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        ops::moe_experts(self, call)
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        ops::mla_decode(self, call)
    }
}
