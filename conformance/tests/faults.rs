//! A deliberately wrong backend (the CPU backend with one injected fault) must be reported
//! as FAIL, at the right case and element, while every other case still passes.

mod common;

use common::{fixture_set, TempDir, EXP_H, MLA_DV, MLA_HQ, MLA_SQ, ROUTE_K};
use moemla_conformance::{load_cases, render, run, Outcome, Report, Status};
use moemla_core::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, HostTensor, MlaDecodeOutput, MoeRouteOutput, Result,
    Shape,
};
use moemla_cpu::CpuBackend;

/// Which output to corrupt, and where (row-major linear index).
#[derive(Clone, Copy)]
enum Fault {
    /// Add 1e-2 to one element of mla_decode's `o`.
    MlaOffByHundredth(usize),
    /// Replace `topk_ids[row, slot]` with an expert id not in that row.
    SwappedRouteId { row: usize, slot: usize },
    /// Write NaN into one element of moe_experts' `y`.
    NanInY(usize),
    /// Panic in mla_decode.
    Panic,
}

/// The CPU backend, with one fault applied to its outputs.
struct Faulty {
    inner: CpuBackend,
    fault: Fault,
}

impl Faulty {
    /// Downloads `t`, edits its values as f32, uploads the result in `t`'s dtype.
    fn edit_f32(&self, t: &DeviceTensor, edit: impl FnOnce(&mut [f32])) -> Result<DeviceTensor> {
        let host = self.inner.download(t)?;
        let mut v = host.to_f32_vec()?;
        edit(&mut v);
        self.inner.upload(&HostTensor::from_f32_as(
            host.shape().clone(),
            &v,
            host.dtype(),
        )?)
    }
}

impl Backend for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        self.inner.alloc_zeroed(shape, dtype)
    }
    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        self.inner.upload(host)
    }
    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        self.inner.download(tensor)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        let mut out = self.inner.moe_route(call)?;
        if let Fault::SwappedRouteId { row, slot } = self.fault {
            let host = self.inner.download(&out.topk_ids)?;
            let mut ids = host.to_i32_vec()?;
            let k = call.params.top_k;
            let row_ids = ids[row * k..(row + 1) * k].to_vec();
            let other = (0..call.experts as i32)
                .find(|e| !row_ids.contains(e))
                .unwrap();
            ids[row * k + slot] = other;
            out.topk_ids = self
                .inner
                .upload(&HostTensor::from_slice(host.shape().clone(), &ids)?)?;
        }
        Ok(out)
    }

    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        let y = self.inner.moe_experts(call)?;
        match self.fault {
            Fault::NanInY(at) => self.edit_f32(&y, |v| v[at] = f32::NAN),
            _ => Ok(y),
        }
    }

    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        if let Fault::Panic = self.fault {
            panic!("injected fault in {:?}", call.q);
        }
        let mut out = self.inner.mla_decode(call)?;
        if let Fault::MlaOffByHundredth(at) = self.fault {
            out.o = self.edit_f32(&out.o, |v| v[at] += 1e-2)?;
        }
        Ok(out)
    }
}

/// Runs the fixture set on the CPU backend with `fault`.
fn run_with(fault: Fault) -> Report {
    let dir = TempDir::new("faults");
    fixture_set(&dir.0);
    let backend = Faulty {
        inner: CpuBackend::new(),
        fault,
    };
    run(&backend, &load_cases(&[&dir.0]))
}

/// The outcome of the fixture case `name`.
fn outcome<'a>(report: &'a Report, name: &str) -> &'a Outcome {
    report.results.iter().find(|o| o.case == name).unwrap()
}

/// Every case except those in `failing` passes.
fn others_pass(report: &Report, failing: &[&str]) {
    for o in &report.results {
        if !failing.contains(&o.case.as_str()) {
            assert_eq!(o.status, Status::Pass, "{}\n{}", o.case, render(report));
        }
    }
}

#[test]
fn mla_output_off_by_a_hundredth_fails_at_that_element() {
    let index = [1, 1, 0, 3];
    let linear = ((index[0] * MLA_SQ + index[1]) * MLA_HQ + index[2]) * MLA_DV + index[3];
    let report = run_with(Fault::MlaOffByHundredth(linear));
    let o = outcome(&report, "mla_decode/f32/mla.safetensors");
    assert_eq!(o.status, Status::Fail, "{}", render(&report));
    assert_eq!(o.worst_output.as_deref(), Some("o"));
    assert_eq!(o.worst_index.as_deref(), Some(&index[..]));
    let cmp = &o.comparisons[0];
    assert_eq!((cmp.output.as_str(), cmp.failed), ("o", 1));
    assert_eq!(cmp.first_failure.as_ref().unwrap().index, index);
    let err = cmp.max_abs.unwrap();
    assert!((err - 1e-2).abs() < 1e-5, "max abs {err}");
    assert!(o.comparisons[1].passed, "lse is untouched");
    let message = o.message.as_deref().unwrap();
    assert!(message.contains("[1, 1, 0, 3]"), "{message}");
    // 1e-2 is within the BF16 tolerance (2e-2 + 2e-2 * |exp|): that case still passes.
    others_pass(&report, &["mla_decode/f32/mla.safetensors"]);
}

#[test]
fn swapped_routing_id_fails_at_that_row() {
    let report = run_with(Fault::SwappedRouteId { row: 2, slot: 1 });
    let failing = [
        "moe_route/f32/route.safetensors",
        "moe_route/bf16/route.safetensors",
    ];
    for name in failing {
        let o = outcome(&report, name);
        assert_eq!(o.status, Status::Fail, "{}", render(&report));
        assert_eq!(o.worst_output.as_deref(), Some("topk_ids"));
        assert_eq!(o.worst_index.as_deref(), Some(&[2][..]));
        let ids = &o.comparisons[0];
        assert_eq!((ids.checked, ids.failed), (4, 1));
        let detail = &ids.first_failure.as_ref().unwrap().detail;
        assert!(detail.starts_with("row 2: missing ["), "{detail}");
        assert!(detail.contains("unexpected ["), "{detail}");
        // The other weights still match by id; the lost expert's weight is not compared.
        let weights = &o.comparisons[1];
        assert!(weights.passed);
        assert_eq!(weights.checked, 4 * ROUTE_K - 1);
    }
    others_pass(&report, &failing);
}

#[test]
fn nan_leaked_into_y_fails_at_that_element() {
    let index = [1, 5];
    let report = run_with(Fault::NanInY(index[0] * EXP_H + index[1]));
    let failing = [
        "moe_experts/f32/experts.safetensors",
        "moe_experts/bf16/experts.safetensors",
    ];
    for name in failing {
        let o = outcome(&report, name);
        assert_eq!(o.status, Status::Fail, "{}", render(&report));
        assert_eq!(o.worst_output.as_deref(), Some("y"));
        assert_eq!(o.worst_index.as_deref(), Some(&index[..]));
        let y = &o.comparisons[0];
        assert_eq!(y.failed, 1);
        assert!(y.first_failure.as_ref().unwrap().got.is_nan());
        assert_eq!(y.max_abs, Some(f64::INFINITY));
    }
    others_pass(&report, &failing);
}

#[test]
fn a_panicking_backend_fails_the_case_and_the_run_goes_on() {
    let report = run_with(Fault::Panic);
    let failing = [
        "mla_decode/f32/mla.safetensors",
        "mla_decode/bf16/mla.safetensors",
    ];
    for name in failing {
        let o = outcome(&report, name);
        assert_eq!(o.status, Status::Fail);
        let message = o.message.as_deref().unwrap();
        assert!(
            message.starts_with("backend panicked: injected fault in DeviceTensor("),
            "{message}"
        );
    }
    others_pass(&report, &failing);
}
