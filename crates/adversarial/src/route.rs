//! moe_route with random E / top_k / groups (valid and invalid), extreme logits, biases and
//! scaling factors.

use crate::values::{extreme_f32, extreme_param, float_dtype, upload_as, usable_positive};
use crate::{describe, ensure, is_capability_error};
use moemla_core::{ops, Backend, DType, Error, GroupSelect, RouteParams, ScoreFunc};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// One generated routing problem.
#[derive(Clone, Debug)]
pub struct RouteCase {
    tokens: usize,
    experts: usize,
    dtype: DType,
    params: RouteParams,
    logits: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// Expert counts: small ones, DeepSeek's, and the large ones that once broke local memory.
fn experts() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 1usize..70,
        2 => Just(256usize),
        1 => Just(1usize << 17),
    ]
}

fn case() -> impl Strategy<Value = RouteCase> {
    (1usize..5, experts(), float_dtype()).prop_flat_map(|(tokens, experts, dtype)| {
        let n = tokens * experts;
        (
            prop::collection::vec(extreme_f32(), n),
            prop::option::of(prop::collection::vec(extreme_f32(), experts)),
            // top_k, n_group and topk_group: mostly valid, sometimes not (0, > E, non-divisor).
            prop_oneof![4 => 1..=experts, 1 => Just(0usize), 1 => Just(experts + 1), 1 => Just(experts)],
            prop_oneof![3 => Just(1usize), 3 => divisor_of(experts), 1 => 0usize..9],
            0usize..9,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            extreme_param(),
        )
            .prop_map(
                move |(logits, bias, top_k, n_group, topk_group, softmax, top2, renorm, scale)| {
                    RouteCase {
                        tokens,
                        experts,
                        dtype,
                        logits,
                        bias,
                        params: RouteParams {
                            score_func: if softmax { ScoreFunc::Softmax } else { ScoreFunc::Sigmoid },
                            top_k,
                            n_group,
                            topk_group: topk_group.min(n_group.max(1)),
                            group_select: if top2 { GroupSelect::Top2Sum } else { GroupSelect::Max },
                            renormalize: renorm,
                            routed_scaling_factor: scale,
                        },
                    }
                },
            )
    })
}

/// A divisor of `n` (n >= 1).
fn divisor_of(n: usize) -> impl Strategy<Value = usize> {
    let divisors: Vec<usize> = (1..=n.min(4096)).filter(|&d| n.is_multiple_of(d)).collect();
    prop::sample::select(divisors)
}

/// Whether the params satisfy every rule of the contract for E experts.
fn params_valid(p: &RouteParams, experts: usize) -> bool {
    p.top_k >= 1
        && p.top_k <= experts
        && p.n_group >= 1
        && experts.is_multiple_of(p.n_group)
        && p.topk_group >= 1
        && p.topk_group <= p.n_group
        && p.top_k <= p.topk_group * (experts / p.n_group)
        && (p.routed_scaling_factor as f32).is_finite()
}

/// Valid calls succeed (or meet a capability limit) with distinct in-range ids and, for
/// finite inputs, finite weights; invalid params are `Error::Param`.
pub fn property(backend: &dyn Backend, mut runner: TestRunner) -> Result<(), String> {
    runner
        .run(&case(), |c| {
            let fail = |e: Error| TestCaseError::fail(format!("setup: {e}"));
            let (logits, stored) =
                upload_as(backend, &[c.tokens, c.experts], &c.logits, c.dtype).map_err(fail)?;
            let bias = match &c.bias {
                Some(b) => Some(upload_as(backend, &[c.experts], b, DType::F32).map_err(fail)?),
                None => None,
            };
            let result = ops::moe_route(backend, &logits, bias.as_ref().map(|b| &b.0), &c.params);
            let out = match result {
                Err(e) if !params_valid(&c.params, c.experts) => {
                    return ensure(matches!(e, Error::Param { .. }), || {
                        format!("invalid params: expected Error::Param, got {e:?}")
                    });
                }
                Err(e) => {
                    return ensure(is_capability_error(&e), || {
                        format!("valid call failed: {e}")
                    })
                }
                Ok(out) => out,
            };
            ensure(params_valid(&c.params, c.experts), || {
                "invalid params accepted".into()
            })?;
            let ids = backend.download(&out.topk_ids).and_then(|t| t.to_i32_vec());
            let weights = backend
                .download(&out.topk_weights)
                .and_then(|t| t.to_f32_vec());
            let (ids, weights) = (ids.map_err(fail)?, weights.map_err(fail)?);
            let k = c.params.top_k;
            for (row, row_ids) in ids.chunks(k).enumerate() {
                let mut seen = row_ids.to_vec();
                seen.sort_unstable();
                seen.dedup();
                ensure(
                    seen.len() == k
                        && row_ids
                            .iter()
                            .all(|&id| id >= 0 && (id as usize) < c.experts),
                    || {
                        format!(
                            "row {row}: ids {row_ids:?} not {k} distinct ids in [0, {})",
                            c.experts
                        )
                    },
                )?;
            }
            let finite_inputs = stored.iter().all(|v| v.is_finite())
                && c.bias.iter().flatten().all(|v| v.is_finite())
                && usable_positive(c.params.routed_scaling_factor.abs());
            if finite_inputs {
                ensure(weights.iter().all(|w| w.is_finite()), || {
                    format!("finite inputs gave non-finite weights {weights:?}")
                })?;
            }
            Ok(())
        })
        .map_err(describe)
}
