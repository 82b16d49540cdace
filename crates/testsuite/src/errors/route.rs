//! `moe_route` validation: rank, dims, dtypes, parameters, owning backend.

use super::{shell, Cases, Expect};
use crate::harness::Ctx;
use moemla_core::{ops, DType, DeviceTensor, GroupSelect, Op, RouteParams, ScoreFunc};

const OP: Op = Op::MoeRoute;

/// A valid call: logits [3, 8], 4 groups of 2 keep 2, top-2.
fn params() -> RouteParams {
    RouteParams {
        score_func: ScoreFunc::Sigmoid,
        top_k: 2,
        n_group: 4,
        topk_group: 2,
        group_select: GroupSelect::Top2Sum,
        renormalize: true,
        routed_scaling_factor: 1.0,
    }
}

fn route(
    ctx: &Ctx<'_>,
    logits: (&[usize], DType),
    bias: Option<(&[usize], DType)>,
    p: &RouteParams,
) -> moemla_core::Result<moemla_core::MoeRouteOutput> {
    let name = ctx.backend.name();
    let logits = shell(name, logits.0, logits.1);
    let bias: Option<DeviceTensor> = bias.map(|(d, t)| shell(name, d, t));
    ops::moe_route(ctx.backend, &logits, bias.as_ref(), p)
}

const LOGITS: (&[usize], DType) = (&[3, 8], DType::F32);
const BIAS: Option<(&[usize], DType)> = Some((&[8], DType::F32));

/// logits must be rank 2, bias rank 1.
pub fn rank(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = params();
    c.expect(
        "logits rank 3",
        route(ctx, (&[3, 8, 1], DType::F32), BIAS, &p),
        Expect::Rank(OP, "logits", 3),
    );
    c.expect(
        "logits rank 1",
        route(ctx, (&[8], DType::F32), BIAS, &p),
        Expect::Rank(OP, "logits", 1),
    );
    c.expect(
        "bias rank 2",
        route(ctx, LOGITS, Some((&[1, 8], DType::F32)), &p),
        Expect::Rank(OP, "bias", 2),
    );
    c.finish();
}

/// T >= 1, E >= 1, bias has E entries.
pub fn dims(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = params();
    c.expect(
        "T = 0",
        route(ctx, (&[0, 8], DType::F32), BIAS, &p),
        Expect::Dim(OP, "logits", 0, "T", 0),
    );
    c.expect(
        "E = 0",
        route(ctx, (&[3, 0], DType::F32), None, &p),
        Expect::Dim(OP, "logits", 1, "E", 0),
    );
    c.expect(
        "bias [7]",
        route(ctx, LOGITS, Some((&[7], DType::F32)), &p),
        Expect::Dim(OP, "bias", 0, "E", 7),
    );
    c.finish();
}

/// logits F32 | F16 | BF16; bias F32.
pub fn dtype(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = params();
    for bad in [DType::I32, DType::F8E4M3] {
        c.expect(
            &format!("logits {bad}"),
            route(ctx, (&[3, 8], bad), BIAS, &p),
            Expect::DType(OP, "logits", bad),
        );
    }
    for bad in [DType::F16, DType::BF16, DType::I32] {
        c.expect(
            &format!("bias {bad}"),
            route(ctx, LOGITS, Some((&[8], bad)), &p),
            Expect::DType(OP, "bias", bad),
        );
    }
    c.finish();
}

/// 1 <= top_k <= E and top_k <= topk_group * (E / n_group).
pub fn top_k(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = RouteParams {
        top_k: 0,
        ..params()
    };
    c.expect(
        "top_k 0",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "top_k", ">= 1"),
    );
    let p = RouteParams {
        top_k: 9,
        n_group: 1,
        topk_group: 1,
        ..params()
    };
    c.expect(
        "top_k 9 > E 8",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "top_k", "<= E"),
    );
    // 2 kept groups of 2 experts reach only 4 experts.
    let p = RouteParams {
        top_k: 5,
        ..params()
    };
    c.expect(
        "top_k 5 > 2 * 8 / 4",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "top_k", "topk_group * E / n_group"),
    );
    c.finish();
}

/// n_group >= 1 and divides E.
pub fn n_group(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = RouteParams {
        n_group: 0,
        topk_group: 0,
        ..params()
    };
    c.expect(
        "n_group 0",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "n_group", ">= 1"),
    );
    let p = RouteParams {
        n_group: 3,
        topk_group: 1,
        top_k: 1,
        ..params()
    };
    c.expect(
        "n_group 3 of E 8",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "n_group", "divisor of E"),
    );
    c.finish();
}

/// 1 <= topk_group <= n_group.
pub fn topk_group(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = RouteParams {
        topk_group: 0,
        ..params()
    };
    c.expect(
        "topk_group 0",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "topk_group", ">= 1"),
    );
    let p = RouteParams {
        topk_group: 5,
        ..params()
    };
    c.expect(
        "topk_group 5 > n_group 4",
        route(ctx, LOGITS, BIAS, &p),
        Expect::Param(OP, "topk_group", "<= n_group"),
    );
    c.finish();
}

/// routed_scaling_factor must be finite as the f32 kernels use (1e300 overflows f32).
pub fn scaling_factor(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300, -1e39] {
        let p = RouteParams {
            routed_scaling_factor: bad,
            ..params()
        };
        c.expect(
            &format!("scale {bad}"),
            route(ctx, LOGITS, BIAS, &p),
            Expect::Param(OP, "routed_scaling_factor", "finite"),
        );
    }
    c.finish();
}

/// Tensors of another backend are rejected, naming the argument.
pub fn wrong_backend(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let p = params();
    let here = shell(ctx.backend.name(), &[3, 8], DType::F32);
    let there = shell("elsewhere", &[3, 8], DType::F32);
    let bias_here = shell(ctx.backend.name(), &[8], DType::F32);
    let bias_there = shell("elsewhere", &[8], DType::F32);
    c.expect(
        "logits",
        ops::moe_route(ctx.backend, &there, Some(&bias_here), &p),
        Expect::WrongBackend(OP, "logits"),
    );
    c.expect(
        "bias",
        ops::moe_route(ctx.backend, &here, Some(&bias_there), &p),
        Expect::WrongBackend(OP, "bias"),
    );
    c.finish();
}
