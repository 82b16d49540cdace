//! How a backend crate (or a loaded plugin) announces itself to moemla's registry.

use crate::{Backend, Error, Result, Verification};
use std::fmt;
use std::sync::Arc;

/// The function that opens a backend: `Err(Error::Unavailable)` says why it cannot run here.
pub type OpenFn = dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync;

/// The function that opens device `index` of a backend with several devices.
pub type OpenDeviceFn = dyn Fn(usize) -> Result<Arc<dyn Backend>> + Send + Sync;

/// The function that counts a backend's devices here (see [`BackendFactory::device_count`]).
pub type DeviceCountFn = dyn Fn() -> usize + Send + Sync;

/// One backend as the registry sees it: its name, how to open it, and how its maker claims
/// it has been verified (known even where it cannot run here).
///
/// Every backend crate exports one (`moemla_cpu::factory()`, ...); a vendor's own crate does
/// the same, and the `moemla` command line takes a list of them, so a new backend never
/// needs an edit to moemla's crates.
///
/// A backend may drive several devices ([`BackendFactory::with_devices`]): device `i` is
/// identified as `name:i` (`opencl:0`, `cuda:1`), `name` alone meaning device 0. The backend
/// opened for device 0 is named `name`, the one for device `i > 0` `name:i`
/// ([`device_backend_name`]), so a tensor of one device is a `WrongBackend` error on
/// another.
#[derive(Clone)]
pub struct BackendFactory {
    name: String,
    claimed: Verification,
    open: Arc<OpenDeviceFn>,
    count: Option<Arc<DeviceCountFn>>,
}

/// The name the backend opened for device `index` of the backend `name` carries (and
/// stamps on its tensors): `name` for device 0, `name:index` for the others.
pub fn device_backend_name(name: &str, index: usize) -> String {
    if index == 0 {
        name.to_string()
    } else {
        format!("{name}:{index}")
    }
}

impl BackendFactory {
    /// A factory of a one-device backend named `name` (the backend's [`Backend::name`]),
    /// with its claimed verification and the function that opens it.
    pub fn new(
        name: impl Into<String>,
        claimed: Verification,
        open: impl Fn() -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory {
            name: name.into(),
            claimed,
            open: Arc::new(move |_| open()),
            count: None,
        }
    }

    /// A factory of a backend with `count()` devices here, `open_device(i)` opening device
    /// `i` (only called with `i < count()`; the backend it returns must be named
    /// [`device_backend_name`]`(name, i)`).
    pub fn with_devices(
        name: impl Into<String>,
        claimed: Verification,
        count: impl Fn() -> usize + Send + Sync + 'static,
        open_device: impl Fn(usize) -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory {
            name: name.into(),
            claimed,
            open: Arc::new(open_device),
            count: Some(Arc::new(count)),
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the backend's maker says it has been verified: a claim, not a measurement.
    pub fn claimed_verification(&self) -> &Verification {
        &self.claimed
    }

    /// How many devices the backend has here; at least 1, so that where none can be found
    /// device 0 is still listed, opening it saying why. One for a [`BackendFactory::new`]
    /// factory.
    pub fn device_count(&self) -> usize {
        self.count.as_ref().map_or(1, |count| count().max(1))
    }

    /// Opens the backend on device 0 (probing its SDK, driver and device). Never panics.
    pub fn open(&self) -> Result<Arc<dyn Backend>> {
        self.open_device(0)
    }

    /// Opens the backend on device `index`: `Err(Error::Unavailable)` naming how many
    /// devices there are when `index` is not one of them. Never panics.
    pub fn open_device(&self, index: usize) -> Result<Arc<dyn Backend>> {
        let count = self.device_count();
        if index >= count {
            let name = &self.name;
            return Err(Error::Unavailable {
                backend: format!("{name}:{index}"),
                reason: format!(
                    "`{name}` has {count} device{} here ({})",
                    if count == 1 { "" } else { "s" },
                    match count {
                        1 => format!("{name}:0"),
                        _ => format!("{name}:0 to {name}:{}", count - 1),
                    }
                ),
            });
        }
        (self.open)(index)
    }
}

impl fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendFactory")
            .field("name", &self.name)
            .field("claimed", &self.claimed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VerificationKind;

    fn claim() -> Verification {
        Verification {
            kind: VerificationKind::Unverified,
            detail: String::new(),
        }
    }

    #[test]
    fn one_device_factory_refuses_index_one_naming_the_count() {
        let f = BackendFactory::new("acme", claim(), || {
            Err(Error::Unavailable {
                backend: "acme".into(),
                reason: "no device".into(),
            })
        });
        assert_eq!(f.device_count(), 1);
        let err = f.open_device(1).err().expect("no device 1").to_string();
        assert!(err.contains("`acme` has 1 device here (acme:0)"), "{err}");
        // Device 0 is the factory's own open: its error, not the count's.
        let err = f.open_device(0).err().expect("unavailable").to_string();
        assert!(err.contains("no device"), "{err}");
    }

    #[test]
    fn several_devices_are_counted_at_least_one_and_bounded() {
        let none = BackendFactory::with_devices("acme", claim(), || 0, |_| unreachable!());
        assert_eq!(
            none.device_count(),
            1,
            "device 0 is listed even when none is found"
        );
        let two = BackendFactory::with_devices(
            "acme",
            claim(),
            || 2,
            |_| {
                Err(Error::Unavailable {
                    backend: "acme".into(),
                    reason: "opened".into(),
                })
            },
        );
        assert_eq!(two.device_count(), 2);
        assert!(two
            .open_device(1)
            .err()
            .unwrap()
            .to_string()
            .contains("opened"));
        let err = two.open_device(2).err().unwrap().to_string();
        assert!(
            err.contains("`acme` has 2 devices here (acme:0 to acme:1)"),
            "{err}"
        );
        assert_eq!(device_backend_name("acme", 0), "acme");
        assert_eq!(device_backend_name("acme", 2), "acme:2");
    }

    #[test]
    fn delegate_and_plugin_kinds_display_as_named() {
        let v = Verification::delegated("cpu", "acme NPU firmware 1.2");
        assert_eq!(v.kind, VerificationKind::Delegated);
        assert_eq!(v.to_string(), "delegated: to cpu: acme NPU firmware 1.2");
        assert_eq!(
            Verification::delegated("cpu", "").to_string(),
            "delegated: to cpu"
        );
        let plugin = Verification {
            kind: VerificationKind::Plugin,
            detail: "claimed by plugin libacme.so".into(),
        };
        assert_eq!(
            plugin.to_string(),
            "plugin's claim: claimed by plugin libacme.so"
        );
    }
}
