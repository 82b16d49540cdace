//! `mla_decode`: index check, split-KV decode, split combine (three launches).

use super::{buf, int_arg, read_flags, OrCore};
use crate::error::DriverContext;
use crate::nvrtc::Module;
use crate::CudaBackend;
use cudarc::driver::PushKernelArg;
use moemla_core::calls::{MlaDecodeCall, MlaDecodeOutput};
use moemla_core::{DType, Error, Op, Result};
use moemla_kernel_plan::mla::{self, MlaSizes};

/// Runs MLA decode; `o` [B, Sq, Hq, Dv] in the run dtype, `lse` [B, Hq, Sq] F32.
pub(crate) fn run(b: &CudaBackend, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
    let q = buf(call.q, "mla_decode", "q")?;
    let kv = buf(call.kv_cache, "mla_decode", "kv_cache")?;
    let table = buf(call.block_table, "mla_decode", "block_table")?;
    let seqlens = buf(call.cache_seqlens, "mla_decode", "cache_seqlens")?;
    let sizes = MlaSizes::of(call);
    let plan = mla::plan(&sizes, call.dtype, &b.dev.limits).or_core()?;
    let dev = &b.dev;
    let int = |what, v| int_arg(Op::MlaDecode, what, v);

    let err = dev.upload(&[u64::MAX, u64::MAX]).or_core()?;
    let o_part = dev.alloc_zeroed(plan.workspace.o_part.bytes).or_core()?;
    let lse_part = dev.alloc_zeroed(plan.workspace.lse_part.bytes).or_core()?;
    let o = dev.alloc_zeroed(plan.o_bytes).or_core()?;
    let lse = dev.alloc_zeroed(plan.lse_bytes).or_core()?;

    let batch = int("B", call.batch)?;
    let s_q = int("Sq", call.s_q)?;
    let h_q = int("Hq", call.h_q)?;
    let h_kv = int("Hkv", call.h_kv)?;
    let d_qk = int("Dqk", call.d_qk)?;
    let d_v = int("Dv", call.d_v)?;
    let num_blocks = int("num_blocks", call.num_blocks)?;
    let block_size = int("block_size", call.block_size)?;
    let max_blocks = int("max_blocks", call.max_blocks)?;
    let causal = i32::from(call.params.causal);
    let scale = call.params.softmax_scale as f32;
    let num_splits = int("num_splits", plan.num_splits)?;
    let block_q = int("block_q", plan.block_q)?;
    let block_n = int("block_n", plan.block_n)?;

    // 1. index check
    let (f, cfg) = dev
        .prepare(Module::MlaDecode, &plan.launches[0])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&table.slice)
        .arg(&seqlens.slice)
        .arg(&batch)
        .arg(&max_blocks)
        .arg(&block_size)
        .arg(&num_blocks)
        .arg(&err);
    // SAFETY: moemla_mla_check's parameters in order; block_table [B, max_blocks],
    // cache_seqlens [B], err 2 ints.
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(mla_check)")
        .or_core()?;

    // 2. split-KV decode
    let (f, cfg) = dev
        .prepare(Module::MlaDecode, &plan.launches[1])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&q.slice)
        .arg(&kv.slice)
        .arg(&table.slice)
        .arg(&seqlens.slice)
        .arg(&o_part)
        .arg(&lse_part)
        .arg(&batch)
        .arg(&s_q)
        .arg(&h_q)
        .arg(&h_kv)
        .arg(&d_qk)
        .arg(&d_v)
        .arg(&num_blocks)
        .arg(&block_size)
        .arg(&max_blocks)
        .arg(&causal)
        .arg(&scale)
        .arg(&num_splits)
        .arg(&block_q)
        .arg(&block_n);
    // SAFETY: moemla_mla_decode_*'s parameters in order; q, kv_cache as validated by core;
    // o_part / lse_part sized by the plan for num_splits; shared memory from the plan.
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(mla_decode)")
        .or_core()?;

    // 3. combine
    let (f, cfg) = dev
        .prepare(Module::MlaDecode, &plan.launches[2])
        .or_core()?;
    let mut a = dev.stream.launch_builder(&f);
    a.arg(&o_part)
        .arg(&lse_part)
        .arg(&o)
        .arg(&lse)
        .arg(&batch)
        .arg(&s_q)
        .arg(&h_q)
        .arg(&d_v)
        .arg(&num_splits);
    // SAFETY: moemla_mla_combine_*'s parameters in order; o [B, Sq, Hq, Dv], lse [B, Hq, Sq].
    unsafe { a.launch(cfg) }
        .call("cuLaunchKernel(mla_combine)")
        .or_core()?;

    // Sequence lengths first, then block-table entries: the order of moemla_core::indices.
    let flags = read_flags(b, &err, 2)?;
    if let Some((linear, value)) = flags[0] {
        return Err(Error::index_out_of_range(
            Op::MlaDecode,
            "cache_seqlens",
            call.cache_seqlens.shape(),
            linear,
            value,
            format!(
                "[0, {}] (max_blocks * block_size)",
                call.max_blocks * call.block_size
            ),
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
    Ok(MlaDecodeOutput {
        o: b.tensor(o, [call.batch, call.s_q, call.h_q, call.d_v], call.dtype),
        lse: b.tensor(lse, [call.batch, call.h_q, call.s_q], DType::F32),
    })
}
