//! `mla_decode`: index check, split-KV decode, split combine (three launches).

use super::{as_i32, buf, read_flags, unconfirmed_flag, OrCore};
use crate::error::DriverContext;
use crate::nvrtc::Module;
use crate::CudaBackend;
use cudarc::driver::PushKernelArg;
use moemla_core::calls::{MlaDecodeCall, MlaDecodeOutput};
use moemla_core::{indices, DType, Result};
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
    let elem = call.dtype.size_in_bytes();
    let out_rows = call.batch * call.s_q * call.h_q;

    let err = dev.upload(&[i32::MAX, i32::MAX]).or_core()?;
    let o_part = dev.alloc_zeroed(plan.workspace.o_part * 4).or_core()?;
    let lse_part = dev.alloc_zeroed(plan.workspace.lse_part * 4).or_core()?;
    let o = dev.alloc_zeroed(out_rows * call.d_v * elem).or_core()?;
    let lse = dev.alloc_zeroed(out_rows * 4).or_core()?;

    let batch = call.batch as i32;
    let s_q = call.s_q as i32;
    let h_q = call.h_q as i32;
    let h_kv = call.h_kv as i32;
    let d_qk = call.d_qk as i32;
    let d_v = call.d_v as i32;
    let num_blocks = call.num_blocks as i32;
    let block_size = call.block_size as i32;
    let max_blocks = call.max_blocks as i32;
    let causal = i32::from(call.params.causal);
    let scale = call.params.softmax_scale as f32;
    let num_splits = plan.num_splits as i32;
    let block_q = plan.block_q as i32;
    let block_n = plan.block_n as i32;

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

    let flags = read_flags(b, &err, 2)?;
    if flags.iter().any(|&f| f != i32::MAX) {
        let host_table = as_i32(
            &dev.download(&table.slice, 0, call.block_table.size_in_bytes())
                .or_core()?,
        );
        let host_lens = as_i32(
            &dev.download(&seqlens.slice, 0, call.cache_seqlens.size_in_bytes())
                .or_core()?,
        );
        indices::check_mla_indices(call, &host_table, &host_lens)?;
        return Err(unconfirmed_flag("mla_check", flags[0].min(flags[1])));
    }
    Ok(MlaDecodeOutput {
        o: b.tensor(o, [call.batch, call.s_q, call.h_q, call.d_v], call.dtype),
        lse: b.tensor(lse, [call.batch, call.h_q, call.s_q], DType::F32),
    })
}
