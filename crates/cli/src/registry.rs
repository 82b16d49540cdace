//! The table of every backend compiled in, probed at run time.

use moemla_core::{Backend, Error, Result, Verification};
use std::sync::Arc;

/// One compiled-in backend: its name, how to open it (`Err(Error::Unavailable)` says why
/// it cannot run here) and how it has been verified (known even where it cannot run).
struct Registered {
    name: &'static str,
    open: fn() -> Result<Arc<dyn Backend>>,
    verification: fn() -> Verification,
}

/// Every backend compiled into this build, in preference order (most capable first; the
/// CPU reference last, as the fallback). One entry per backend.
const BACKENDS: &[Registered] = &[
    Registered {
        name: moemla_cuda::NAME,
        open: || Ok(Arc::new(moemla_cuda::CudaBackend::new()?)),
        verification: moemla_cuda::claimed_verification,
    },
    Registered {
        name: moemla_hip::NAME,
        open: || Ok(Arc::new(moemla_hip::HipBackend::new()?)),
        verification: moemla_hip::claimed_verification,
    },
    Registered {
        name: moemla_ascend::NAME,
        open: || Ok(Arc::new(moemla_ascend::AscendBackend::new()?)),
        verification: moemla_ascend::claimed_verification,
    },
    Registered {
        name: moemla_opencl::NAME,
        open: || Ok(moemla_opencl::shared()? as Arc<dyn Backend>),
        verification: moemla_opencl::claimed_verification,
    },
    Registered {
        name: moemla_cpu::NAME,
        open: || Ok(Arc::new(moemla_cpu::CpuBackend::new())),
        verification: moemla_cpu::claimed_verification,
    },
];

/// A compiled-in backend and the result of opening it.
pub struct BackendEntry {
    /// Backend name (`cpu`, `opencl`, ...).
    pub name: &'static str,
    /// The opened backend, or why it is unavailable.
    pub backend: Result<Arc<dyn Backend>>,
    /// How the backend has been verified in general; an opened backend's
    /// [`Backend::info`] says what holds for its device.
    pub verification: Verification,
}

/// Opens every compiled-in backend, in preference order. Never panics: a backend whose
/// SDK, driver or device is missing comes back as `Err(Error::Unavailable)`.
pub fn discover() -> Vec<BackendEntry> {
    BACKENDS
        .iter()
        .map(|r| BackendEntry {
            name: r.name,
            backend: (r.open)(),
            verification: (r.verification)(),
        })
        .collect()
}

/// Opens the backend named `name`, or, with `None`, the one named by env `MOEMLA_BACKEND`,
/// or else the first available in preference order ([`names`]; the CPU backend always is).
pub fn select(name: Option<&str>) -> Result<Arc<dyn Backend>> {
    let from_env = std::env::var("MOEMLA_BACKEND").ok();
    match name.or(from_env.as_deref()).filter(|n| !n.is_empty()) {
        Some(wanted) => open(wanted),
        None => discover()
            .into_iter()
            .find_map(|e| e.backend.ok())
            .ok_or_else(|| Error::Unavailable {
                backend: "any".into(),
                reason: "no backend is available".into(),
            }),
    }
}

/// Opens one backend by name.
fn open(name: &str) -> Result<Arc<dyn Backend>> {
    match BACKENDS.iter().find(|r| r.name == name) {
        Some(r) => (r.open)(),
        None => Err(Error::Unavailable {
            backend: name.to_string(),
            reason: format!(
                "not compiled into this build (compiled in: {})",
                names().join(", ")
            ),
        }),
    }
}

/// Names of the compiled-in backends, in preference order.
pub fn names() -> Vec<&'static str> {
    BACKENDS.iter().map(|r| r.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        let entries = discover();
        let cpu = entries.iter().find(|e| e.name == "cpu").unwrap();
        assert_eq!(cpu.backend.as_ref().unwrap().name(), "cpu");
    }

    #[test]
    fn unknown_backend_is_unavailable_with_the_compiled_in_list() {
        match select(Some("tpu")) {
            Err(Error::Unavailable { backend, reason }) => {
                assert_eq!(backend, "tpu");
                assert!(reason.contains("cpu"), "{reason}");
            }
            other => panic!(
                "expected Unavailable, got {:?}",
                other.map(|b| b.name().to_string())
            ),
        }
    }

    #[test]
    fn preference_order_ends_with_the_cpu_fallback() {
        assert_eq!(names().last(), Some(&"cpu"));
        let discovered: Vec<&str> = discover().iter().map(|e| e.name).collect();
        assert_eq!(discovered, names());
    }
}
