//! `dsa_indexer_topk`: scores of every attended position (kernels/opencl/dsa_indexer_topk.cl),
//! the top k of each query row by `moe_route`'s radix select, compaction and ordering
//! kernels (kernels/opencl/moe_route.cl: O(L + top_k) per row, not a sort), then the flat
//! slots and scores. Bad `cache_seqlens` / `block_table` entries are index errors reported
//! at the next synchronize or download (seqlens first).

use crate::device::{Arg, ClDevice, Module};
use crate::ops::moe_route::{select_sorted, STATE};
use crate::ops::{byte_len, int, int_product, need_len, need_local, pow2_at_most};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::DsaIndexerTopkCall;
use moemla_core::{DType, Op, Result};

/// Work-group of `indexer_scores` and `indexer_write` (positions / slots per group).
const LS: usize = 64;

/// Enqueues the indexer into `indices` and `scores` (both [B, Sq, top_k]: I32, F32; the
/// caller's tensors or new ones).
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &DsaIndexerTopkCall<'_>,
    indices: &ClBuffer,
    scores: &ClBuffer,
) -> Result<()> {
    let op = Op::DsaIndexerTopk;
    let name = "dsa_indexer_topk";
    let (b, s_q, top_k) = (call.batch, call.s_q, call.params.top_k);
    let q = call.q.buffer::<ClBuffer>(backend, name, "q")?;
    let weights = call.weights.buffer::<ClBuffer>(backend, name, "weights")?;
    let k_cache = call.k_cache.buffer::<ClBuffer>(backend, name, "k_cache")?;
    let table = call
        .block_table
        .buffer::<ClBuffer>(backend, name, "block_table")?;
    let seqlens = call
        .cache_seqlens
        .buffer::<ClBuffer>(backend, name, "cache_seqlens")?;
    let rows = b * s_q; // B * Sq * Hi fits an int (checked next), so this does too
    int_product(op, "B * Sq * Hi", &[b, s_q, call.h_i])?;
    int_product(op, "B * max_blocks", &[b, call.max_blocks])?;
    let cap = call.max_blocks * call.block_size;
    let cap32 = int_product(
        op,
        "max_blocks * block_size",
        &[call.max_blocks, call.block_size],
    )?;
    int(op, "max_blocks * block_size + work-group", cap + LS)?;
    int_product(
        op,
        "num_blocks * block_size",
        &[call.num_blocks, call.block_size],
    )?;
    let k_sel = top_k.min(cap);
    let out_len = |dtype| byte_len(&[b, s_q, top_k], dtype);
    need_len(op, "topk_indices", indices, out_len(DType::I32)?)?;
    need_len(op, "topk_scores", scores, out_len(DType::F32)?)?;
    int_product(op, "2 * top_k", &[2, top_k])?;
    let ls = pow2_at_most(64, dev.facts.max_work_group);
    need_local(dev, op, "the radix sort's scan", ls * 64)?;
    need_local(dev, op, "the select's histogram", 256 * 4)?;

    let score_ws = dev.alloc_workspace(
        "dsa_indexer_topk scores",
        byte_len(&[rows, cap], DType::F32)?,
    )?;
    let keys = dev.alloc_workspace("dsa_indexer_topk keys", byte_len(&[rows, cap], DType::I32)?)?;
    let pairs = dev.alloc_workspace(
        "dsa_indexer_topk pairs",
        byte_len(&[rows, 2 * k_sel, 2], DType::I32)?,
    )?;
    let state = dev.alloc_workspace(
        "dsa_indexer_topk state",
        byte_len(&[rows, STATE], DType::I32)?,
    )?;
    let program = program(dev, Kernels::DsaIndexerTopk, call.dtype)?;
    let select = dev.program(Module::MoeRoute, DType::F32)?;

    let mut checks = dev.index_checks(op)?;
    let seq_flag = checks.flag(
        "cache_seqlens",
        call.cache_seqlens,
        format!("[0, {cap}] (max_blocks * block_size)"),
    )?;
    let table_flag = checks.flag(
        "block_table",
        call.block_table,
        format!("[0, {}) (num_blocks)", call.num_blocks),
    )?;
    let score_args = [
        Arg::Buf(q),
        Arg::Buf(weights),
        Arg::Buf(k_cache),
        Arg::Buf(table),
        Arg::Buf(seqlens),
        Arg::Buf(seq_flag.buffer()),
        Arg::I32(seq_flag.slot()),
        Arg::Buf(table_flag.buffer()),
        Arg::I32(table_flag.slot()),
        Arg::I32(int(op, "Sq", s_q)?),
        Arg::I32(int(op, "Hi", call.h_i)?),
        Arg::I32(int(op, "Di", call.d_i)?),
        Arg::I32(int(op, "num_blocks", call.num_blocks)?),
        Arg::I32(int(op, "block_size", call.block_size)?),
        Arg::I32(int(op, "max_blocks", call.max_blocks)?),
        Arg::I32(call.params.causal as i32),
        Arg::I32(cap32),
        Arg::Buf(&score_ws),
        Arg::Buf(&keys),
    ];
    let across = |n: usize| n.div_ceil(LS) * LS;
    dev.launch(
        &program,
        "indexer_scores",
        &score_args,
        &[across(cap), rows],
        &[LS, 1],
    )?;

    // Top k_sel of each row's cap keys, best first (moe_route.cl's kernels, one work-group
    // of ls per row).
    let k32 = int(op, "top_k", k_sel)?;
    let sorted_at = if k_sel == 0 {
        0
    } else {
        select_sorted(dev, &select, ls, rows, &keys, cap32, k32, &state, &pairs)?
    };
    let write_args = [
        Arg::Buf(&pairs),
        Arg::I32(k32),
        Arg::I32(sorted_at),
        Arg::Buf(&score_ws),
        Arg::I32(cap32),
        Arg::Buf(table),
        Arg::I32(int(op, "max_blocks", call.max_blocks)?),
        Arg::I32(int(op, "block_size", call.block_size)?),
        Arg::I32(int(op, "Sq", s_q)?),
        Arg::I32(int(op, "top_k", top_k)?),
        Arg::Buf(indices),
        Arg::Buf(scores),
    ];
    dev.launch(
        &program,
        "indexer_write",
        &write_args,
        &[across(top_k), rows],
        &[LS, 1],
    )?;
    checks.enqueued()
}
