//! `dsa_indexer_topk`: `mla_decode`'s index check (`moemla_mla_check`, the same rules, into
//! two error flags reported `cache_seqlens` first), the scores of every attended position
//! and the per-row top-k (kernels/README.md, dsa_indexer_topk.cu).

use super::{at, flag_check, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::module::Module;
use moemla_core::calls::DsaIndexerTopkCall;
use moemla_core::{DeviceTensor, Op, Result};
use moemla_kernel_plan::dsa_indexer::{self, IndexerSizes};

const CALL: &str = "dsa_indexer_topk";

/// Enqueues the indexer into `topk_indices` [B, Sq, top_k] I32 and `topk_scores` [B, Sq,
/// top_k] F32 (the caller's or fresh tensors). The device is current.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &DsaIndexerTopkCall<'_>,
    topk_indices: &DeviceTensor,
    topk_scores: &DeviceTensor,
) -> Result<()> {
    let op = Op::DsaIndexerTopk;
    let q = g.buffer(call.q, CALL, "q")?;
    let weights = g.buffer(call.weights, CALL, "weights")?;
    let k_cache = g.buffer(call.k_cache, CALL, "k_cache")?;
    let table = g.buffer(call.block_table, CALL, "block_table")?;
    let seqlens = g.buffer(call.cache_seqlens, CALL, "cache_seqlens")?;
    let indices = g.out_buffer(topk_indices, CALL, "topk_indices")?;
    let scores = g.out_buffer(topk_scores, CALL, "topk_scores")?;
    let limits = g.dev.limits(op)?;
    let plan = dsa_indexer::plan(&IndexerSizes::of(call), call.dtype, &limits)
        .map_err(|e| g.plan_error(e))?;
    let int = |what, v| g.int(op, what, v);
    let (batch, s_q, top_k) = (
        int("B", call.batch)?,
        int("Sq", call.s_q)?,
        int("top_k", call.params.top_k)?,
    );
    let (num_blocks, block_size, max_blocks, cap) = (
        int("num_blocks", call.num_blocks)?,
        int("block_size", call.block_size)?,
        int("max_blocks", call.max_blocks)?,
        int("max_blocks * block_size", plan.cap)?,
    );
    let causal = Arg::I32(i32::from(call.params.causal));
    let checks = vec![
        flag_check(
            "cache_seqlens",
            call.cache_seqlens,
            format!("[0, {}] (max_blocks * block_size)", plan.cap),
        ),
        flag_check(
            "block_table",
            call.block_table,
            format!("[0, {}) (num_blocks)", call.num_blocks),
        ),
    ];
    let (table, seqlens) = (Arg::Ptr(table.address()), Arg::Ptr(seqlens.address()));

    let mut stream = g.lock();
    let ws = stream.workspace(&g.dev, plan.workspace.bytes)?;
    let flags = stream.flags.reserve(&g.dev, op, checks)?;
    let w = plan.workspace;
    let [check, score, select] = &plan.launches;
    g.launch(
        Module::MlaDecode,
        check,
        &[
            table,
            seqlens,
            batch,
            max_blocks,
            block_size,
            num_blocks,
            Arg::Ptr(flags[0]),
        ],
    )?;
    g.launch(
        Module::DsaIndexerTopk,
        score,
        &[
            Arg::Ptr(q.address()),
            Arg::Ptr(weights.address()),
            Arg::Ptr(k_cache.address()),
            table,
            seqlens,
            at(ws, w.scores),
            s_q,
            int("Hi", call.h_i)?,
            int("Di", call.d_i)?,
            num_blocks,
            block_size,
            max_blocks,
            causal,
            cap,
        ],
    )?;
    g.launch(
        Module::DsaIndexerTopk,
        select,
        &[
            at(ws, w.scores),
            table,
            seqlens,
            at(ws, w.cand),
            int("candidate stride", plan.cand_stride)?,
            Arg::Ptr(indices.address()),
            Arg::Ptr(scores.address()),
            s_q,
            num_blocks,
            block_size,
            max_blocks,
            causal,
            cap,
            top_k,
        ],
    )?;
    drop(stream);
    Ok(())
}
