//! `mla_decode` properties: invariant under a permutation of the physical blocks; NaN in
//! unused cache slots never reaches o or lse; o lies in the convex hull of the attended V
//! rows.

use crate::cases::mla::{MlaProblem, MlaSpec};
use crate::compare::{check_close, Tol};
use crate::harness::Ctx;
use crate::rng::Rng;
use moemla_core::{DType, HostTensor, Op};
use proptest::prelude::*;

fn problems(dtypes: Vec<DType>) -> impl Strategy<Value = (DType, MlaSpec, u64)> {
    let heads = (1usize..=2, 1usize..=3, 1usize..=8, 1usize..=8);
    let cache = (
        1usize..=5,
        prop::collection::vec(0i32..=12, 1..=3),
        0usize..=2,
    );
    let query = (1usize..=3, any::<bool>(), 0.05f64..1.0);
    (
        prop::sample::select(dtypes),
        heads,
        cache,
        query,
        any::<u64>(),
    )
        .prop_map(
            |(
                dtype,
                (h_kv, group, d_v, d_rope),
                (block_size, seqlens, spare_blocks),
                (s_q, causal, softmax_scale),
                seed,
            )| {
                let spec = MlaSpec {
                    s_q,
                    h_q: h_kv * group,
                    h_kv,
                    d_qk: d_v + d_rope,
                    d_v,
                    block_size,
                    seqlens,
                    spare_blocks,
                    causal,
                    softmax_scale,
                };
                (dtype, spec, seed)
            },
        )
}

fn property(
    ctx: &Ctx<'_>,
    name: &str,
    test: impl Fn(DType, &MlaProblem, u64) -> Result<(), String>,
) {
    let dtypes = ctx.float_dtypes(Op::MlaDecode);
    if dtypes.is_empty() {
        return;
    }
    ctx.check_property(name, problems(dtypes), |(dtype, spec, seed)| {
        let problem = MlaProblem::random(&spec, &mut Rng::new(seed));
        test(dtype, &problem, seed)
    });
}

/// Moving the cache blocks and renaming the table entries accordingly changes nothing.
pub fn block_permutation_invariant(ctx: &Ctx<'_>) {
    property(
        ctx,
        "mla_decode block permutation",
        |dtype, problem, seed| {
            let (o, lse, _) = problem.run(ctx, dtype);
            let moved = problem.permuted(&mut Rng::new(seed ^ 0xb10c));
            let (o2, lse2, _) = moved.run(ctx, dtype);
            let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            check_close(
                &format!("{dtype} {:?} o", problem.dims),
                &o2,
                &widen(&o),
                Tol::of(dtype),
            )?;
            check_close(
                &format!("{dtype} {:?} lse", problem.dims),
                &lse2,
                &widen(&lse),
                Tol::of(dtype),
            )
        },
    );
}

/// Unused slots and spare blocks hold NaN: o is finite, lse finite except -inf exactly for
/// empty ranges, and both match the reference.
pub fn nan_never_reaches_output(ctx: &Ctx<'_>) {
    property(
        ctx,
        "mla_decode NaN in unused slots",
        |dtype, problem, _| {
            let (o, lse, exp) = problem.run(ctx, dtype);
            let what = format!("{dtype} {:?} seqlens {:?}", problem.dims, problem.seqlens);
            if let Some(i) = o.iter().position(|v| !v.is_finite()) {
                return Err(format!("{what}: o[{i}] = {}", o[i]));
            }
            if let Some(i) = lse.iter().position(|v| v.is_nan() || *v == f32::INFINITY) {
                return Err(format!("{what}: lse[{i}] = {}", lse[i]));
            }
            check_close(&format!("{what} o"), &o, &exp.o, Tol::of(dtype))?;
            check_close(&format!("{what} lse"), &lse, &exp.lse, Tol::of(dtype))
        },
    );
}

/// Per column, o lies between the smallest and largest attended V value (o = 0 when the
/// range is empty).
pub fn output_in_convex_hull_of_values(ctx: &Ctx<'_>) {
    property(ctx, "mla_decode convex hull", |dtype, problem, _| {
        let d = problem.dims;
        let (o, _, _) = problem.run(ctx, dtype);
        let kv = HostTensor::from_f32_as([problem.kv.len()], &problem.kv, dtype)
            .and_then(|t| t.to_f32_vec())
            .map_err(|e| e.to_string())?;
        let tol = Tol::of(dtype);
        for b in 0..d.batch {
            for i in 0..d.s_q {
                let seqlen = problem.seqlens[b] as i64;
                let len = if problem.params.causal {
                    seqlen - d.s_q as i64 + i as i64 + 1
                } else {
                    seqlen
                };
                for h in 0..d.h_q {
                    let kv_head = h / (d.h_q / d.h_kv);
                    for c in 0..d.d_v {
                        let got = o[((b * d.s_q + i) * d.h_q + h) * d.d_v + c] as f64;
                        let (mut lo, mut hi) = (0.0f64, 0.0f64);
                        for p in 0..len.max(0) as usize {
                            let block = problem.table[b * d.max_blocks + p / d.block_size] as usize;
                            let slot = block * d.block_size + p % d.block_size;
                            let v = kv[(slot * d.h_kv + kv_head) * d.d_qk + c] as f64;
                            (lo, hi) = if p == 0 {
                                (v, v)
                            } else {
                                (lo.min(v), hi.max(v))
                            };
                        }
                        let slack = tol.atol + tol.rtol * lo.abs().max(hi.abs());
                        if !(got >= lo - slack && got <= hi + slack) {
                            return Err(format!("{dtype} {d:?}: o[b {b}, q {i}, h {h}, c {c}] = {got} outside [{lo}, {hi}] (len {len})"));
                        }
                    }
                }
            }
        }
        Ok(())
    });
}
