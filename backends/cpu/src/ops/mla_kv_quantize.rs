//! `mla_kv_quantize` on the CPU: rows to the 656-byte `fp8_ds_v32` layout, byte-exact
//! (the codec is `moemla_core::fp8`), one row per rayon task.

use crate::storage::{float_slice, zeroed};
use moemla_core::calls::MlaKvQuantizeCall;
use moemla_core::fp8::{quantize_ds_v32_row, DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::indices::check_kv_finite;
use moemla_core::Result;
use rayon::prelude::*;

const CALL: &str = "mla_kv_quantize";

/// Quantizes `kv` [N, 576]; returns `kv_fp8` [N, 656] bytes. A non-finite input is an
/// input error naming its row, reported before anything is written.
pub fn run(backend: &str, call: &MlaKvQuantizeCall<'_>) -> Result<Vec<u8>> {
    let mut out = zeroed::<u8>(&[call.rows, DS_V32_ROW_BYTES], "cpu mla_kv_quantize kv_fp8")?;
    run_into(backend, call, &mut out)?;
    Ok(out)
}

/// [`run`] writing `kv_fp8` [N, 656] into `out` (the caller's, exactly that long); nothing
/// is written when an input is not finite.
pub fn run_into(backend: &str, call: &MlaKvQuantizeCall<'_>, out: &mut [u8]) -> Result<()> {
    let kv = float_slice(call.kv, backend, CALL, "kv")?;
    let mut values = zeroed::<f32>(&[call.rows, DS_V32_DIM], "cpu mla_kv_quantize input")?;
    kv.read_f32(0, &mut values);
    check_kv_finite(call, &values)?;
    let (rows_in, _) = values.as_chunks::<DS_V32_DIM>();
    let (rows_out, _) = out.as_chunks_mut::<DS_V32_ROW_BYTES>();
    rows_out
        .par_iter_mut()
        .zip(rows_in.par_iter())
        .for_each(|(row, kv)| quantize_ds_v32_row(kv, row));
    Ok(())
}
