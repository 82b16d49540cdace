//! `mla_decode`: index check, split-KV decode, split combine (kernels/README.md,
//! mla_decode.cu), with `cache_seqlens` and `block_table` checked on the device into two
//! error flags, reported in that order (as `moemla_core::indices` does). The FP8 cache
//! (`fp8_ds_v32`) takes `moemla_mla_decode_fp8_*` with the same arguments.

use super::{at, flag_check, int, GpuRunner};
use crate::args::Arg;
use crate::device::{GpuBuffer, GpuDevice};
use crate::module::Module;
use moemla_core::calls::{MlaDecodeCall, MlaDecodeOutput};
use moemla_core::{DType, KvFormat, Op, Result};
use moemla_kernel_plan::mla::{self, MlaSizes};

const CALL: &str = "mla_decode";

/// Enqueues MLA decode; `o` [B, Sq, Hq, Dv] in the run dtype, `lse` [B, Hq, Sq] F32.
pub(super) fn run<D: GpuDevice>(
    g: &GpuRunner<D>,
    call: &MlaDecodeCall<'_>,
) -> Result<MlaDecodeOutput> {
    let op = Op::MlaDecode;
    let q = g.buffer(call.q, CALL, "q")?;
    let kv = g.buffer(call.kv_cache, CALL, "kv_cache")?;
    let table = g.buffer(call.block_table, CALL, "block_table")?;
    let seqlens = g.buffer(call.cache_seqlens, CALL, "cache_seqlens")?;
    g.dev.enter()?;
    let limits = g.dev.limits(op)?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let plan = mla::plan_with(&MlaSizes::of(call), call.dtype, fp8, &limits)
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
    let (batch, s_q, h_q, d_v) = (
        int("B", call.batch)?,
        int("Sq", call.s_q)?,
        int("Hq", call.h_q)?,
        int("Dv", call.d_v)?,
    );
    let (num_blocks, block_size, max_blocks) = (
        int("num_blocks", call.num_blocks)?,
        int("block_size", call.block_size)?,
        int("max_blocks", call.max_blocks)?,
    );
    let num_splits = int("num_splits", plan.num_splits)?;
    // The plan has checked max_blocks * block_size.
    let capacity = call.max_blocks.saturating_mul(call.block_size);

    let mut stream = g.lock();
    let ws = stream.workspace(&g.dev, plan.workspace.bytes)?;
    let flags = stream.flags.reserve(
        &g.dev,
        op,
        vec![
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
        ],
    )?;
    let w = plan.workspace;
    let [check_launch, decode, combine] = &plan.launches;
    let m = Module::MlaDecode;
    g.launch(
        m,
        check_launch,
        &[
            Arg::Ptr(table.address()),
            Arg::Ptr(seqlens.address()),
            batch,
            max_blocks,
            block_size,
            num_blocks,
            Arg::Ptr(flags[0]),
        ],
    )?;
    g.launch(
        m,
        decode,
        &[
            Arg::Ptr(q.address()),
            Arg::Ptr(kv.address()),
            Arg::Ptr(table.address()),
            Arg::Ptr(seqlens.address()),
            at(ws, w.o_part),
            at(ws, w.lse_part),
            batch,
            s_q,
            h_q,
            int("Hkv", call.h_kv)?,
            int("Dqk", call.d_qk)?,
            d_v,
            num_blocks,
            block_size,
            max_blocks,
            Arg::I32(i32::from(call.params.causal)),
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
