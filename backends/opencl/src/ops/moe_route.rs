//! `moe_route`: a pipeline of small kernels, one work-group per token
//! (kernels/opencl/moe_route.cl). Per-expert state lives in global scratch, so local memory
//! does not grow with E or n_group; tokens run in batches whose scratch fits
//! [`SCRATCH_BUDGET`]. Hash routing (contract v2) is [`super::moe_route_hash`].

use crate::device::{Arg, ClDevice, Module};
use crate::ops::{byte_len, int, int_product, need_len, need_local, pow2_at_most};
use crate::ClBuffer;
use moemla_core::calls::MoeRouteCall;
use moemla_core::{DType, Error, GroupSelect, Op, Result, ScoreFunc};
use opencl3::program::Program;

/// Scratch bytes per batch of tokens the batching aims at (more when one token needs more).
const SCRATCH_BUDGET: usize = 64 << 20;
/// The largest top_k ordered by rank (`route_rank`, O(top_k^2)); larger ones by radix sort.
const RANK_SORT_MAX: usize = 128;
/// Words of the per-token state record (`STATE` in the kernel source).
pub(super) const STATE: usize = 8;

/// The kernels' `score_func` code (moe_route.cl, moe_route_hash.cl).
pub(super) fn score_func_code(f: ScoreFunc) -> i32 {
    match f {
        ScoreFunc::Sigmoid => 0,
        ScoreFunc::Softmax => 1,
        ScoreFunc::Sqrtsoftplus => 2,
    }
}

/// Enqueues the routing into `ids` (`topk_ids` [T, k] I32) and `weights` (`topk_weights`
/// [T, k] F32), whose every element the kernels write.
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &MoeRouteCall<'_>,
    ids: &ClBuffer,
    weights: &ClBuffer,
) -> Result<()> {
    let op = Op::MoeRoute;
    let p = call.params;
    let (t, e, k) = (call.tokens, call.experts, p.top_k);
    let (ids_bytes, weights_bytes) = (
        byte_len(&[t, k], DType::I32)?,
        byte_len(&[t, k], DType::F32)?,
    );
    need_len(op, "topk_ids", ids, ids_bytes)?;
    need_len(op, "topk_weights", weights, weights_bytes)?;
    if let Some(hash) = call.hash {
        return super::moe_route_hash::run(dev, backend, call, hash, ids, weights);
    }
    let score_func = score_func_code(p.score_func);
    let logits = call
        .logits
        .buffer::<ClBuffer>(backend, "moe_route", "logits")?;
    let bias = match call.bias {
        Some(b) => Some(b.buffer::<ClBuffer>(backend, "moe_route", "bias")?),
        None => None,
    };
    // Kernel ints: the sizes, and the pairs of one token (the kernels index with size_t).
    int(op, "T", t)?;
    let (e32, k32) = (int(op, "E", e)?, int(op, "top_k", k)?);
    let (g32, kg32) = (
        int(op, "n_group", p.n_group)?,
        int(op, "topk_group", p.topk_group)?,
    );
    int_product(op, "2 * top_k", &[2, k])?;
    // One work-group size for every E: PoCL compiles a kernel per work-group size.
    let ls = pow2_at_most(64, dev.facts.max_work_group);
    need_local(dev, op, "the radix sort's scan", ls * 64)?;
    need_local(dev, op, "the select's histogram", 256 * 4)?;

    // Scratch per token: keys [E], group keys [n_group], pairs [2 * top_k], state.
    let grouped = p.topk_group < p.n_group;
    let per_token = [
        byte_len(&[e], DType::I32)?,
        byte_len(&[if grouped { p.n_group } else { 1 }], DType::I32)?,
        byte_len(&[2 * k, 2], DType::I32)?,
        STATE * 4,
    ];
    let largest = per_token.iter().copied().max().unwrap_or(1);
    let max_alloc = usize::try_from(dev.facts.max_alloc).unwrap_or(usize::MAX);
    if largest > max_alloc {
        return Err(Error::Unsupported {
            backend: backend.to_string(),
            op,
            what: format!("E = {e}, top_k = {k}"),
            reason: format!(
                "one token's selection scratch ({largest} bytes) exceeds the device's \
                 largest buffer ({max_alloc} bytes)"
            ),
        });
    }
    let total = per_token.iter().fold(0usize, |a, &b| a.saturating_add(b));
    // batch * any per-token size <= max_alloc: the products below cannot overflow.
    let batch = (SCRATCH_BUDGET / total)
        .min(max_alloc / largest)
        .clamp(1, t);
    let scratch = Scratch {
        keys: dev.alloc_workspace("moe_route keys", batch * per_token[0])?,
        group_keys: dev.alloc_workspace("moe_route group keys", batch * per_token[1])?,
        pairs: dev.alloc_workspace("moe_route pairs", batch * per_token[2])?,
        state: dev.alloc_workspace("moe_route state", batch * per_token[3])?,
    };
    let program = dev.program(Module::MoeRoute, call.logits.dtype())?;
    let launch =
        |name: &str, args: &[Arg<'_>], n: usize| dev.launch(&program, name, args, &[n * ls], &[ls]);
    let mut t0 = 0;
    while t0 < t {
        let n = batch.min(t - t0);
        let t0_32 = int(op, "token offset", t0)?;
        let s = &scratch;
        launch(
            "route_keys",
            &[
                Arg::Buf(logits),
                Arg::Buf(bias.unwrap_or(logits)), // never read when has_bias = 0
                Arg::I32(bias.is_some() as i32),
                Arg::I32(t0_32),
                Arg::I32(e32),
                Arg::I32(score_func),
                Arg::Buf(&s.keys),
                Arg::Buf(&s.state),
                Arg::Local(ls * 4),
            ],
            n,
        )?;
        if grouped {
            let group_select = match p.group_select {
                GroupSelect::Max => 0,
                GroupSelect::Top2Sum => 1,
            };
            let args = [
                Arg::Buf(&s.keys),
                Arg::I32(e32),
                Arg::I32(g32),
                Arg::I32(group_select),
                Arg::Buf(&s.group_keys),
            ];
            launch("route_groups", &args, n)?;
            select(dev, &program, ls, n, &s.group_keys, g32, kg32, &s.state)?;
            let args = [
                Arg::Buf(&s.keys),
                Arg::Buf(&s.group_keys),
                Arg::I32(e32),
                Arg::I32(g32),
                Arg::Buf(&s.state),
            ];
            launch("route_mask", &args, n)?;
        }
        let sorted_at = select_sorted(dev, &program, ls, n, &s.keys, e32, k32, &s.state, &s.pairs)?;
        let args = [
            Arg::Buf(logits),
            Arg::I32(t0_32),
            Arg::I32(e32),
            Arg::I32(score_func),
            Arg::I32(k32),
            Arg::I32(sorted_at),
            Arg::Buf(&s.pairs),
            Arg::Buf(&s.state),
            Arg::I32(p.renormalize as i32),
            Arg::F32(p.routed_scaling_factor as f32),
            Arg::Buf(ids),
            Arg::Buf(weights),
            Arg::Local(4),
        ];
        launch("route_weights", &args, n)?;
        t0 += n;
    }
    Ok(())
}

/// The global scratch of one batch of tokens.
struct Scratch {
    keys: ClBuffer,
    group_keys: ClBuffer,
    pairs: ClBuffer,
    state: ClBuffer,
}

/// The top `k32` (a kernel int, >= 0) of each of `rows` rows' `n` keys as (key, position)
/// pairs, best first:
/// [`select`], then `route_compact` into `pairs`, then by rank into pairs[k, 2k), or 8
/// radix passes ending in pairs[0, k). Returns where the sorted pairs start (k or 0).
#[allow(clippy::too_many_arguments)]
pub(super) fn select_sorted(
    dev: &ClDevice,
    program: &Program,
    ls: usize,
    rows: usize,
    keys: &ClBuffer,
    n: i32,
    k32: i32,
    state: &ClBuffer,
    pairs: &ClBuffer,
) -> Result<i32> {
    select(dev, program, ls, rows, keys, n, k32, state)?;
    let global = [rows * ls];
    let launch = |name: &str, args: &[Arg<'_>]| dev.launch(program, name, args, &global, &[ls]);
    let args = [
        Arg::Buf(keys),
        Arg::I32(n),
        Arg::I32(k32),
        Arg::Buf(state),
        Arg::Buf(pairs),
        Arg::Local(ls * 4),
    ];
    launch("route_compact", &args)?;
    if k32 as usize <= RANK_SORT_MAX {
        launch("route_rank", &[Arg::I32(k32), Arg::Buf(pairs)])?;
        return Ok(k32);
    }
    for pass in 0..8 {
        let (src, dst) = if pass % 2 == 0 { (0, k32) } else { (k32, 0) };
        let args = [
            Arg::I32(k32),
            Arg::I32(4 * pass),
            Arg::I32(src),
            Arg::I32(dst),
            Arg::Buf(pairs),
            Arg::Local(ls * 64),
        ];
        launch("route_radix", &args)?;
    }
    Ok(0)
}

/// Selects the top `k` of each token's `n` keys: four digit passes, then the cut; the
/// threshold lands in the tokens' state records.
#[allow(clippy::too_many_arguments)]
fn select(
    dev: &ClDevice,
    program: &Program,
    ls: usize,
    tokens: usize,
    keys: &ClBuffer,
    n: i32,
    k: i32,
    state: &ClBuffer,
) -> Result<()> {
    let global = [tokens * ls];
    for shift in [24, 16, 8, 0] {
        let args = [
            Arg::Buf(keys),
            Arg::I32(n),
            Arg::I32(k),
            Arg::I32(shift),
            Arg::Buf(state),
            Arg::Local(256 * 4),
        ];
        dev.launch(program, "route_select_pass", &args, &global, &[ls])?;
    }
    let args = [
        Arg::Buf(keys),
        Arg::I32(n),
        Arg::Buf(state),
        Arg::Local(ls * 4),
    ];
    dev.launch(program, "route_select_cut", &args, &global, &[ls])
}
