//! `mla_kv_quantize`: one work-group of 128 per row writes its 656-byte `fp8_ds_v32` row
//! (kernels/opencl/mla_kv_quantize.cl). A non-finite input is the contract's input error,
//! naming the first flagged element and its value, reported at the next synchronize or
//! download (`flags.rs`): the call only enqueues.

use crate::device::{Arg, ClDevice};
use crate::ops::{byte_len, int, int_product, need_len, need_local, need_work_group};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MlaKvQuantizeCall;
use moemla_core::fp8::{DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::{DType, Op, Result};

/// Work-group size (`KVQ_LS` in the kernel source): one work-item per tile column.
const LS: usize = 128;

/// Enqueues the quantization into `out` (`kv_fp8` [N, 656] U8: the caller's tensor or a
/// new one; every byte of every row is written: codes, scales, rope).
pub fn run(
    dev: &ClDevice,
    backend: &str,
    call: &MlaKvQuantizeCall<'_>,
    out: &ClBuffer,
) -> Result<()> {
    let op = Op::MlaKvQuantize;
    let n = call.rows;
    need_work_group(dev, op, LS)?;
    need_local(dev, op, "the amax reduction", LS * 4)?;
    // Row-major element indices (flags) and output bytes fit a kernel int.
    int_product(op, "N * 576", &[n, DS_V32_DIM])?;
    int_product(op, "N * 656", &[n, DS_V32_ROW_BYTES])?;
    let n32 = int(op, "N", n)?;
    need_len(
        op,
        "kv_fp8",
        out,
        byte_len(&[n, DS_V32_ROW_BYTES], DType::U8)?,
    )?;
    let kv = call
        .kv
        .buffer::<ClBuffer>(backend, "mla_kv_quantize", "kv")?;
    let program = program(dev, Kernels::MlaKvQuantize, call.dtype)?;
    // A non-finite value: the first one's position and value in a flag slot, reported at
    // the next synchronize or download (the call does not wait).
    let mut checks = dev.index_checks(op)?;
    let flag = checks.flag_non_finite("kv", call.kv, "finite values", program.clone())?;
    let args = [
        Arg::Buf(kv),
        Arg::Buf(out),
        Arg::I32(n32),
        Arg::Buf(flag.buffer()),
        Arg::I32(flag.slot()),
        Arg::Local(LS * 4),
    ];
    dev.launch(&program, "kv_quantize", &args, &[n * LS], &[LS])?;
    checks.enqueued()
}
