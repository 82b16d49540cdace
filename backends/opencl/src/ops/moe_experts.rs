//! `moe_experts`: plan (check, count, prefix sum, scatter), gate/up GEMM with SwiGLU,
//! down GEMM, weighted combine (kernels/opencl/moe_experts.cl).

use crate::device::{Arg, ClDevice, Module};
use crate::ops::{flags, int, need_work_group, pow2_at_most, NO_BAD_INDEX};
use crate::ClBuffer;
use moemla_core::calls::MoeExpertsCall;
use moemla_core::{Error, Op, Result};

/// Rows per GEMM block and columns per GEMM tile (`TILE` in the kernel source).
const TILE: usize = 16;

/// Runs the experts; returns `y` [T, H] in the run dtype. Ids outside [-1, E) are
/// reported as the contract's `IndexOutOfRange` (first bad element, row-major).
pub fn run(dev: &ClDevice, backend: &str, call: &MoeExpertsCall<'_>) -> Result<ClBuffer> {
    let (t, h, i, e, k) = (
        call.tokens,
        call.hidden,
        call.inter,
        call.experts,
        call.top_k,
    );
    let op = Op::MoeExperts;
    need_work_group(dev, op, TILE * TILE)?;
    let x = call.x.buffer::<ClBuffer>(backend, "moe_experts", "x")?;
    let w13 = call.w13.buffer::<ClBuffer>(backend, "moe_experts", "w13")?;
    let w2 = call.w2.buffer::<ClBuffer>(backend, "moe_experts", "w2")?;
    let ids = call
        .topk_ids
        .buffer::<ClBuffer>(backend, "moe_experts", "topk_ids")?;
    let weights = call
        .topk_weights
        .buffer::<ClBuffer>(backend, "moe_experts", "topk_weights")?;
    let program = dev.program(Module::MoeExperts, call.dtype)?;

    // Each expert's rows are padded to whole TILE-row blocks; every used block holds at
    // least one pair, so there are at most min(pairs, ceil(pairs / TILE) + E) of them.
    let pairs = t * k;
    let blocks = pairs.min(pairs.div_ceil(TILE) + e);
    let rows = blocks * TILE;
    let bad = flags(dev, 1)?;
    let block_expert = dev.alloc_zeroed(blocks * 4)?;
    let row_pair = dev.alloc_zeroed(rows * 4)?;
    let pair_row = dev.alloc_zeroed(pairs * 4)?;
    let act = dev.alloc_workspace(rows * i * 4)?;
    let down = dev.alloc_workspace(rows * h * 4)?;
    let y = dev.alloc_zeroed(t * h * call.dtype.size_in_bytes())?;
    let (h32, i32_, k32) = (int(op, "H", h)?, int(op, "I", i)?, int(op, "k", k)?);
    int(op, "rows * max(H, I)", rows * h.max(i))?;

    let ls = pow2_at_most(256, dev.facts.max_work_group);
    let plan = [
        Arg::Buf(ids),
        Arg::I32(int(op, "T * k", pairs)?),
        Arg::I32(int(op, "E", e)?),
        Arg::Buf(&bad),
        Arg::Buf(&block_expert),
        Arg::I32(int(op, "blocks", blocks)?),
        Arg::Buf(&row_pair),
        Arg::Buf(&pair_row),
        Arg::Local(e * 4),
        Arg::Local(e * 4),
    ];
    dev.launch(&program, "experts_plan", &plan, &[ls], &[ls])?;
    let gate_up = [
        Arg::Buf(x),
        Arg::Buf(w13),
        Arg::Buf(&row_pair),
        Arg::Buf(&block_expert),
        Arg::Buf(&act),
        Arg::I32(h32),
        Arg::I32(i32_),
        Arg::I32(k32),
    ];
    let tiles = |n: usize| n.div_ceil(TILE) * TILE;
    dev.launch(
        &program,
        "experts_gate_up",
        &gate_up,
        &[tiles(i), rows],
        &[TILE, TILE],
    )?;
    let down_args = [
        Arg::Buf(&act),
        Arg::Buf(w2),
        Arg::Buf(&block_expert),
        Arg::Buf(&down),
        Arg::I32(h32),
        Arg::I32(i32_),
    ];
    dev.launch(
        &program,
        "experts_down",
        &down_args,
        &[tiles(h), rows],
        &[TILE, TILE],
    )?;
    let combine = [
        Arg::Buf(&down),
        Arg::Buf(&pair_row),
        Arg::Buf(weights),
        Arg::Buf(&y),
        Arg::I32(h32),
        Arg::I32(k32),
    ];
    dev.launch(
        &program,
        "experts_combine",
        &combine,
        &[tiles(h), t],
        &[TILE, 1],
    )?;

    let first_bad = dev.read_i32(&bad, 0)?;
    if first_bad != NO_BAD_INDEX {
        let at = first_bad as usize;
        let value = dev.read_i32(ids, at)?;
        return Err(Error::index_out_of_range(
            op,
            "topk_ids",
            call.topk_ids.shape(),
            at,
            value as i64,
            format!("[-1, {e})"),
        ));
    }
    Ok(y)
}
