//! A latent KV cache as the attention kernels read it: rows in the run dtype (dense), or
//! 656-byte `fp8_ds_v32` rows dequantized on load (contract v2), addressed by flat slot.

use crate::storage::{float_slice, storage, CpuSlice, FloatSlice};
use moemla_core::fp8::{dequantize_ds_v32_row, DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::{DeviceTensor, Error, KvFormat, Result};

/// A cache [num_blocks, block_size, Hkv, Dqk] (dense) or [num_blocks, block_size, 1, 656]
/// U8 (`fp8_ds_v32`), as stored.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    /// Run-dtype rows of Dqk values.
    Dense(FloatSlice<'a>),
    /// `fp8_ds_v32` rows (Dqk 576 once dequantized).
    Fp8(&'a [u8]),
}

impl<'a> KvRows<'a> {
    /// The cache tensor `t` in `format` (validation guarantees the dtype and row width).
    pub fn of(
        t: &'a DeviceTensor,
        format: KvFormat,
        backend: &str,
        call: &'static str,
    ) -> Result<Self> {
        match format {
            KvFormat::Dense => Ok(KvRows::Dense(float_slice(t, backend, call, "kv_cache")?)),
            KvFormat::Fp8DsV32 => match storage(t, backend, call, "kv_cache")? {
                CpuSlice::U8(bytes) => Ok(KvRows::Fp8(bytes)),
                other => Err(Error::Device {
                    backend: backend.to_string(),
                    call: format!("{call}: `kv_cache`"),
                    message: format!("buffer holds {}, expected U8", other.dtype()),
                }),
            },
        }
    }

    /// Reads head `g` of cache slot `slot` (block * block_size + offset) as f32 into `dst`
    /// (Dqk long; `h_kv` heads per slot). FP8 rows are dequantized with their stored
    /// scales. The slot must exist (callers check their indices first).
    #[inline]
    pub fn read(&self, slot: usize, g: usize, h_kv: usize, dst: &mut [f32]) {
        match self {
            KvRows::Dense(data) => data.read_f32((slot * h_kv + g) * dst.len(), dst),
            KvRows::Fp8(bytes) => {
                let row = bytes
                    .get(slot * DS_V32_ROW_BYTES..)
                    .and_then(|b| b.first_chunk::<DS_V32_ROW_BYTES>());
                match (row, dst.first_chunk_mut::<DS_V32_DIM>()) {
                    (Some(row), Some(out)) => dequantize_ds_v32_row(row, out),
                    // Unreachable after the index checks; never read out of bounds.
                    _ => dst.fill(f32::NAN),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::quantize_ds_v32_row;

    #[test]
    fn fp8_slots_dequantize_their_own_row() {
        let mut bytes = vec![0xFFu8; 3 * DS_V32_ROW_BYTES];
        let mut kv = [0.0f32; DS_V32_DIM];
        for (d, v) in kv.iter_mut().enumerate() {
            *v = (d as f32 - 300.0) / 16.0;
        }
        let row: &mut [u8; DS_V32_ROW_BYTES] = bytes[DS_V32_ROW_BYTES..].first_chunk_mut().unwrap();
        quantize_ds_v32_row(&kv, row);
        let mut want = [0.0f32; DS_V32_DIM];
        dequantize_ds_v32_row(row, &mut want);
        let mut got = vec![0.0f32; DS_V32_DIM];
        KvRows::Fp8(&bytes).read(1, 0, 1, &mut got);
        assert_eq!(got, want);
        // Slot 0 is all 0xFF: NaN codes and scales, read as NaN (data, not an error).
        KvRows::Fp8(&bytes).read(0, 0, 1, &mut got);
        assert!(got.iter().all(|v| v.is_nan()));
        // A slot past the end is never read.
        KvRows::Fp8(&bytes).read(3, 0, 1, &mut got);
        assert!(got.iter().all(|v| v.is_nan()));
    }
}
