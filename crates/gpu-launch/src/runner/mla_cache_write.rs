//! `mla_cache_write`: one launch writing the rows of `kv` into the caller's cache in place
//! (kernels/README.md, mla_kv_quantize.cu): `moemla_mla_cache_write_dense`, or
//! `moemla_mla_cache_write_fp8_<DT>` through `mla_kv_quantize`'s row writer. Bad slots (and,
//! for `fp8_ds_v32`, non-finite values in rows to write, reported first) are flagged on the
//! device and reported by the next synchronize; a flagged row is not written, nothing is
//! written out of bounds. Beyond `cache_write::SCAN_ROWS` rows, the later row that wins a
//! repeated slot is found through a winner table in the stream's workspace, emptied and
//! filled by two launches before the write.

use super::{flag_check, GpuRunner};
use crate::args::Arg;
use crate::device::{check_len, GpuBuffer, GpuDevice};
use crate::flags::{FlagCheck, FlagKind};
use crate::module::Module;
use moemla_core::calls::MlaCacheWriteCall;
use moemla_core::{KvFormat, Op, Result};
use moemla_kernel_plan::cache_write;

const CALL: &str = "mla_cache_write";

/// Enqueues the write; returns once it is enqueued.
pub(super) fn run<D: GpuDevice>(g: &GpuRunner<D>, call: &MlaCacheWriteCall<'_>) -> Result<()> {
    let op = Op::MlaCacheWrite;
    let kv = g.buffer(call.kv, CALL, "kv")?;
    let slots = g.buffer(call.slot_mapping, CALL, "slot_mapping")?;
    let cache = g.buffer(call.kv_cache, CALL, "kv_cache")?;
    // The kernels write the cache: its memory must hold the whole shape.
    let cache_bytes = call.kv_cache.shape().byte_len(call.kv_cache.dtype())?;
    check_len(&g.name, CALL, cache, cache_bytes)?;
    g.dev.enter()?;
    let limits = g.dev.limits(op)?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let plan = cache_write::plan(call.rows, call.d_qk, call.dtype, fp8, call.slots(), &limits)
        .map_err(|e| g.plan_error(e))?;
    let mut checks = Vec::with_capacity(2);
    if fp8 {
        checks.push(FlagCheck {
            arg: "kv",
            shape: call.kv.shape().clone(),
            valid: "finite values (kv_format fp8_ds_v32)".into(),
            kind: FlagKind::NonFinite,
        });
    }
    checks.push(flag_check(
        "slot_mapping",
        call.slot_mapping,
        format!("-1 or [0, {}) (num_blocks * block_size)", call.slots()),
    ));
    let n = g.int(op, "N", call.rows)?;
    let nslots = g.int(op, "num_blocks * block_size", call.slots())?;
    let row_bytes = g.int(op, "Dqk bytes", plan.row_bytes as usize)?;
    let mut stream = g.lock();
    // The winner table (null and mask 0: the write scans).
    let (table, mask) = match &plan.table {
        Some(t) => {
            let base = stream.workspace(&g.dev, t.bytes)?;
            let mask = g.int(op, "winner table mask", t.mask as usize)?;
            let (table, slot_mapping) = (Arg::Ptr(base), Arg::Ptr(slots.address()));
            g.launch(Module::MlaKvQuantize, &t.clear, &[table, mask])?;
            g.launch(
                Module::MlaKvQuantize,
                &t.insert,
                &[slot_mapping, n, nslots, table, mask],
            )?;
            (table, mask)
        }
        None => (Arg::Ptr(0), Arg::I32(0)),
    };
    let flags = stream.flags.reserve(&g.dev, op, checks)?;
    let pointers = [
        Arg::Ptr(kv.address()),
        Arg::Ptr(slots.address()),
        Arg::Ptr(cache.address()),
    ];
    let mut args = pointers.to_vec();
    if fp8 {
        args.extend([n, nslots, Arg::Ptr(flags[0]), table, mask]);
    } else {
        args.extend([n, row_bytes, nslots, Arg::Ptr(flags[0]), table, mask]);
    }
    g.launch(Module::MlaKvQuantize, &plan.launch, &args)?;
    drop(stream);
    Ok(())
}
