//! The template's factory opens it; it lists exactly `moe_route` in F32/F16/BF16, routes
//! correctly, refuses every other op with `Error::Unsupported` naming the op, and its
//! tensors are refused by another backend's name.

use moemla_core::ops::{self, SparseDecodeInputs};
use moemla_core::{
    DType, Error, ExpertsParams, HostTensor, MlaDecodeParams, Op, OpSupport, RouteParams,
    SparseDecodeParams, VerificationKind,
};

#[test]
fn the_factory_opens_a_backend_that_lists_moe_route_only() {
    let factory = moemla_template::factory();
    assert_eq!(factory.name(), "template");
    let backend = factory.open().unwrap();
    let info = backend.info();
    assert_eq!(info.name, "template");
    assert_eq!(info.verification.kind, VerificationKind::Unverified);
    let want: Vec<OpSupport> = [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .map(|d| OpSupport::new(Op::MoeRoute, d))
        .collect();
    assert_eq!(info.supported, want);
    assert!(!backend.supports(&OpSupport::new(Op::MoeExperts, DType::F32)));
}

#[test]
fn moe_route_matches_a_hand_computed_routing() {
    let backend = moemla_template::factory().open().unwrap();
    // 2 tokens, 4 experts in 2 groups keep 1, sigmoid, top-2 by selection score.
    let logits = [0.0f32, 2.0, -1.0, 1.0, 3.0, f32::NAN, 0.5, 0.5];
    for dtype in [DType::F32, DType::BF16] {
        let host = HostTensor::from_slice([2, 4], &logits).unwrap();
        let t = backend.upload(&host.to_dtype(dtype).unwrap()).unwrap();
        let p = RouteParams {
            score_func: moemla_core::ScoreFunc::Sigmoid,
            top_k: 2,
            n_group: 2,
            topk_group: 1,
            group_select: moemla_core::GroupSelect::Max,
            renormalize: true,
            routed_scaling_factor: 2.0,
        };
        let out = ops::moe_route(backend.as_ref(), &t, None, &p).unwrap();
        let ids = backend
            .download(&out.topk_ids)
            .unwrap()
            .to_i32_vec()
            .unwrap();
        let w = backend
            .download(&out.topk_weights)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        // Token 0: group 0 (best 2.0) beats group 1 (best 1.0): experts 1 then 0.
        // Token 1: group 0 holds 3.0 (NaN ranks last): experts 0 then 1 (NaN's score).
        assert_eq!(ids[..2], [1, 0], "{dtype}");
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (a, b) = (sig(2.0), sig(0.0));
        let want = [2.0 * a / (a + b), 2.0 * b / (a + b)];
        for (g, w) in w[..2].iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{dtype}: {g} vs {w}");
        }
        assert_eq!(ids[2], 0, "{dtype}");
    }
}

#[test]
fn every_other_op_is_unsupported_and_names_itself() {
    let backend = moemla_template::factory().open().unwrap();
    let up = |dims: &[usize], dtype| backend.alloc_zeroed(&dims.into(), dtype).unwrap();
    let (x, w13, w2) = (
        up(&[2, 4], DType::F32),
        up(&[1, 4, 4], DType::F32),
        up(&[1, 4, 2], DType::F32),
    );
    let (ids, weights) = (up(&[2, 1], DType::I32), up(&[2, 1], DType::F32));
    let err = ops::moe_experts(
        backend.as_ref(),
        &x,
        &w13,
        &w2,
        &ids,
        &weights,
        &ExpertsParams::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: Op::MoeExperts,
                ..
            }
        ),
        "{err}"
    );
    let q = up(&[1, 1, 1, 4], DType::F32);
    let cache = up(&[1, 2, 1, 4], DType::F32);
    let table = up(&[1, 1], DType::I32);
    let lens = up(&[1], DType::I32);
    let p = MlaDecodeParams {
        softmax_scale: 0.5,
        causal: false,
        head_dim_v: 2,
        kv_format: Default::default(),
    };
    let err = ops::mla_decode(backend.as_ref(), &q, &cache, &table, &lens, &p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: Op::MlaDecode,
                ..
            }
        ),
        "{err}"
    );
    // A contract-v2 op keeps the trait's default.
    let indices = up(&[1, 1, 1], DType::I32);
    let p = SparseDecodeParams {
        softmax_scale: 0.5,
        head_dim_v: 2,
        kv_format: Default::default(),
    };
    let err = ops::mla_sparse_decode(
        backend.as_ref(),
        SparseDecodeInputs::new(&q, &cache, &indices),
        &p,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: Op::MlaSparseDecode,
                ..
            }
        ),
        "{err}"
    );
}
