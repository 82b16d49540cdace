//! Registry behaviour on fake backends whose names, device kinds and availability the
//! tests choose, and on this build's real backends.

use super::*;
use moemla_core::vendor::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    BackendInfo, DType, DeviceTensor, HostTensor, MlaDecodeOutput, MoeRouteOutput, Shape,
    VerificationKind,
};

/// A backend that only has a name and a device kind: every data call fails.
struct Fake {
    name: String,
    kind: DeviceKind,
}

impl Fake {
    fn nothing(&self, what: &'static str) -> Error {
        Error::NotProvided {
            backend: self.name.clone(),
            what,
        }
    }
}

impl Backend for Fake {
    fn name(&self) -> &str {
        &self.name
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.name.clone(),
            vendor: "test".into(),
            device: "fake".into(),
            device_kind: self.kind,
            memory_bytes: None,
            supported: Vec::new(),
            verification: unverified(),
            notes: Vec::new(),
        }
    }
    fn alloc_zeroed(&self, _: &Shape, _: DType) -> Result<DeviceTensor> {
        Err(self.nothing("alloc_zeroed"))
    }
    fn upload(&self, _: &HostTensor) -> Result<DeviceTensor> {
        Err(self.nothing("upload"))
    }
    fn download(&self, _: &DeviceTensor) -> Result<HostTensor> {
        Err(self.nothing("download"))
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn moe_route(&self, _: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        Err(self.nothing("moe_route"))
    }
    fn moe_experts(&self, _: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        Err(self.nothing("moe_experts"))
    }
    fn mla_decode(&self, _: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        Err(self.nothing("mla_decode"))
    }
}

fn unverified() -> Verification {
    Verification {
        kind: VerificationKind::Unverified,
        detail: "registry test".into(),
    }
}

/// A factory whose backend opens on a device of `kind`.
fn fake(name: &str, kind: DeviceKind) -> BackendFactory {
    let name = name.to_string();
    BackendFactory::new(name.clone(), unverified(), move || {
        Ok(Arc::new(Fake {
            name: name.clone(),
            kind,
        }) as Arc<dyn Backend>)
    })
}

/// A factory whose backend cannot open here, for `reason`.
fn missing(name: &str, reason: &str) -> BackendFactory {
    let (name, reason) = (name.to_string(), reason.to_string());
    BackendFactory::new(name.clone(), unverified(), move || {
        Err(Error::Unavailable {
            backend: name.clone(),
            reason: reason.clone(),
        })
    })
}

fn selected(registry: &Registry, name: Option<&str>, env: Option<&str>) -> String {
    match registry.select_with(name, env) {
        Ok(backend) => backend.name().to_string(),
        Err(err) => panic!("select({name:?}) with {BACKEND_ENV}={env:?}: {err}"),
    }
}

fn unavailable(result: Result<Arc<dyn Backend>>) -> (String, String) {
    match result {
        Err(Error::Unavailable { backend, reason }) => (backend, reason),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(b) => panic!("expected Unavailable, got backend {}", b.name()),
    }
}

#[test]
fn best_is_an_accelerator_then_a_cpu_then_an_emulator_whatever_the_list_order() {
    use DeviceKind::{Accelerator, Cpu, Emulator};
    let all = Registry::new(vec![
        fake("emu", Emulator),
        missing("gone", "no driver"),
        fake("native", Cpu),
        fake("gpu", Accelerator),
    ]);
    assert_eq!(selected(&all, None, None), "gpu");
    let no_accelerator = Registry::new(vec![fake("emu", Emulator), fake("native", Cpu)]);
    assert_eq!(selected(&no_accelerator, None, None), "native");
    let emulator_only = Registry::new(vec![missing("gone", "no driver"), fake("emu", Emulator)]);
    assert_eq!(selected(&emulator_only, None, None), "emu");
}

#[test]
fn best_breaks_a_device_kind_tie_by_list_order() {
    let cpus = Registry::new(vec![
        fake("first", DeviceKind::Cpu),
        fake("second", DeviceKind::Cpu),
    ]);
    assert_eq!(selected(&cpus, None, None), "first");
}

#[test]
fn names_ignore_ascii_case_and_surrounding_blanks() {
    let registry = Registry::new(vec![fake("acme", DeviceKind::Accelerator)]);
    assert_eq!(selected(&registry, Some("ACME"), None), "acme");
    assert_eq!(selected(&registry, None, Some(" Acme ")), "acme");
}

#[test]
fn an_explicit_name_overrides_the_environment() {
    let registry = Registry::new(vec![
        fake("a", DeviceKind::Accelerator),
        fake("c", DeviceKind::Cpu),
    ]);
    assert_eq!(selected(&registry, Some("c"), Some("a")), "c");
    assert_eq!(selected(&registry, None, Some("c")), "c");
    // An empty variable means "not set".
    assert_eq!(selected(&registry, None, Some("")), "a");
}

#[test]
fn env_naming_an_unavailable_backend_is_that_error_not_a_fallback() {
    let registry = Registry::new(vec![
        missing("acme", "libacme.so: not found"),
        fake("cpu", DeviceKind::Cpu),
    ]);
    let (backend, reason) = unavailable(registry.select_with(None, Some("acme")));
    assert_eq!(backend, "acme");
    assert!(reason.starts_with("libacme.so: not found (named by MOEMLA_BACKEND"));

    let (backend, reason) = unavailable(registry.select_with(None, Some("tpu")));
    assert_eq!(backend, "tpu");
    assert!(reason.contains("backends: acme, cpu"), "{reason}");
    assert!(reason.contains("MOEMLA_BACKEND"), "{reason}");
}

#[test]
fn a_later_backend_with_a_taken_name_is_unavailable_and_never_opened() {
    let registry = Registry::new(vec![
        fake("cpu", DeviceKind::Cpu),
        BackendFactory::new("CPU", unverified(), || {
            panic!("a duplicate must not be opened")
        }),
    ]);
    let entries = registry.discover();
    assert_eq!(entries[0].backend.as_ref().unwrap().name(), "cpu");
    let (backend, reason) = unavailable(entries[1].backend.clone());
    assert_eq!(backend, "CPU");
    assert!(reason.contains("backend #1"), "{reason}");
    assert_eq!(selected(&registry, Some("CPU"), None), "cpu");
}

#[test]
fn a_factory_that_opens_a_backend_of_another_name_is_unavailable() {
    let liar = BackendFactory::new("acme", unverified(), || {
        Ok(Arc::new(Fake {
            name: "cpu".into(),
            kind: DeviceKind::Cpu,
        }) as Arc<dyn Backend>)
    });
    let (backend, reason) = unavailable(Registry::new(vec![liar]).select_with(Some("acme"), None));
    assert_eq!(backend, "acme");
    assert!(reason.contains("named `cpu`"), "{reason}");
}

#[test]
fn nothing_available_says_why_for_each_backend() {
    let (_, reason) = unavailable(Registry::new(Vec::new()).select_with(None, None));
    assert_eq!(reason, "this build has no backend");
    let registry = Registry::new(vec![missing("a", "no driver"), missing("b", "no card")]);
    let (backend, reason) = unavailable(registry.select_with(None, None));
    assert_eq!(backend, "any");
    assert!(
        reason.contains("no driver") && reason.contains("no card"),
        "{reason}"
    );
}

#[cfg(feature = "cpu")]
#[test]
fn this_builds_cpu_is_always_available() {
    let entries = Registry::new(compiled_in()).discover();
    let cpu = entries.iter().find(|e| e.name == "cpu").unwrap();
    assert_eq!(cpu.backend.as_ref().unwrap().name(), "cpu");
    assert_eq!(
        cpu.backend.as_ref().unwrap().info().device_kind,
        DeviceKind::Cpu
    );
}

#[cfg(all(feature = "cpu", feature = "opencl"))]
#[test]
fn without_an_accelerator_this_build_selects_the_native_cpu_not_opencl_on_a_cpu() {
    let registry = Registry::new(compiled_in());
    let names = registry.names();
    let position = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert!(position("cpu") < position("opencl"), "{names:?}");
    let accelerator_here = registry.discover().iter().any(|e| {
        e.backend
            .as_ref()
            .is_ok_and(|b| b.info().device_kind == DeviceKind::Accelerator)
    });
    if !accelerator_here {
        assert_eq!(selected(&registry, None, None), "cpu");
    }
}
