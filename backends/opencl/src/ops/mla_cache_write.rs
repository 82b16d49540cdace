//! `mla_cache_write`: one work-group per row writes it into the caller's cache in place
//! (kernels/opencl/mla_cache_write.cl; FP8 rows by `ds_write_row` of mla_kv_quantize.cl).
//! A slot outside the cache is an index error reported at the next synchronize or
//! download (that row is not written). With `fp8_ds_v32`, a non-finite value in a row to
//! write is the contract's input error, found by a first kernel and reported at the next
//! synchronize or download too (as `mla_kv_quantize`'s): then nothing is written.

use crate::device::{Arg, ClDevice};
use crate::ops::{byte_len, int, int_product, need_len, need_local, need_work_group};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MlaCacheWriteCall;
use moemla_core::fp8::DS_V32_DIM;
use moemla_core::{DType, KvFormat, Op, Result};

/// Work-group size of the FP8 row writer (`KVQ_LS`: one work-item per tile column).
const LS_FP8: usize = 128;

/// Work-group size of the dense row copy and of the finite check.
const LS: usize = 64;

const CALL: &str = "mla_cache_write";

/// Enqueues the write of `call.kv`'s rows into `cache` (the buffer of `call.kv_cache`).
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &MlaCacheWriteCall<'_>,
    cache: &ClBuffer,
) -> Result<()> {
    let op = Op::MlaCacheWrite;
    let n = call.rows;
    let kv = call.kv.buffer::<ClBuffer>(backend, CALL, "kv")?;
    let slots = call
        .slot_mapping
        .buffer::<ClBuffer>(backend, CALL, "slot_mapping")?;
    let cache_bytes = byte_len(call.kv_cache.dims(), call.kv_cache.dtype())?;
    need_len(op, "kv_cache", cache, cache_bytes)?;
    need_len(op, "kv", kv, byte_len(call.kv.dims(), call.dtype)?)?;
    need_len(op, "slot_mapping", slots, byte_len(&[n], DType::I32)?)?;
    let n32 = int(op, "N", n)?;
    let nslots = int(op, "num_blocks * block_size", call.slots())?;
    let fp8 = call.params.kv_format == KvFormat::Fp8DsV32;
    let program = program(dev, Kernels::MlaCacheWrite, call.dtype)?;
    if fp8 {
        need_work_group(dev, op, LS_FP8)?;
        need_local(dev, op, "the amax reduction", LS_FP8 * 4 + 4)?;
        int_product(op, "N * 576", &[n, DS_V32_DIM])?;
    } else {
        need_work_group(dev, op, LS)?;
    }
    let valid = format!("-1 or [0, {}) (num_blocks * block_size)", call.slots());
    let mut checks = dev.index_checks(op)?;
    if fp8 {
        // The finite check first: its error takes precedence, and the writer reads its slot.
        let expected = "finite values (kv_format fp8_ds_v32)";
        let finite = checks.flag_non_finite("kv", call.kv, expected, program.clone())?;
        let args = [
            Arg::Buf(kv),
            Arg::Buf(slots),
            Arg::I32(n32),
            Arg::Buf(finite.buffer()),
            Arg::I32(finite.slot()),
        ];
        let global = (n * DS_V32_DIM).div_ceil(LS) * LS;
        dev.launch(&program, "cache_rows_finite", &args, &[global], &[LS])?;
        let flag = checks.flag("slot_mapping", call.slot_mapping, valid)?;
        let args = [
            Arg::Buf(kv),
            Arg::Buf(slots),
            Arg::Buf(cache),
            Arg::I32(n32),
            Arg::I32(nslots),
            Arg::Buf(flag.buffer()),
            Arg::I32(flag.slot()),
            Arg::Buf(finite.buffer()),
            Arg::I32(finite.slot()),
            Arg::Local(4),
            Arg::Local(LS_FP8 * 4),
        ];
        let global = n * LS_FP8;
        dev.launch(&program, "cache_write_fp8", &args, &[global], &[LS_FP8])?;
    } else {
        let flag = checks.flag("slot_mapping", call.slot_mapping, valid)?;
        // Rows as 16-bit words: every run dtype is 2 or 4 bytes wide.
        let units = call.d_qk * call.dtype.size_in_bytes() / 2;
        let args = [
            Arg::Buf(kv),
            Arg::Buf(slots),
            Arg::Buf(cache),
            Arg::I32(n32),
            Arg::I32(int(op, "row words", units)?),
            Arg::I32(nslots),
            Arg::Buf(flag.buffer()),
            Arg::I32(flag.slot()),
            Arg::Local(4),
        ];
        dev.launch(&program, "cache_write_dense", &args, &[n * LS], &[LS])?;
    }
    checks.enqueued()
}
