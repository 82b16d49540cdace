//! `moe_experts`: plan (check and count, offsets, scatter), gate/up GEMM with SwiGLU, down
//! GEMM, weighted combine (kernels/opencl/moe_experts.cl). Slots with id -1 or weight 0
//! are not computed; nothing is sized by E in local memory. FP8 weights, activation
//! quantization and the SwiGLU clamp (contract v2) run the GEMMs of
//! [`super::moe_experts_v2`] instead. Shared experts (v2) run two dense GEMMs over every
//! token (`experts_shared_gate_up`, `experts_shared_down`) that the combine adds with
//! weight 1 before it rounds `y` once.

use crate::device::{Arg, ClDevice, Module};
use crate::ops::{byte_len, int, int_product, need_len, need_local, need_work_group, pow2_at_most};
use crate::ClBuffer;
use moemla_core::calls::{MoeExpertsCall, SharedExperts};
use moemla_core::{DType, Op, Result};
use opencl3::program::Program;

/// Rows per GEMM block and columns per GEMM tile (`TILE` in the kernel source).
const TILE: usize = 16;

/// Enqueues the experts into `y` [T, H] (run dtype), whose every element the kernels write.
/// Ids outside [-1, E) are reported as the contract's `IndexOutOfRange` (first bad element,
/// row-major) by the next synchronize or download.
pub fn run(dev: &ClDevice, backend: &str, call: &MoeExpertsCall<'_>, y: &ClBuffer) -> Result<()> {
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

    // Each expert's rows are padded to whole TILE-row blocks; every used block holds at
    // least one pair, so there are at most min(pairs, ceil(pairs / TILE) + E) of them.
    let pairs32 = int_product(op, "T * k", &[t, k])?;
    let pairs = pairs32 as usize;
    let blocks = pairs.min(pairs.div_ceil(TILE) + e);
    // Kernel ints: row and column indices up to a tile past each size (products are size_t).
    let rows = int_product(op, "GEMM rows", &[blocks, TILE])? as usize;
    let (h32, i32_, k32, e32) = (
        int(op, "H", h)?,
        int(op, "I", i)?,
        int(op, "k", k)?,
        int(op, "E", e)?,
    );
    int(op, "T", t)?;
    let ls = pow2_at_most(256, dev.facts.max_work_group);
    need_local(dev, op, "the expert offsets scan", ls * 4)?;

    need_len(op, "y", y, byte_len(&[t, h], call.dtype)?)?;
    let counts = dev.alloc_zeroed("moe_experts counts", byte_len(&[e], DType::I32)?)?;
    let block_expert = dev.alloc_filled(
        "moe_experts blocks",
        byte_len(&[blocks], DType::I32)?,
        u32::MAX,
    )?;
    let row_pair =
        dev.alloc_filled("moe_experts rows", byte_len(&[rows], DType::I32)?, u32::MAX)?;
    let pair_row = dev.alloc_workspace("moe_experts pairs", byte_len(&[pairs], DType::I32)?)?;
    let act = dev.alloc_workspace("moe_experts activations", byte_len(&[rows, i], DType::F32)?)?;
    let down = dev.alloc_workspace(
        "moe_experts down projections",
        byte_len(&[rows, h], DType::F32)?,
    )?;
    let program = dev.program(Module::MoeExperts, call.dtype)?;
    let mut checks = dev.index_checks(op)?;
    let ids_flag = checks.flag("topk_ids", call.topk_ids, format!("[-1, {e})"))?;

    let per_pair = [pairs.div_ceil(ls) * ls];
    let count = [
        Arg::Buf(ids),
        Arg::Buf(weights),
        Arg::I32(pairs32),
        Arg::I32(e32),
        Arg::Buf(ids_flag.buffer()),
        Arg::I32(ids_flag.slot()),
        Arg::Buf(&counts),
        Arg::Buf(&pair_row),
    ];
    dev.launch(&program, "experts_count", &count, &per_pair, &[ls])?;
    let offsets = [
        Arg::Buf(&counts),
        Arg::I32(e32),
        Arg::Buf(&block_expert),
        Arg::Local(ls * 4),
    ];
    dev.launch(&program, "experts_offsets", &offsets, &[ls], &[ls])?;
    let scatter = [
        Arg::Buf(ids),
        Arg::Buf(weights),
        Arg::I32(pairs32),
        Arg::I32(e32),
        Arg::Buf(&counts),
        Arg::Buf(&row_pair),
        Arg::Buf(&pair_row),
    ];
    dev.launch(&program, "experts_scatter", &scatter, &per_pair, &[ls])?;
    let tiles = |n: usize| n.div_ceil(TILE) * TILE;
    if super::moe_experts_v2::needed(call) {
        let plan = super::moe_experts_v2::Plan {
            row_pair: &row_pair,
            block_expert: &block_expert,
            act: &act,
            down: &down,
            rows,
        };
        super::moe_experts_v2::gemms(dev, backend, call, &plan)?;
    } else {
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
    }
    let shared = match call.shared {
        Some(s) => Some(shared_experts(dev, backend, call, s, &program)?),
        None => None,
    };
    // Without shared experts the combine reads none (S = 0) of its `shared` argument.
    let (shared_out, s32) = match &shared {
        Some((out, s32)) => (out, *s32),
        None => (&down, 0),
    };
    let combine = [
        Arg::Buf(&down),
        Arg::Buf(&pair_row),
        Arg::Buf(weights),
        Arg::Buf(shared_out),
        Arg::Buf(y),
        Arg::I32(int(op, "T", t)?),
        Arg::I32(h32),
        Arg::I32(k32),
        Arg::I32(s32),
    ];
    dev.launch(
        &program,
        "experts_combine",
        &combine,
        &[tiles(h), t],
        &[TILE, 1],
    )?;

    checks.enqueued()
}

/// Enqueues the shared experts' GEMMs over every token; returns their outputs, f32
/// [S, T, H], and S as a kernel int.
fn shared_experts(
    dev: &ClDevice,
    backend: &str,
    call: &MoeExpertsCall<'_>,
    s: SharedExperts<'_>,
    program: &Program,
) -> Result<(ClBuffer, i32)> {
    let op = Op::MoeExperts;
    let (t, h) = (call.tokens, call.hidden);
    let x = call.x.buffer::<ClBuffer>(backend, "moe_experts", "x")?;
    let sw13 = s
        .w13
        .buffer::<ClBuffer>(backend, "moe_experts", "shared_w13")?;
    let sw2 =
        s.w2.buffer::<ClBuffer>(backend, "moe_experts", "shared_w2")?;
    let tiles = |n: usize| n.div_ceil(TILE) * TILE;
    // Kernel ints: the row blocks of all shared experts, and the sizes.
    let rows = int_product(op, "S * ceil(T / 16) * 16", &[s.count, tiles(t)])? as usize;
    let (t32, h32, is32) = (int(op, "T", t)?, int(op, "H", h)?, int(op, "Is", s.inter)?);
    let s32 = int(op, "S", s.count)?;
    let act = dev.alloc_workspace(
        "moe_experts shared activations",
        byte_len(&[s.count, t, s.inter], DType::F32)?,
    )?;
    let out = dev.alloc_workspace(
        "moe_experts shared outputs",
        byte_len(&[s.count, t, h], DType::F32)?,
    )?;
    let limit = call.params.swiglu_limit;
    let gate_up = [
        Arg::Buf(x),
        Arg::Buf(sw13),
        Arg::Buf(&act),
        Arg::I32(t32),
        Arg::I32(h32),
        Arg::I32(is32),
        Arg::I32(limit.is_some() as i32),
        Arg::F32(limit.map_or(0.0, |c| c as f32)),
    ];
    dev.launch(
        program,
        "experts_shared_gate_up",
        &gate_up,
        &[tiles(s.inter), rows],
        &[TILE, TILE],
    )?;
    let down = [
        Arg::Buf(&act),
        Arg::Buf(sw2),
        Arg::Buf(&out),
        Arg::I32(t32),
        Arg::I32(h32),
        Arg::I32(is32),
    ];
    dev.launch(
        program,
        "experts_shared_down",
        &down,
        &[tiles(h), rows],
        &[TILE, TILE],
    )?;
    Ok((out, s32))
}
