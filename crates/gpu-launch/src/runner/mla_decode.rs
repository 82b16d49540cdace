//! `mla_decode`: index check, split-KV decode, split combine (kernels/README.md,
//! mla_decode.cu), with `cache_seqlens` and `block_table` checked on the device into two
//! error flags, reported in that order (as `moemla_core::indices` does). The FP8 cache
//! (`fp8_ds_v32`) takes `moemla_mla_decode_fp8_*` with the same arguments.

use super::{flag_check, split_k, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use moemla_core::calls::MlaDecodeCall;
use moemla_core::{DeviceTensor, KvFormat, Op, Result};
use moemla_kernel_plan::mla::{self, MlaSizes};

const CALL: &str = "mla_decode";

/// Enqueues MLA decode into `o` [B, Sq, Hq, Dv] in the run dtype and `lse` [B, Hq, Sq]
/// F32 (the caller's or fresh tensors). The device is current.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MlaDecodeCall<'_>,
    o: &DeviceTensor,
    lse: &DeviceTensor,
) -> Result<()> {
    let op = Op::MlaDecode;
    let q = g.buffer(call.q, CALL, "q")?;
    let kv = g.buffer(call.kv_cache, CALL, "kv_cache")?;
    let table = g.buffer(call.block_table, CALL, "block_table")?;
    let seqlens = g.buffer(call.cache_seqlens, CALL, "cache_seqlens")?;
    let outs = [g.out_buffer(o, CALL, "o")?, g.out_buffer(lse, CALL, "lse")?];
    let limits = g.dev.limits(op)?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let plan = mla::plan_with(&MlaSizes::of(call), call.dtype, fp8, &limits)
        .map_err(|e| g.plan_error(e))?;
    let int = |what, v| g.int(op, what, v);
    // The plan has checked max_blocks * block_size.
    let capacity = call.max_blocks.saturating_mul(call.block_size);
    let checks = vec![
        flag_check(
            "cache_seqlens",
            call.cache_seqlens,
            format!("[0, {capacity}] (max_blocks * block_size)"),
        ),
        flag_check(
            "block_table",
            call.block_table,
            format!("[0, {}) (num_blocks)", call.num_blocks),
        ),
    ];
    let dims = [call.batch, call.s_q, call.h_q, call.d_v];
    split_k::run(g, op, dims, &plan, checks, outs, |s| {
        let (num_blocks, block_size, max_blocks) = (
            int("num_blocks", call.num_blocks)?,
            int("block_size", call.block_size)?,
            int("max_blocks", call.max_blocks)?,
        );
        let (table, seqlens) = (Arg::Ptr(table.address()), Arg::Ptr(seqlens.address()));
        Ok(split_k::OpArgs {
            check: vec![table, seqlens, s.batch, max_blocks, block_size, num_blocks],
            decode_inputs: [
                Arg::Ptr(q.address()),
                Arg::Ptr(kv.address()),
                table,
                seqlens,
            ],
            decode_sizes: vec![
                s.batch,
                s.s_q,
                s.h_q,
                int("Hkv", call.h_kv)?,
                int("Dqk", call.d_qk)?,
                s.d_v,
                num_blocks,
                block_size,
                max_blocks,
                Arg::I32(i32::from(call.params.causal)),
                Arg::F32(call.params.softmax_scale as f32),
            ],
            combine_inputs: vec![],
        })
    })
}
