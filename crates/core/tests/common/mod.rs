//! Helpers shared by this crate's integration tests: stub backends over host memory, which
//! answer the ops a test reaches with [`REACHED`].

#![allow(dead_code)] // each test binary uses a subset

use moemla_core::{
    Backend, BackendInfo, DType, DeviceBuffer, DeviceKind, DeviceTensor, Error, HostTensor,
    OpSupport, Verification, VerificationKind,
};
use std::any::Any;

/// A host buffer: a stub backend's tensor memory.
#[derive(Debug)]
pub struct Buf(pub HostTensor);

impl DeviceBuffer for Buf {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The message of the error a stub answers once a call has passed core's checks.
pub const REACHED: &str = "reached the backend";

/// The `Device` error of backend `name` saying that the call reached it.
pub fn reached(name: &str) -> Error {
    Error::Device {
        backend: name.into(),
        call: "op".into(),
        message: REACHED.into(),
    }
}

/// A stub's info: backend `name`, listing `supported`, unverified.
pub fn info(name: &str, supported: Vec<OpSupport>) -> BackendInfo {
    BackendInfo {
        name: name.into(),
        vendor: "test".into(),
        device: "none".into(),
        device_kind: DeviceKind::Cpu,
        memory_bytes: None,
        supported,
        verification: Verification {
            kind: VerificationKind::Unverified,
            detail: String::new(),
        },
        notes: vec![],
    }
}

/// The host tensor behind a tensor of the stub backend `name`.
pub fn host<'a>(name: &str, t: &'a DeviceTensor) -> &'a HostTensor {
    &t.buffer::<Buf>(name, "test", "t").unwrap().0
}

/// A zero tensor of `dims` in `dtype` on `b`.
pub fn zeros(b: &dyn Backend, dims: &[usize], dtype: DType) -> DeviceTensor {
    b.alloc_zeroed(&dims.into(), dtype).unwrap()
}

/// The memory methods of a stub backend whose tensors are [`Buf`]s named by
/// `Backend::name` (`alloc_zeroed`, `upload`, `download`, `synchronize`), for use inside
/// its `impl Backend`.
#[allow(unused_macros)] // each test binary uses a subset
macro_rules! host_memory {
    () => {
        fn alloc_zeroed(
            &self,
            shape: &moemla_core::Shape,
            dtype: moemla_core::DType,
        ) -> moemla_core::Result<moemla_core::DeviceTensor> {
            self.upload(&moemla_core::HostTensor::zeros(shape.clone(), dtype)?)
        }
        fn upload(
            &self,
            h: &moemla_core::HostTensor,
        ) -> moemla_core::Result<moemla_core::DeviceTensor> {
            Ok(moemla_core::DeviceTensor::new(
                std::sync::Arc::new(common::Buf(h.clone())),
                self.name().into(),
                h.shape().clone(),
                h.dtype(),
            ))
        }
        fn download(
            &self,
            t: &moemla_core::DeviceTensor,
        ) -> moemla_core::Result<moemla_core::HostTensor> {
            Ok(t.buffer::<common::Buf>(self.name(), "test", "t")?.0.clone())
        }
        fn synchronize(&self) -> moemla_core::Result<()> {
            Ok(())
        }
    };
}
#[allow(unused_imports)]
pub(crate) use host_memory;

/// The three required ops a stub never runs (`moe_route`, `moe_experts`, `mla_decode`),
/// for use inside its `impl Backend`.
#[allow(unused_macros)]
macro_rules! unused_v1_ops {
    () => {
        fn moe_route(
            &self,
            _: &moemla_core::calls::MoeRouteCall<'_>,
        ) -> moemla_core::Result<moemla_core::calls::MoeRouteOutput> {
            unreachable!("not used")
        }
        fn moe_experts(
            &self,
            _: &moemla_core::calls::MoeExpertsCall<'_>,
        ) -> moemla_core::Result<moemla_core::DeviceTensor> {
            unreachable!("not used")
        }
        fn mla_decode(
            &self,
            _: &moemla_core::calls::MlaDecodeCall<'_>,
        ) -> moemla_core::Result<moemla_core::calls::MlaDecodeOutput> {
            unreachable!("not used")
        }
    };
}
#[allow(unused_imports)]
pub(crate) use unused_v1_ops;

/// Asserts that a call passed core's checks and reached the stub.
#[track_caller]
pub fn assert_reached<T: std::fmt::Debug>(r: moemla_core::Result<T>) {
    match r {
        Err(Error::Device { message, .. }) if message == REACHED => {}
        other => panic!("expected the call to reach the backend, got {other:?}"),
    }
}
