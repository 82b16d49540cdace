//! `mla_cache_write`: one work-group per row writes it into the caller's cache in place
//! (kernels/opencl/mla_cache_write.cl; FP8 rows by `ds_write_row` of mla_kv_quantize.cl).
//! A slot outside the cache is an index error reported at the next synchronize or
//! download (that row is not written). With `fp8_ds_v32`, a non-finite value in a row to
//! write is the contract's input error, found by a first kernel and read back at the call
//! (as `mla_kv_quantize` does): then nothing is written.

use crate::device::{Arg, ClDevice};
use crate::ops::{byte_len, int, int_product, need_len, need_local, need_work_group};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MlaCacheWriteCall;
use moemla_core::fp8::DS_V32_DIM;
use moemla_core::indices::check_cache_rows_finite;
use moemla_core::{DType, Error, HostTensor, KvFormat, Op, Result};

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
        check_finite(dev, backend, call, &program, kv, slots, n32)?;
    } else {
        need_work_group(dev, op, LS)?;
    }
    let valid = format!("-1 or [0, {}) (num_blocks * block_size)", call.slots());
    let mut checks = dev.index_checks(op)?;
    let flag = checks.flag("slot_mapping", call.slot_mapping, valid)?;
    if fp8 {
        let args = [
            Arg::Buf(kv),
            Arg::Buf(slots),
            Arg::Buf(cache),
            Arg::I32(n32),
            Arg::I32(nslots),
            Arg::Buf(flag.buffer()),
            Arg::I32(flag.slot()),
            Arg::Local(4),
            Arg::Local(LS_FP8 * 4),
        ];
        let global = n * LS_FP8;
        dev.launch(&program, "cache_write_fp8", &args, &[global], &[LS_FP8])?;
    } else {
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

/// The contract's input error for a non-finite value in a row to write, checked on the
/// device and read back (4 bytes) at the call.
fn check_finite(
    dev: &ClDevice,
    backend: &str,
    call: &MlaCacheWriteCall<'_>,
    program: &opencl3::program::Program,
    kv: &ClBuffer,
    slots: &ClBuffer,
    n32: i32,
) -> Result<()> {
    let bad = dev.alloc_filled("mla_cache_write flag", 4, i32::MAX as u32)?;
    let args = [Arg::Buf(kv), Arg::Buf(slots), Arg::I32(n32), Arg::Buf(&bad)];
    let global = (call.rows * DS_V32_DIM).div_ceil(LS) * LS;
    dev.launch(program, "cache_rows_finite", &args, &[global], &[LS])?;
    let mut first_bad = [0u8; 4];
    dev.read(&bad, 0, &mut first_bad)?;
    if i32::from_le_bytes(first_bad) == i32::MAX {
        return Ok(());
    }
    // Rare: read kv and the slots back and let the shared check name the row and element.
    let len = byte_len(call.kv.dims(), call.dtype)?;
    let mut bytes = moemla_core::alloc::try_filled_vec::<u8>(len, "opencl kv read-back")?;
    dev.read(kv, 0, &mut bytes)?;
    let values = HostTensor::from_bytes(call.kv.shape().clone(), call.dtype, bytes)?;
    let mut slot_bytes = moemla_core::alloc::try_filled_vec::<u8>(call.rows * 4, "opencl slots")?;
    dev.read(slots, 0, &mut slot_bytes)?;
    let slot_values: Vec<i32> = (slot_bytes.chunks_exact(4))
        .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    check_cache_rows_finite(call, &values.to_f32_vec()?, &slot_values)?;
    Err(Error::Device {
        backend: backend.to_string(),
        call: CALL.to_string(),
        message: "the kernel flagged a non-finite value the host does not see".to_string(),
    })
}
