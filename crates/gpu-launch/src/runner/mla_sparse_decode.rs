//! `mla_sparse_decode`: index check, split-K decode over each query's listed slots, split
//! combine with the attention sink (kernels/README.md, mla_decode.cu), with `topk_length`
//! and `indices` checked on the device into two error flags, reported in that order (as
//! `moemla_core::indices::check_sparse_indices` does). The FP8 cache (`fp8_ds_v32`) takes
//! `moemla_mla_sparse_decode_fp8_*` with the same arguments.

use super::{flag_check, split_k, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::flags::{FlagCheck, FlagKind};
use moemla_core::calls::MlaSparseDecodeCall;
use moemla_core::{DeviceTensor, KvFormat, Op, Result, Shape};
use moemla_kernel_plan::mla_sparse::{self, SparseSizes};

const CALL: &str = "mla_sparse_decode";

/// Enqueues sparse MLA decode into `o` [B, Sq, Hq, Dv] in the run dtype and `lse`
/// [B, Hq, Sq] F32 (the caller's or fresh tensors). The device is current.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MlaSparseDecodeCall<'_>,
    o: &DeviceTensor,
    lse: &DeviceTensor,
) -> Result<()> {
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
    let outs = [g.out_buffer(o, CALL, "o")?, g.out_buffer(lse, CALL, "lse")?];
    let limits = g.dev.limits(op)?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let plan = mla_sparse::plan(&SparseSizes::of(call), call.dtype, fp8, &limits)
        .map_err(|e| g.plan_error(e))?;
    let int = |what, v| g.int(op, what, v);
    // The plan has checked num_blocks * block_size.
    let slots = call.num_blocks.saturating_mul(call.block_size);
    let checks = vec![
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
    ];
    let dims = [call.batch, call.s_q, call.h_q, call.d_v];
    split_k::run(g, op, dims, &plan, checks, outs, |s| {
        let topk = int("topk", call.topk)?;
        let (indices, lens) = (Arg::Ptr(indices.address()), Arg::Ptr(lens));
        Ok(split_k::OpArgs {
            check: vec![
                indices,
                lens,
                s.batch,
                s.s_q,
                topk,
                int("num_blocks * block_size", slots)?,
            ],
            decode_inputs: [Arg::Ptr(q.address()), Arg::Ptr(kv.address()), indices, lens],
            decode_sizes: vec![
                s.batch,
                s.s_q,
                s.h_q,
                int("Dqk", call.d_qk)?,
                s.d_v,
                int("num_blocks", call.num_blocks)?,
                int("block_size", call.block_size)?,
                topk,
                Arg::F32(call.params.softmax_scale as f32),
            ],
            combine_inputs: vec![Arg::Ptr(sink)],
        })
    })
}
