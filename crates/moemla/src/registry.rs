//! The backends of this build as a list of [`BackendFactory`]s, opened and selected at run
//! time.

use moemla_core::{Backend, BackendFactory, DeviceKind, Error, Result, Verification};
use std::sync::Arc;

/// The environment variable naming the backend [`select`]`(None)` opens.
pub const BACKEND_ENV: &str = "MOEMLA_BACKEND";

/// The backends compiled into this build, one per enabled cargo feature, in preference
/// order: `cuda`, `hip`, `ascend`, `cpu`, `opencl`. The order breaks ties between backends
/// on the same kind of device (see [`Registry::select`]): the native CPU backend comes
/// before OpenCL on a CPU.
pub fn compiled_in() -> Vec<BackendFactory> {
    let factories: &[fn() -> BackendFactory] = &[
        #[cfg(feature = "cuda")]
        moemla_cuda::factory,
        #[cfg(feature = "hip")]
        moemla_hip::factory,
        #[cfg(feature = "ascend")]
        moemla_ascend::factory,
        #[cfg(feature = "cpu")]
        moemla_cpu::factory,
        #[cfg(feature = "opencl")]
        moemla_opencl::factory,
    ];
    factories.iter().map(|factory| factory()).collect()
}

/// Every backend of this build: [`compiled_in`], then (with the `plugin` feature) the C
/// plugins listed in `MOEMLA_PLUGIN_PATH`.
pub fn factories() -> Vec<BackendFactory> {
    #[allow(unused_mut)] // Without the `plugin` feature nothing is appended.
    let mut all = compiled_in();
    #[cfg(feature = "plugin")]
    all.extend(moemla_plugin::factories_from_env());
    all
}

/// Opens every backend of this build ([`factories`]), in order. Never panics: a backend
/// whose SDK, driver or device is missing comes back as `Err(Error::Unavailable)`.
pub fn discover() -> Vec<BackendEntry> {
    Registry::new(factories()).discover()
}

/// [`Registry::select`] over this build's backends ([`factories`]).
pub fn select(name: Option<&str>) -> Result<Arc<dyn Backend>> {
    Registry::new(factories()).select(name)
}

/// Names of this build's backends ([`factories`]), in order.
pub fn names() -> Vec<String> {
    Registry::new(factories())
        .names()
        .into_iter()
        .map(String::from)
        .collect()
}

/// One device of a backend of the list and the result of opening it.
pub struct BackendEntry {
    /// The opened backend's name: the backend's (`cpu`, `opencl`, ...) for its device 0,
    /// `name:index` for another device (`opencl:1`).
    pub name: String,
    /// The device's index among the backend's devices here (0 for most).
    pub device: usize,
    /// The opened backend, or why it is unavailable.
    pub backend: Result<Arc<dyn Backend>>,
    /// How the backend's maker claims it has been verified in general; an opened backend's
    /// [`Backend::info`] says what holds for its device.
    pub verification: Verification,
}

impl BackendEntry {
    /// The device's identity, `backend:index` (`opencl:0`), as `devices` lists it and
    /// [`Registry::select`] accepts it.
    pub fn id(&self) -> String {
        match self.name.split_once(':') {
            Some(_) => self.name.clone(),
            None => format!("{}:{}", self.name, self.device),
        }
    }
}

/// Splits a device identity `name:index` into the name and the index (`opencl:1` ->
/// (`opencl`, 1)); `name` alone is device 0. `None` when the part after the last `:` is
/// not a device index.
pub fn parse_device(id: &str) -> Option<(&str, usize)> {
    let id = id.trim();
    match id.rsplit_once(':') {
        None => Some((id, 0)),
        Some((name, index)) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            Some((name, index.parse().ok()?))
        }
        Some(_) => None,
    }
}

/// A list of backend factories: this build's ([`factories`]) or any other, such as a
/// vendor's own binary with its backend first.
#[derive(Clone, Debug)]
pub struct Registry {
    factories: Vec<BackendFactory>,
}

impl Registry {
    /// The registry of `factories`, in preference order.
    pub fn new(factories: Vec<BackendFactory>) -> Self {
        Registry { factories }
    }

    /// The factories, in preference order.
    pub fn factories(&self) -> &[BackendFactory] {
        &self.factories
    }

    /// The backends' names, in preference order.
    pub fn names(&self) -> Vec<&str> {
        self.factories.iter().map(BackendFactory::name).collect()
    }

    /// Opens every device of every backend, in preference order (a backend's devices in
    /// index order). A backend whose name (compared ignoring ASCII case) an earlier one
    /// already has is not opened: it is one `Unavailable` entry, saying so.
    pub fn discover(&self) -> Vec<BackendEntry> {
        let mut entries = Vec::new();
        for (i, factory) in self.factories.iter().enumerate() {
            let entry = |device, backend| BackendEntry {
                name: moemla_core::device_backend_name(factory.name(), device),
                device,
                backend,
                verification: factory.claimed_verification().clone(),
            };
            match self.position(factory.name()) {
                Some(first) if first != i => entries.push(entry(
                    0,
                    Err(Error::Unavailable {
                        backend: factory.name().to_string(),
                        reason: format!(
                            "backend #{} of this list has the same name; names must be \
                             unique (ignoring case)",
                            first + 1
                        ),
                    }),
                )),
                _ => {
                    for device in 0..factory.device_count() {
                        entries.push(entry(device, open_checked(factory, device)));
                    }
                }
            }
        }
        entries
    }

    /// The backend name a device identity (`name` or `name:index`, names ignoring ASCII
    /// case) stands for in this list, as the opened backend is named: `opencl` for
    /// `OpenCL:0`, `opencl:1` for `opencl:1`. `None` for no backend of that name. Whether
    /// the device exists here is [`Registry::open`]'s to say.
    pub fn backend_name(&self, id: &str) -> Option<String> {
        let (name, device) = parse_device(id)?;
        let factory = &self.factories[self.position(name)?];
        Some(moemla_core::device_backend_name(factory.name(), device))
    }

    /// Opens the backend named `name`, or device `index` of it for `name:index` (names
    /// ignore ASCII case; `name` is device 0): `Err(Error::Unavailable)` with the reason if
    /// it cannot run here, no backend has that name, or it has no such device (saying how
    /// many it has).
    pub fn open(&self, name: &str) -> Result<Arc<dyn Backend>> {
        let found = parse_device(name).and_then(|(n, device)| Some((self.position(n)?, device)));
        match found {
            Some((i, device)) => open_checked(&self.factories[i], device),
            None => Err(Error::Unavailable {
                backend: name.to_string(),
                reason: format!(
                    "no backend of that name in this build (backends: {})",
                    match self.names() {
                        names if names.is_empty() => "none".to_string(),
                        names => names.join(", "),
                    }
                ),
            }),
        }
    }

    /// The backend an engine should run on:
    ///
    /// - `Some(name)`: that backend (names ignore ASCII case; `name:index` is device `index`
    ///   of it, `name` its device 0), or its `Unavailable` error.
    /// - `None`, with env `MOEMLA_BACKEND` set and not empty: that backend, or an
    ///   `Unavailable` error with the reason (never another backend in its place).
    /// - `None` otherwise: every backend is opened and the first available one by device
    ///   kind wins — real accelerators, then CPUs, then emulators — ties going to the
    ///   earlier in the list (so the native CPU backend comes before OpenCL on a CPU).
    pub fn select(&self, name: Option<&str>) -> Result<Arc<dyn Backend>> {
        let from_env = std::env::var(BACKEND_ENV).ok();
        self.select_with(name, from_env.as_deref())
    }

    /// [`Registry::select`] with the value of `MOEMLA_BACKEND` given.
    fn select_with(&self, name: Option<&str>, from_env: Option<&str>) -> Result<Arc<dyn Backend>> {
        fn named(n: Option<&str>) -> Option<&str> {
            n.map(str::trim).filter(|n| !n.is_empty())
        }
        if let Some(name) = named(name) {
            return self.open(name);
        }
        if let Some(name) = named(from_env) {
            return self.open(name).map_err(|err| match err {
                Error::Unavailable { backend, reason } => Error::Unavailable {
                    backend,
                    reason: format!(
                        "{reason} (named by {BACKEND_ENV}; unset it to select the best \
                         available backend)"
                    ),
                },
                other => other,
            });
        }
        self.best()
    }

    /// The first available backend by device kind, then list order.
    fn best(&self) -> Result<Arc<dyn Backend>> {
        let mut best: Option<(u8, Arc<dyn Backend>)> = None;
        let mut why_not = Vec::new();
        for entry in self.discover() {
            match entry.backend {
                Ok(backend) => {
                    let rank = preference(backend.info().device_kind);
                    if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                        best = Some((rank, backend));
                    }
                }
                Err(err) => why_not.push(err.to_string()),
            }
        }
        best.map(|(_, backend)| backend)
            .ok_or_else(|| Error::Unavailable {
                backend: "any".into(),
                reason: if why_not.is_empty() {
                    "this build has no backend".to_string()
                } else {
                    format!("no backend is available: {}", why_not.join("; "))
                },
            })
    }

    /// The index of the first backend named `name`, ignoring ASCII case.
    fn position(&self, name: &str) -> Option<usize> {
        (self.factories.iter()).position(|f| f.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Selection order of device kinds: lower is preferred.
fn preference(kind: DeviceKind) -> u8 {
    match kind {
        DeviceKind::Accelerator => 0,
        DeviceKind::Cpu => 1,
        DeviceKind::Emulator => 2,
    }
}

/// Opens device `device` of `factory`'s backend, which must carry the factory's name for
/// device 0 and `name:device` for the others (its tensors do).
fn open_checked(factory: &BackendFactory, device: usize) -> Result<Arc<dyn Backend>> {
    let backend = factory.open_device(device)?;
    let name = moemla_core::device_backend_name(factory.name(), device);
    if backend.name() != name {
        return Err(Error::Unavailable {
            backend: name,
            reason: format!(
                "its factory opened a backend named `{}` instead",
                backend.name()
            ),
        });
    }
    Ok(backend)
}

#[cfg(test)]
mod tests;
