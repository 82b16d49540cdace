//! `mla_sparse_decode`: index check, split-K decode over each query's listed slots, split
//! combine with the attention sink (kernels/README.md, mla_decode.cu), with `topk_length`
//! and `indices` checked on the device into two error flags, reported in that order (as
//! `moemla_core::indices::check_sparse_indices` does). The FP8 cache (`fp8_ds_v32`) takes
//! `moemla_mla_sparse_decode_fp8_*` with the same arguments.

use super::{at, flag_check, int, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::flags::{FlagCheck, FlagKind};
use crate::module::Module;
use moemla_core::calls::{MlaDecodeOutput, MlaSparseDecodeCall};
use moemla_core::{DType, KvFormat, Op, Result, Shape};
use moemla_kernel_plan::mla_sparse::{self, SparseSizes};

const CALL: &str = "mla_sparse_decode";

/// Enqueues sparse MLA decode; `o` [B, Sq, Hq, Dv] in the run dtype, `lse` [B, Hq, Sq] F32.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MlaSparseDecodeCall<'_>,
) -> Result<MlaDecodeOutput> {
    let op = Op::MlaSparseDecode;
    let q = g.buffer(call.q, CALL, "q")?;
    let kv = g.buffer(call.kv_cache, CALL, "kv_cache")?;
    let indices = g.buffer(call.indices, CALL, "indices")?;
    // Absent optional tensors are null pointers (the kernels' "none").
    let lens = match call.topk_length {
        Some(t) => g.buffer(t, CALL, "topk_length")?.address(),
        None => 0,
    };
    let sink = match call.attn_sink {
        Some(t) => g.buffer(t, CALL, "attn_sink")?.address(),
        None => 0,
    };
    g.dev.enter()?;
    let limits = g.dev.limits(op)?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let plan = mla_sparse::plan(&SparseSizes::of(call), call.dtype, fp8, &limits)
        .map_err(|e| g.plan_error(e))?;
    let (o, o_shape) = g.output(
        &[call.batch, call.s_q, call.h_q, call.d_v],
        call.dtype,
        plan.o_bytes,
    )?;
    let (lse, lse_shape) = g.output(
        &[call.batch, call.h_q, call.s_q],
        DType::F32,
        plan.lse_bytes,
    )?;
    let int = |what, v| int::<D>(op, what, v);
    let (batch, s_q, h_q, d_v, topk) = (
        int("B", call.batch)?,
        int("Sq", call.s_q)?,
        int("Hq", call.h_q)?,
        int("Dv", call.d_v)?,
        int("topk", call.topk)?,
    );
    let num_splits = int("num_splits", plan.num_splits)?;
    // The plan has checked num_blocks * block_size.
    let slots = call.num_blocks.saturating_mul(call.block_size);

    let mut stream = g.lock();
    let ws = stream.workspace(&g.dev, plan.workspace.bytes)?;
    let flags = stream.flags.reserve(
        &g.dev,
        op,
        vec![
            FlagCheck {
                arg: "topk_length",
                shape: Shape::new(vec![call.batch]),
                valid: format!("[0, {}] (topk)", call.topk),
                kind: FlagKind::Range,
            },
            flag_check(
                "indices",
                call.indices,
                format!("-1 or [0, {slots}) (num_blocks * block_size)"),
            ),
        ],
    )?;
    let w = plan.workspace;
    let [check_launch, decode, combine] = &plan.launches;
    let m = Module::MlaDecode;
    g.launch(
        m,
        check_launch,
        &[
            Arg::Ptr(indices.address()),
            Arg::Ptr(lens),
            batch,
            s_q,
            topk,
            int("num_blocks * block_size", slots)?,
            Arg::Ptr(flags[0]),
        ],
    )?;
    g.launch(
        m,
        decode,
        &[
            Arg::Ptr(q.address()),
            Arg::Ptr(kv.address()),
            Arg::Ptr(indices.address()),
            Arg::Ptr(lens),
            at(ws, w.o_part),
            at(ws, w.lse_part),
            batch,
            s_q,
            h_q,
            int("Dqk", call.d_qk)?,
            d_v,
            int("num_blocks", call.num_blocks)?,
            int("block_size", call.block_size)?,
            topk,
            Arg::F32(call.params.softmax_scale as f32),
            num_splits,
            int("block_q", plan.block_q)?,
            int("block_n", plan.block_n)?,
        ],
    )?;
    g.launch(
        m,
        combine,
        &[
            at(ws, w.o_part),
            at(ws, w.lse_part),
            Arg::Ptr(sink),
            Arg::Ptr(o.address()),
            Arg::Ptr(lse.address()),
            batch,
            s_q,
            h_q,
            d_v,
            num_splits,
        ],
    )?;
    drop(stream);
    Ok(MlaDecodeOutput {
        o: g.tensor(o, o_shape, call.dtype),
        lse: g.tensor(lse, lse_shape, DType::F32),
    })
}
