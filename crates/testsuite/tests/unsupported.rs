//! `SuiteConfig::allow_unsupported`: with it, a test that meets `Error::Unsupported` is
//! skipped, but a wrong result still fails; without it (the default), `Unsupported` fails.
//! The backend here refuses moe_experts and mla_decode and routes every token to expert 0
//! with weight 0 (wrong).

use moemla_core::vendor::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceBuffer, DeviceTensor, Error, HostTensor, MlaDecodeOutput,
    MoeRouteOutput, Op, OpSupport, Result, Shape, Verification, VerificationKind,
};
use moemla_testsuite::{cases, props, Ctx, Suite, SuiteConfig};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

const NAME: &str = "refusing";

#[derive(Debug)]
struct HostBuf(HostTensor);

impl DeviceBuffer for HostBuf {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct Refusing;

fn wrap(h: HostTensor) -> DeviceTensor {
    let (shape, dtype) = (h.shape().clone(), h.dtype());
    DeviceTensor::new(Arc::new(HostBuf(h)), NAME.into(), shape, dtype)
}

fn refuse(op: Op) -> Error {
    Error::Unsupported {
        backend: NAME.into(),
        op,
        what: "everything".into(),
        reason: "suite self-test".into(),
    }
}

impl Backend for Refusing {
    fn name(&self) -> &str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            vendor: "moemla".into(),
            device: "host".into(),
            device_kind: moemla_core::DeviceKind::Cpu,
            memory_bytes: None,
            supported: OpSupport::all_v1(),
            verification: Verification {
                kind: VerificationKind::Unverified,
                detail: "suite self-test".into(),
            },
            notes: vec![],
        }
    }

    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        Ok(wrap(HostTensor::zeros(shape.clone(), dtype)?))
    }

    fn upload(&self, h: &HostTensor) -> Result<DeviceTensor> {
        Ok(wrap(h.clone()))
    }

    fn download(&self, t: &DeviceTensor) -> Result<HostTensor> {
        Ok(t.buffer::<HostBuf>(NAME, "download", "tensor")?.0.clone())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn moe_route(&self, c: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        let dims = [c.tokens, c.params.top_k];
        let n = c.tokens * c.params.top_k;
        Ok(MoeRouteOutput {
            topk_ids: wrap(HostTensor::from_slice(dims, &vec![0i32; n])?),
            topk_weights: wrap(HostTensor::from_slice(dims, &vec![0f32; n])?),
        })
    }

    fn moe_experts(&self, _: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        Err(refuse(Op::MoeExperts))
    }

    fn mla_decode(&self, _: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        Err(refuse(Op::MlaDecode))
    }
}

fn suite(allow_unsupported: bool) -> Suite {
    let config = SuiteConfig {
        allow_unsupported,
        proptest_cases: 4,
    };
    Suite::new(NAME, || Ok(Arc::new(Refusing) as Arc<dyn Backend>), config)
}

/// Whether `body` passes on the suite.
fn passes(suite: &Suite, body: impl FnOnce(&Ctx<'_>)) -> bool {
    catch_unwind(AssertUnwindSafe(|| suite.run(body))).is_ok()
}

#[test]
fn allowed_unsupported_skips_tests_and_properties() {
    let s = suite(true);
    assert!(passes(&s, |ctx| cases::experts::small(ctx, DType::F32)));
    assert!(passes(&s, |ctx| cases::mla::small(ctx, DType::BF16)));
    assert!(passes(&s, props::mla::nan_never_reaches_output));
    assert!(passes(&s, props::experts::linear_in_weights));
}

#[test]
fn allowed_unsupported_still_fails_wrong_results() {
    let s = suite(true);
    assert!(!passes(&s, |ctx| cases::route::v3(ctx, DType::F32)));
    assert!(!passes(&s, props::route::properties));
}

#[test]
fn by_default_unsupported_fails() {
    let s = suite(false);
    assert!(!passes(&s, |ctx| cases::experts::small(ctx, DType::F32)));
    assert!(!passes(&s, props::mla::nan_never_reaches_output));
}
