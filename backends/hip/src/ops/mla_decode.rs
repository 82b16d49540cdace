//! `mla_decode`: index check, split-KV decode, split combine (three launches of
//! kernels/cuda/mla_decode.cu), then the `cache_seqlens` and `block_table` error flags.

use super::plan_error;
use crate::args::KernelArgs;
use crate::{kernels, HipBackend};
use moemla_core::calls::MlaDecodeCall;
use moemla_core::{Backend, DType, DeviceTensor, Error, MlaDecodeOutput, Op, Result, Shape};
use moemla_kernel_plan::mla::{self, MlaSizes};

const CALL: &str = "mla_decode";

/// Runs `mla_decode`: o [B, Sq, Hq, Dv] in the run dtype, lse [B, Hq, Sq] F32.
pub(crate) fn run(b: &HipBackend, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    b.check_wavefront(Op::MlaDecode)?;
    let sizes = MlaSizes::of(call);
    let plan = mla::plan(&sizes, call.dtype, &b.limits()).map_err(plan_error)?;
    let o = b.alloc_zeroed(
        &Shape::new(vec![call.batch, call.s_q, call.h_q, call.d_v]),
        call.dtype,
    )?;
    let lse = b.alloc_zeroed(
        &Shape::new(vec![call.batch, call.h_q, call.s_q]),
        DType::F32,
    )?;
    let err = b.error_flags(plan.workspace.err)?;
    let o_part = b.workspace(plan.workspace.o_part, DType::F32)?;
    let lse_part = b.workspace(plan.workspace.lse_part, DType::F32)?;
    let ptr = |t: &DeviceTensor, arg| b.device_ptr(t, CALL, arg);
    let [check, decode, combine] = &plan.launches;
    let module = &kernels::MLA_DECODE;

    let mut args = KernelArgs::default();
    args.ptr(ptr(call.block_table, "block_table")?)
        .ptr(ptr(call.cache_seqlens, "cache_seqlens")?)
        .i32(call.batch as i32)
        .i32(call.max_blocks as i32)
        .i32(call.block_size as i32)
        .i32(call.num_blocks as i32)
        .ptr(ptr(&err, "err")?);
    b.launch(module, check, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(call.q, "q")?)
        .ptr(ptr(call.kv_cache, "kv_cache")?)
        .ptr(ptr(call.block_table, "block_table")?)
        .ptr(ptr(call.cache_seqlens, "cache_seqlens")?)
        .ptr(ptr(&o_part, "o_part")?)
        .ptr(ptr(&lse_part, "lse_part")?);
    for v in [
        call.batch,
        call.s_q,
        call.h_q,
        call.h_kv,
        call.d_qk,
        call.d_v,
        call.num_blocks,
        call.block_size,
        call.max_blocks,
    ] {
        args.i32(v as i32);
    }
    args.i32(call.params.causal as i32)
        .f32(call.params.softmax_scale as f32)
        .i32(plan.num_splits as i32)
        .i32(plan.block_q as i32)
        .i32(plan.block_n as i32);
    b.launch(module, decode, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(&o_part, "o_part")?)
        .ptr(ptr(&lse_part, "lse_part")?)
        .ptr(ptr(&o, "o")?)
        .ptr(ptr(&lse, "lse")?)
        .i32(call.batch as i32)
        .i32(call.s_q as i32)
        .i32(call.h_q as i32)
        .i32(call.d_v as i32)
        .i32(plan.num_splits as i32);
    b.launch(module, combine, &mut args)?;

    // Sequence lengths first, then block-table entries: the order of moemla_core::indices.
    let flags = b.download(&err)?.to_i32_vec()?;
    let capacity = call.max_blocks * call.block_size;
    if let Some((linear, value)) = b.flagged(flags[0], call.cache_seqlens, "moemla_mla_check")? {
        return Err(Error::index_out_of_range(
            Op::MlaDecode,
            "cache_seqlens",
            call.cache_seqlens.shape(),
            linear,
            value,
            format!("[0, {capacity}] (max_blocks * block_size)"),
        ));
    }
    if let Some((linear, value)) = b.flagged(flags[1], call.block_table, "moemla_mla_check")? {
        return Err(Error::index_out_of_range(
            Op::MlaDecode,
            "block_table",
            call.block_table.shape(),
            linear,
            value,
            format!("[0, {}) (num_blocks)", call.num_blocks),
        ));
    }
    Ok(MlaDecodeOutput { o, lse })
}
