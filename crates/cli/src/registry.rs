//! The table of every backend compiled in, probed at run time.

use moemla_core::{Backend, Error, Result};
use std::sync::Arc;

/// Opens one backend; `Err(Error::Unavailable)` says why it cannot run here.
type Opener = fn() -> Result<Arc<dyn Backend>>;

/// Every backend compiled into this build, in preference order (most capable first; the
/// CPU reference last, as the fallback). One line per backend.
const BACKENDS: &[(&str, Opener)] = &[
    (moemla_cuda::NAME, || {
        Ok(Arc::new(moemla_cuda::CudaBackend::new()?))
    }),
    (moemla_hip::NAME, || {
        Ok(Arc::new(moemla_hip::HipBackend::new()?))
    }),
    (moemla_ascend::NAME, || {
        Ok(Arc::new(moemla_ascend::AscendBackend::new()?))
    }),
    (moemla_opencl::NAME, || {
        Ok(moemla_opencl::shared()? as Arc<dyn Backend>)
    }),
    (moemla_cpu::NAME, || {
        Ok(Arc::new(moemla_cpu::CpuBackend::new()))
    }),
];

/// A compiled-in backend and the result of opening it.
pub struct BackendEntry {
    /// Backend name (`cpu`, `opencl`, ...).
    pub name: &'static str,
    /// The opened backend, or why it is unavailable.
    pub backend: Result<Arc<dyn Backend>>,
}

/// Opens every compiled-in backend, in preference order. Never panics: a backend whose
/// SDK, driver or device is missing comes back as `Err(Error::Unavailable)`.
pub fn discover() -> Vec<BackendEntry> {
    BACKENDS
        .iter()
        .map(|&(name, open)| BackendEntry {
            name,
            backend: open(),
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
    match BACKENDS.iter().find(|(n, _)| *n == name) {
        Some((_, open)) => open(),
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
    BACKENDS.iter().map(|(n, _)| *n).collect()
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
