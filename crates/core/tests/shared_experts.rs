//! `moe_experts` with fused shared experts (`shared_w13` + `shared_w2`): one test per
//! bad-input rule, each asserting the typed error (op, argument, dim), the capability gate
//! (`Format::SharedExperts`: a backend that does not list it never sees such a call, and
//! bad input is reported before that check), and the `_into` form's aliasing rule.

mod common;

use common::{assert_reached, reached, zeros};
use moemla_core::calls::{
    MlaDecodeCall, MlaDecodeOutput, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::ops::{self, ExpertsInputs};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, Error, ExpertsParams, Format, Op, OpSupport, Result,
};

/// A backend named `name` that lists `supported` and answers `moe_experts` with a
/// `Device` error saying the call reached it, after recording the shared experts' sizes.
struct Stub {
    name: &'static str,
    supported: Vec<OpSupport>,
    seen: std::sync::Mutex<Option<(usize, usize)>>,
}

impl Backend for Stub {
    fn name(&self) -> &str {
        self.name
    }
    fn info(&self) -> BackendInfo {
        common::info(self.name, self.supported.clone())
    }
    common::host_memory!();
    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        *self.seen.lock().unwrap() = call.shared.map(|s| (s.count, s.inter));
        Err(reached(self.name))
    }
    fn moe_route(&self, _: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        unreachable!("not used")
    }
    fn mla_decode(&self, _: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        unreachable!("not used")
    }
}

fn stub(name: &'static str, supported: Vec<OpSupport>) -> Stub {
    Stub {
        name,
        supported,
        seen: std::sync::Mutex::new(None),
    }
}

/// Everything v2 defines (shared experts included).
fn full() -> Stub {
    stub("stub", OpSupport::all_v2())
}

/// A valid call's tensors: T 3, H 8, E 4, I 6, k 2 in `dtype`; S 2 shared experts of Is 10.
struct Tensors {
    x: DeviceTensor,
    w13: DeviceTensor,
    w2: DeviceTensor,
    ids: DeviceTensor,
    weights: DeviceTensor,
    sw13: DeviceTensor,
    sw2: DeviceTensor,
}

fn tensors(b: &dyn Backend, dtype: DType) -> Tensors {
    Tensors {
        x: zeros(b, &[3, 8], dtype),
        w13: zeros(b, &[4, 12, 8], dtype),
        w2: zeros(b, &[4, 8, 6], dtype),
        ids: zeros(b, &[3, 2], DType::I32),
        weights: zeros(b, &[3, 2], DType::F32),
        sw13: zeros(b, &[2, 20, 8], dtype),
        sw2: zeros(b, &[2, 8, 10], dtype),
    }
}

impl Tensors {
    fn inputs(&self) -> ExpertsInputs<'_> {
        ExpertsInputs::new(&self.x, &self.w13, &self.w2, &self.ids, &self.weights)
    }
}

/// Runs `moe_experts_with` on `b` with the shared pair (`sw13`, `sw2`) in place of the
/// valid one (`None` leaves that tensor out).
fn run_shared(
    b: &dyn Backend,
    t: &Tensors,
    sw13: Option<&DeviceTensor>,
    sw2: Option<&DeviceTensor>,
) -> Result<DeviceTensor> {
    let mut inputs = t.inputs();
    inputs.shared_w13 = sw13;
    inputs.shared_w2 = sw2;
    ops::moe_experts_with(b, inputs, &ExpertsParams::default())
}

#[track_caller]
fn assert_dim<T: std::fmt::Debug>(r: Result<T>, want_arg: &str, want_dim: usize, name: &str) {
    match r {
        Err(Error::Dim {
            op: Op::MoeExperts,
            arg,
            dim,
            dim_name,
            ..
        }) if arg == want_arg && dim == want_dim && dim_name == name => {}
        other => panic!("expected a Dim error on `{want_arg}` dim {want_dim}, got {other:?}"),
    }
}

#[track_caller]
fn assert_input<T: std::fmt::Debug>(r: Result<T>, want_arg: &str, want_words: &str) {
    match r {
        Err(Error::Input {
            op: Op::MoeExperts,
            arg,
            expected,
            ..
        }) if arg == want_arg && expected.contains(want_words) => {}
        other => panic!("expected an Input error on `{want_arg}` ({want_words}), got {other:?}"),
    }
}

#[test]
fn a_valid_call_with_shared_experts_reaches_the_backend_with_their_sizes() {
    let b = full();
    for dtype in DType::FLOATS {
        let t = tensors(&b, dtype);
        assert_reached(run_shared(&b, &t, Some(&t.sw13), Some(&t.sw2)));
        assert_eq!(*b.seen.lock().unwrap(), Some((2, 10)), "{dtype}");
        let inputs = t.inputs().with_shared(&t.sw13, &t.sw2);
        assert_reached(ops::moe_experts_with(&b, inputs, &ExpertsParams::default()));
        // Without them the call carries none.
        assert_reached(run_shared(&b, &t, None, None));
        assert_eq!(*b.seen.lock().unwrap(), None);
    }
}

#[test]
fn shared_weights_come_together() {
    let b = full();
    let t = tensors(&b, DType::F32);
    assert_input(
        run_shared(&b, &t, Some(&t.sw13), None),
        "shared_w2",
        "together with shared_w13",
    );
    assert_input(
        run_shared(&b, &t, None, Some(&t.sw2)),
        "shared_w13",
        "together with shared_w2",
    );
}

#[test]
fn shared_experts_are_refused_beside_fp8_routed_weights() {
    let b = full();
    let t = tensors(&b, DType::BF16);
    let w13 = zeros(&b, &[4, 12, 8], DType::F8E4M3);
    let w2 = zeros(&b, &[4, 8, 6], DType::F8E4M3);
    let (s13, s2) = (
        zeros(&b, &[4, 1, 1], DType::F32),
        zeros(&b, &[4, 1, 1], DType::F32),
    );
    let base = ExpertsInputs::new(&t.x, &w13, &w2, &t.ids, &t.weights).with_scales(&s13, &s2);
    // The same call without shared experts is valid.
    assert_reached(ops::moe_experts_with(&b, base, &ExpertsParams::default()));
    let inputs = base.with_shared(&t.sw13, &t.sw2);
    assert_input(
        ops::moe_experts_with(&b, inputs, &ExpertsParams::default()),
        "shared_w13",
        "run-dtype routed weights",
    );
}

#[test]
fn shared_weights_have_rank_3() {
    let b = full();
    let t = tensors(&b, DType::F32);
    for (sw13, sw2, want) in [
        (zeros(&b, &[20, 8], DType::F32), t.sw2.clone(), "shared_w13"),
        (
            t.sw13.clone(),
            zeros(&b, &[1, 2, 8, 10], DType::F32),
            "shared_w2",
        ),
    ] {
        match run_shared(&b, &t, Some(&sw13), Some(&sw2)) {
            Err(Error::Rank { arg, expected, .. }) if arg == want && expected == 3 => {}
            other => panic!("expected a Rank error on `{want}`, got {other:?}"),
        }
    }
}

#[test]
fn shared_weights_have_the_run_dtype() {
    let b = full();
    let t = tensors(&b, DType::BF16);
    let f16_13 = zeros(&b, &[2, 20, 8], DType::F16);
    let f16_2 = zeros(&b, &[2, 8, 10], DType::F16);
    let fp8_13 = zeros(&b, &[2, 20, 8], DType::F8E4M3);
    for (sw13, sw2, want) in [
        (&f16_13, &t.sw2, "shared_w13"),
        (&fp8_13, &t.sw2, "shared_w13"),
        (&t.sw13, &f16_2, "shared_w2"),
    ] {
        match run_shared(&b, &t, Some(sw13), Some(sw2)) {
            Err(Error::DType {
                op: Op::MoeExperts,
                arg,
                expected,
                ..
            }) if arg == want && expected.contains("BF16") => {}
            other => panic!("expected a DType error on `{want}`, got {other:?}"),
        }
    }
}

#[test]
fn at_least_one_shared_expert() {
    let b = full();
    let t = tensors(&b, DType::F32);
    let sw13 = zeros(&b, &[0, 20, 8], DType::F32);
    let sw2 = zeros(&b, &[0, 8, 10], DType::F32);
    assert_dim(
        run_shared(&b, &t, Some(&sw13), Some(&sw2)),
        "shared_w13",
        0,
        "S",
    );
}

#[test]
fn shared_gate_up_rows_are_even_and_not_zero() {
    let b = full();
    let t = tensors(&b, DType::F32);
    for rows in [0, 19] {
        let sw13 = zeros(&b, &[2, rows, 8], DType::F32);
        let r = run_shared(&b, &t, Some(&sw13), Some(&t.sw2));
        assert_dim(r, "shared_w13", 1, "2Is");
    }
}

#[test]
fn shared_w13_hidden_is_that_of_x() {
    let b = full();
    let t = tensors(&b, DType::F32);
    let sw13 = zeros(&b, &[2, 20, 9], DType::F32);
    assert_dim(
        run_shared(&b, &t, Some(&sw13), Some(&t.sw2)),
        "shared_w13",
        2,
        "H",
    );
}

#[test]
fn shared_w2_agrees_with_shared_w13_and_x() {
    let b = full();
    let t = tensors(&b, DType::F32);
    for (dims, dim, name) in [
        ([1, 8, 10], 0, "S"),
        ([2, 7, 10], 1, "H"),
        ([2, 8, 6], 2, "Is"),
    ] {
        let sw2 = zeros(&b, &dims, DType::F32);
        let r = run_shared(&b, &t, Some(&t.sw13), Some(&sw2));
        assert_dim(r, "shared_w2", dim, name);
    }
}

#[test]
fn shared_weights_of_another_backend_are_refused() {
    let (b, other) = (full(), stub("other", OpSupport::all_v2()));
    let t = tensors(&b, DType::F32);
    let foreign = tensors(&other, DType::F32);
    for (sw13, sw2, want) in [
        (&foreign.sw13, &t.sw2, "shared_w13"),
        (&t.sw13, &foreign.sw2, "shared_w2"),
    ] {
        match run_shared(&b, &t, Some(sw13), Some(sw2)) {
            Err(Error::WrongBackend { arg, got, .. }) if arg == want && got == "other" => {}
            other => panic!("expected WrongBackend on `{want}`, got {other:?}"),
        }
    }
}

#[test]
fn a_backend_that_does_not_list_shared_experts_refuses_them_after_validation() {
    let mut supported = OpSupport::all_v2();
    supported.retain(|s| s.format != Some(Format::SharedExperts));
    let b = stub("stub", supported);
    let t = tensors(&b, DType::F16);
    // Without shared experts the call reaches it.
    assert_reached(run_shared(&b, &t, None, None));
    match run_shared(&b, &t, Some(&t.sw13), Some(&t.sw2)) {
        Err(Error::Unsupported {
            op: Op::MoeExperts,
            what,
            ..
        }) => {
            assert_eq!(what, "shared_experts F16");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(*b.seen.lock().unwrap(), None, "the backend saw the call");
    // Bad input is the input error there too, not Unsupported.
    let sw2 = zeros(&b, &[2, 8, 6], DType::F16);
    let r = run_shared(&b, &t, Some(&t.sw13), Some(&sw2));
    assert_dim(r, "shared_w2", 2, "Is");
    // The `_into` form takes the same gate.
    let y = zeros(&b, &[3, 8], DType::F16);
    let inputs = t.inputs().with_shared(&t.sw13, &t.sw2);
    let r = ops::moe_experts_into(&b, inputs, &ExpertsParams::default(), &y);
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
}

#[test]
fn moe_experts_into_takes_shared_experts_and_refuses_y_over_one_of_them() {
    let b = full();
    let t = tensors(&b, DType::F32);
    let y = zeros(&b, &[3, 8], DType::F32);
    let inputs = t.inputs().with_shared(&t.sw13, &t.sw2);
    // The default `_into` runs the op: it reaches the backend with the shared experts.
    assert_reached(ops::moe_experts_into(
        &b,
        inputs,
        &ExpertsParams::default(),
        &y,
    ));
    assert_eq!(*b.seen.lock().unwrap(), Some((2, 10)));
    // y as a view of shared_w2's buffer (same size: S * H * Is = 160 = 20 * 8).
    let alias = t.sw2.reshape(&[20usize, 8][..]).unwrap();
    let t2 = Tensors {
        x: zeros(&b, &[20, 8], DType::F32),
        ids: zeros(&b, &[20, 2], DType::I32),
        weights: zeros(&b, &[20, 2], DType::F32),
        ..tensors(&b, DType::F32)
    };
    let inputs = t2.inputs().with_shared(&t.sw13, &t.sw2);
    let r = ops::moe_experts_into(&b, inputs, &ExpertsParams::default(), &alias);
    assert_input(r, "y", "a buffer of its own");
}

#[test]
fn every_float_dtype_lists_shared_experts_in_all_v2() {
    let all = OpSupport::all_v2();
    for dtype in DType::FLOATS {
        let s = OpSupport::with_format(Op::MoeExperts, dtype, Format::SharedExperts);
        assert!(all.contains(&s), "{s}");
    }
    assert!(!OpSupport::all_v1().iter().any(|s| s.format.is_some()));
    assert_eq!(Format::SharedExperts.name(), "shared_experts");
    assert!(Format::ALL.contains(&Format::SharedExperts));
}
