//! Several devices per backend: a test backend `twin` with two devices, each device's
//! identity `twin:i` listed by [`Registry::discover`], selectable by [`Registry::select`]
//! and `MOEMLA_BACKEND`, its tensors refused by the other device.

use moemla::core::vendor::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla::core::vendor::{Backend, BackendFactory, DeviceBuffer};
use moemla::core::{
    device_backend_name, BackendInfo, DType, DeviceKind, DeviceTensor, Error, HostTensor,
    MlaDecodeOutput, MoeRouteOutput, Result, Shape, Verification, VerificationKind,
};
use moemla::{parse_device, Registry, BACKEND_ENV};
use std::any::Any;
use std::sync::Arc;

/// Host memory standing in for one device's memory.
#[derive(Debug)]
struct TwinBuffer(Vec<u8>);

impl DeviceBuffer for TwinBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Device `index` of the `twin` backend: uploads and downloads only.
struct Twin {
    name: Arc<str>,
    index: usize,
}

impl Twin {
    fn nothing(&self, what: &'static str) -> Error {
        Error::NotProvided {
            backend: self.name.to_string(),
            what,
        }
    }
}

impl Backend for Twin {
    fn name(&self) -> &str {
        &self.name
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.name.to_string(),
            vendor: "test".into(),
            device: format!("twin device {}", self.index),
            device_kind: DeviceKind::Emulator,
            memory_bytes: None,
            supported: Vec::new(),
            verification: claim(),
            notes: Vec::new(),
        }
    }
    fn alloc_zeroed(&self, _: &Shape, _: DType) -> Result<DeviceTensor> {
        Err(self.nothing("alloc_zeroed"))
    }
    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        let buffer = Arc::new(TwinBuffer(host.as_bytes().to_vec()));
        Ok(DeviceTensor::new(
            buffer,
            self.name.clone(),
            host.shape().clone(),
            host.dtype(),
        ))
    }
    fn download(&self, t: &DeviceTensor) -> Result<HostTensor> {
        let buffer = t.buffer::<TwinBuffer>(&self.name, "download", "tensor")?;
        HostTensor::from_bytes(t.shape().clone(), t.dtype(), buffer.0.clone())
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

fn claim() -> Verification {
    Verification::delegated("host memory", "devices test")
}

/// The `twin` backend: two devices.
fn twin() -> BackendFactory {
    BackendFactory::with_devices(
        "twin",
        claim(),
        || 2,
        |index| {
            Ok(Arc::new(Twin {
                name: device_backend_name("twin", index).into(),
                index,
            }) as Arc<dyn Backend>)
        },
    )
}

fn unavailable(result: Result<Arc<dyn Backend>>) -> (String, String) {
    match result {
        Err(Error::Unavailable { backend, reason }) => (backend, reason),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(b) => panic!("expected Unavailable, got backend {}", b.name()),
    }
}

#[test]
fn both_devices_are_listed_selectable_and_keep_their_tensors_apart() {
    let registry = Registry::new(vec![twin()]);
    let listed: Vec<(String, String, usize, String)> = (registry.discover().iter())
        .map(|e| {
            let device = e.backend.as_ref().expect("opens").info().device;
            (e.id(), e.name.clone(), e.device, device)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("twin:0".into(), "twin".into(), 0, "twin device 0".into()),
            ("twin:1".into(), "twin:1".into(), 1, "twin device 1".into()),
        ]
    );
    for (id, name, device) in [
        ("twin", "twin", 0),
        ("twin:0", "twin", 0),
        ("TWIN:1", "twin:1", 1),
        (" twin:1 ", "twin:1", 1),
    ] {
        let backend = registry.select(Some(id)).unwrap();
        assert_eq!(backend.name(), name, "{id}");
        assert_eq!(
            backend.info().device,
            format!("twin device {device}"),
            "{id}"
        );
        assert_eq!(registry.backend_name(id).as_deref(), Some(name), "{id}");
    }
    let (backend, reason) = unavailable(registry.select(Some("twin:2")));
    assert_eq!(backend, "twin:2");
    assert_eq!(reason, "`twin` has 2 devices here (twin:0 to twin:1)");
    let (backend, _) = unavailable(registry.select(Some("twin:x")));
    assert_eq!(backend, "twin:x");

    // A tensor of device 0 is refused by device 1, and the other way round.
    let (zero, one) = (
        registry.open("twin:0").unwrap(),
        registry.open("twin:1").unwrap(),
    );
    let host = HostTensor::from_slice([3], &[1.0f32, 2.0, 3.0]).unwrap();
    let on_zero = zero.upload(&host).unwrap();
    assert_eq!(
        zero.download(&on_zero).unwrap().to_f32_vec().unwrap(),
        [1.0, 2.0, 3.0]
    );
    match one.download(&on_zero) {
        Err(Error::WrongBackend { expected, got, .. }) => {
            assert_eq!((expected.as_str(), got.as_str()), ("twin:1", "twin"));
        }
        other => panic!("expected WrongBackend, got {other:?}"),
    }
    let on_one = one.upload(&host).unwrap();
    assert!(matches!(
        zero.download(&on_one),
        Err(Error::WrongBackend { .. })
    ));
}

#[test]
fn moemla_backend_names_a_device_and_a_missing_one_is_an_error() {
    let registry = Registry::new(vec![twin()]);
    std::env::set_var(BACKEND_ENV, "twin:1");
    assert_eq!(registry.select(None).unwrap().name(), "twin:1");
    std::env::set_var(BACKEND_ENV, "twin:7");
    let (backend, reason) = unavailable(registry.select(None));
    std::env::remove_var(BACKEND_ENV);
    assert_eq!(backend, "twin:7");
    assert!(
        reason.starts_with("`twin` has 2 devices here (twin:0 to twin:1) (named by MOEMLA_BACKEND"),
        "{reason}"
    );
}

#[test]
fn device_identities_parse_and_a_one_device_backend_has_only_index_zero() {
    assert_eq!(parse_device("opencl"), Some(("opencl", 0)));
    assert_eq!(parse_device("opencl:0"), Some(("opencl", 0)));
    assert_eq!(parse_device("cuda:12"), Some(("cuda", 12)));
    assert_eq!(parse_device("cuda:"), None);
    assert_eq!(parse_device("cuda:-1"), None);
    let one = BackendFactory::new(
        "solo",
        Verification {
            kind: VerificationKind::Unverified,
            detail: String::new(),
        },
        || {
            Ok(Arc::new(Twin {
                name: "solo".into(),
                index: 0,
            }) as Arc<dyn Backend>)
        },
    );
    let registry = Registry::new(vec![one]);
    let ids: Vec<String> = registry.discover().iter().map(|e| e.id()).collect();
    assert_eq!(ids, ["solo:0"]);
    assert_eq!(registry.open("solo:0").unwrap().name(), "solo");
    let (backend, reason) = unavailable(registry.open("solo:1"));
    assert_eq!(backend, "solo:1");
    assert_eq!(reason, "`solo` has 1 device here (solo:0)");
}

#[test]
fn a_device_backend_not_named_for_its_index_is_refused() {
    // Device 1 opened under the plain name would let device 0's tensors in.
    let sloppy = BackendFactory::with_devices(
        "twin",
        claim(),
        || 2,
        |index| {
            Ok(Arc::new(Twin {
                name: "twin".into(),
                index,
            }) as Arc<dyn Backend>)
        },
    );
    let registry = Registry::new(vec![sloppy]);
    assert!(registry.open("twin:0").is_ok());
    let (backend, reason) = unavailable(registry.open("twin:1"));
    assert_eq!(backend, "twin:1");
    assert!(
        reason.contains("opened a backend named `twin` instead"),
        "{reason}"
    );
}
