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
    let err = b.error_flags(2)?;
    let o_part = b.workspace(plan.workspace.o_part.bytes)?;
    let lse_part = b.workspace(plan.workspace.lse_part.bytes)?;
    let int = |what, v| b.int(Op::MlaDecode, what, v);
    let ptr = |t: &DeviceTensor, arg| b.device_ptr(t, CALL, arg);
    let [check, decode, combine] = &plan.launches;
    let module = &kernels::MLA_DECODE;

    let mut args = KernelArgs::default();
    args.ptr(ptr(call.block_table, "block_table")?)
        .ptr(ptr(call.cache_seqlens, "cache_seqlens")?)
        .i32(int("B", call.batch)?)
        .i32(int("max_blocks", call.max_blocks)?)
        .i32(int("block_size", call.block_size)?)
        .i32(int("num_blocks", call.num_blocks)?)
        .ptr(ptr(&err, "err")?);
    b.launch(module, check, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(call.q, "q")?)
        .ptr(ptr(call.kv_cache, "kv_cache")?)
        .ptr(ptr(call.block_table, "block_table")?)
        .ptr(ptr(call.cache_seqlens, "cache_seqlens")?)
        .ptr(ptr(&o_part, "o_part")?)
        .ptr(ptr(&lse_part, "lse_part")?);
    for (what, v) in [
        ("B", call.batch),
        ("Sq", call.s_q),
        ("Hq", call.h_q),
        ("Hkv", call.h_kv),
        ("Dqk", call.d_qk),
        ("Dv", call.d_v),
        ("num_blocks", call.num_blocks),
        ("block_size", call.block_size),
        ("max_blocks", call.max_blocks),
    ] {
        args.i32(int(what, v)?);
    }
    args.i32(i32::from(call.params.causal))
        .f32(call.params.softmax_scale as f32)
        .i32(int("num_splits", plan.num_splits)?)
        .i32(int("block_q", plan.block_q)?)
        .i32(int("block_n", plan.block_n)?);
    b.launch(module, decode, &mut args)?;

    let mut args = KernelArgs::default();
    args.ptr(ptr(&o_part, "o_part")?)
        .ptr(ptr(&lse_part, "lse_part")?)
        .ptr(ptr(&o, "o")?)
        .ptr(ptr(&lse, "lse")?)
        .i32(int("B", call.batch)?)
        .i32(int("Sq", call.s_q)?)
        .i32(int("Hq", call.h_q)?)
        .i32(int("Dv", call.d_v)?)
        .i32(int("num_splits", plan.num_splits)?);
    b.launch(module, combine, &mut args)?;

    // Sequence lengths first, then block-table entries: the order of moemla_core::indices.
    let flags = b.read_flags(&err)?;
    let capacity = call.max_blocks * call.block_size;
    if let Some((linear, value)) = flags[0] {
        return Err(Error::index_out_of_range(
            Op::MlaDecode,
            "cache_seqlens",
            call.cache_seqlens.shape(),
            linear,
            value,
            format!("[0, {capacity}] (max_blocks * block_size)"),
        ));
    }
    if let Some((linear, value)) = flags[1] {
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
