//! # moemla-template
//!
//! The skeleton every moemla backend follows; copy this crate to start one
//! (`docs/adding-a-backend.md` walks through it). One file per concern:
//!
//! - `lib.rs` (here): the backend's [`NAME`], its [`claimed_verification`], its
//!   [`factory`], and [`TemplateBackend`] with its `impl Backend`, each method delegating;
//! - [`device`]: opening the device (here: the host) and moving tensors on and off it;
//! - [`buffer`]: the per-tensor memory type ([`buffer::TemplateBuffer`]);
//! - [`error`]: the backend's errors as `moemla_core::Error`;
//! - `ops/`: one file per op, each taking the validated call.
//!
//! As the worked example, `moe_route` is implemented in plain Rust on the host, in F32,
//! F16 and BF16; `moe_experts` and `mla_decode` return `Error::Unsupported` (the shared
//! suite reports them as skipped), and the contract-v2 ops keep the trait's default
//! (`Unsupported`). It is not a device: moemla's registry does not list it.

pub mod buffer;
pub mod device;
pub mod error;
mod ops;

use device::Device;
use moemla_core::vendor::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::vendor::{Backend, BackendFactory};
use moemla_core::{
    BackendInfo, DType, DeviceKind, DeviceTensor, HostTensor, MlaDecodeOutput, MoeRouteOutput, Op,
    OpSupport, Result, Shape, Verification, VerificationKind,
};
use std::sync::Arc;

/// The name `--backend template` selects and the tensors carry.
pub const NAME: &str = "template";

/// What this backend can honestly claim: it is checked by its own tests and the shared
/// suite only, never by a conformance run on a device.
pub fn claimed_verification() -> Verification {
    Verification {
        kind: VerificationKind::Unverified,
        detail: "skeleton: moe_route in plain Rust on the host, nothing else".to_string(),
    }
}

/// This backend as a registry lists it. Opening never fails here; a real backend returns
/// `Error::Unavailable` (with every library path tried) when its SDK or device is missing.
pub fn factory() -> BackendFactory {
    BackendFactory::new(NAME, claimed_verification(), || {
        Ok(Arc::new(TemplateBackend::open()?) as Arc<dyn Backend>)
    })
}

/// The (op, run dtype) pairs implemented: what `info` lists and `supports` answers.
fn supported() -> Vec<OpSupport> {
    [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .map(|dtype| OpSupport::new(Op::MoeRoute, dtype))
        .collect()
}

/// The template backend: an opened [`Device`] and the name stamped on its tensors.
#[derive(Debug)]
pub struct TemplateBackend {
    device: Device,
    name: Arc<str>,
}

impl TemplateBackend {
    /// Opens the device.
    pub fn open() -> Result<Self> {
        Ok(TemplateBackend {
            device: Device::open()?,
            name: NAME.into(),
        })
    }
}

impl Backend for TemplateBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.to_string(),
            vendor: "moemla".to_string(),
            device: self.device.description(),
            device_kind: DeviceKind::Cpu,
            memory_bytes: None,
            supported: supported(),
            verification: claimed_verification(),
            notes: vec!["a skeleton to copy, not a device".to_string()],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        self.device.alloc_zeroed(&self.name, shape, dtype)
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        self.device.upload(&self.name, host)
    }

    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        self.device.download(&self.name, tensor)
    }

    fn synchronize(&self) -> Result<()> {
        // Ops run to completion before they return; a queue-based backend waits here and
        // reports index errors its kernels flagged since the last synchronization.
        Ok(())
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        ops::moe_route::run(&self.device, &self.name, call)
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        ops::moe_experts::run(&self.name, call)
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        ops::mla_decode::run(&self.name, call)
    }

    fn supports(&self, support: &OpSupport) -> bool {
        supported().contains(support)
    }
}
