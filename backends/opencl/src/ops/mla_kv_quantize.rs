//! `mla_kv_quantize`: one work-group of 128 per row writes its 656-byte `fp8_ds_v32` row
//! (kernels/opencl/mla_kv_quantize.cl). A non-finite input is the contract's input error,
//! built from the first flagged element.

use crate::device::{Arg, ClDevice};
use crate::ops::{byte_len, int, int_product, need_local, need_work_group};
use crate::programs_v2::{program, Kernels};
use crate::ClBuffer;
use moemla_core::calls::MlaKvQuantizeCall;
use moemla_core::fp8::{DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::indices::check_kv_finite;
use moemla_core::{DType, Error, HostTensor, Op, Result};

/// Work-group size (`KVQ_LS` in the kernel source): one work-item per tile column.
const LS: usize = 128;

/// Runs the quantization; returns `kv_fp8` [N, 656] U8.
pub fn run(dev: &ClDevice, backend: &str, call: &MlaKvQuantizeCall<'_>) -> Result<ClBuffer> {
    let op = Op::MlaKvQuantize;
    let n = call.rows;
    need_work_group(dev, op, LS)?;
    need_local(dev, op, "the amax reduction", LS * 4)?;
    // Row-major element indices (flags) and output bytes fit a kernel int.
    int_product(op, "N * 576", &[n, DS_V32_DIM])?;
    int_product(op, "N * 656", &[n, DS_V32_ROW_BYTES])?;
    let n32 = int(op, "N", n)?;
    let kv = call
        .kv
        .buffer::<ClBuffer>(backend, "mla_kv_quantize", "kv")?;
    // Every byte of every row is written (codes, scales, rope).
    let out = dev.alloc_workspace(
        "mla_kv_quantize kv_fp8",
        byte_len(&[n, DS_V32_ROW_BYTES], DType::U8)?,
    )?;
    // The first row-major element index holding a non-finite value (INT_MAX: none).
    let bad = dev.alloc_filled("mla_kv_quantize flag", 4, i32::MAX as u32)?;
    let program = program(dev, Kernels::MlaKvQuantize, call.dtype)?;
    let args = [
        Arg::Buf(kv),
        Arg::Buf(&out),
        Arg::I32(n32),
        Arg::Buf(&bad),
        Arg::Local(LS * 4),
    ];
    dev.launch(&program, "kv_quantize", &args, &[n * LS], &[LS])?;
    // An input error, not an index error: checked at the call, as the CPU does.
    let mut first_bad = [0u8; 4];
    dev.read(&bad, 0, &mut first_bad)?;
    if i32::from_le_bytes(first_bad) != i32::MAX {
        // Rare: read kv back and let the shared check name the first bad row and element.
        let len = byte_len(call.kv.dims(), call.dtype)?;
        let mut bytes = moemla_core::alloc::try_filled_vec::<u8>(len, "opencl kv read-back")?;
        dev.read(kv, 0, &mut bytes)?;
        let values = HostTensor::from_bytes(call.kv.shape().clone(), call.dtype, bytes)?;
        check_kv_finite(call, &values.to_f32_vec()?)?;
        return Err(Error::Device {
            backend: backend.to_string(),
            call: "mla_kv_quantize".to_string(),
            message: "the kernel flagged a non-finite value the host does not see".to_string(),
        });
    }
    Ok(out)
}
