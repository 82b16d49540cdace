//! A backend that does not list `Format::SharedExperts` gets the committed shared-expert
//! cases reported as unsupported (core refuses the variant before the backend sees it),
//! never as failures, while its other `moe_experts` cases still pass.

use moemla_conformance::{golden, load_cases, render, run, Status};
use moemla_core::calls::{
    MlaDecodeCall, MlaDecodeOutput, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::{Backend, BackendInfo, DType, DeviceTensor, Format, HostTensor, Result, Shape};
use moemla_cpu::CpuBackend;

/// The CPU backend without `SharedExperts` in its list; it panics if a call with shared
/// experts reaches it anyway.
struct NoShared(CpuBackend);

impl Backend for NoShared {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn info(&self) -> BackendInfo {
        let mut info = self.0.info();
        info.supported
            .retain(|s| s.format != Some(Format::SharedExperts));
        info
    }
    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        self.0.alloc_zeroed(shape, dtype)
    }
    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        self.0.upload(host)
    }
    fn download(&self, t: &DeviceTensor) -> Result<HostTensor> {
        self.0.download(t)
    }
    fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }
    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        self.0.moe_route(call)
    }
    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        assert!(
            call.shared.is_none(),
            "a shared-expert call reached the backend"
        );
        self.0.moe_experts(call)
    }
    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.0.mla_decode(call)
    }
}

#[test]
fn shared_expert_cases_are_unsupported_not_failed_where_not_listed() {
    let cases = load_cases(&[golden::committed_v2_dir().join("moe_experts")]);
    let report = run(&NoShared(CpuBackend::new()), &cases);
    let (mut shared, mut others) = (0, 0);
    for o in &report.results {
        if o.case.contains("shared") {
            shared += 1;
            assert_eq!(
                o.status,
                Status::Unsupported,
                "{}\n{}",
                o.case,
                render(&report)
            );
            let message = o.message.as_deref().unwrap_or_default();
            assert!(message.contains("shared_experts"), "{}: {message}", o.case);
        } else {
            others += 1;
            assert_eq!(o.status, Status::Pass, "{}\n{}", o.case, render(&report));
        }
    }
    // 3 shared-expert cases per run dtype, beside the other experts cases.
    assert_eq!(shared, 9, "{}", render(&report));
    assert!(others >= 3, "{}", render(&report));
    // Unsupported cells do not fail the run when the backend is not required.
    let counts = report.counts(None);
    assert_eq!(counts.failed, 0);
}
