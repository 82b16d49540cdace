//! A latent KV cache as the attention kernels read it: rows in the run dtype (dense), or
//! 656-byte `fp8_ds_v32` rows dequantized on load (contract v2), addressed by flat slot.

#[cfg(target_arch = "x86_64")]
pub mod fp8_bf16;

use crate::storage::{float_slice, storage, CpuSlice, FloatSlice};
use moemla_core::fp8::{ds_v32_scales, DS_V32_DIM, DS_V32_LATENT, DS_V32_ROW_BYTES, DS_V32_TILE};
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
                    (Some(row), Some(out)) => pulp::Arch::new().dispatch(Dequantize { row, out }),
                    // Unreachable after the index checks; never read out of bounds.
                    _ => dst.fill(f32::NAN),
                }
            }
        }
    }
}

/// `moemla_core::fp8::dequantize_ds_v32_row` (the same values, bit for bit) as a pulp
/// kernel: the e4m3 codes decoded by arithmetic on their bits instead of a table, so the
/// loop vectorises for the vector unit found at run time.
struct Dequantize<'a> {
    row: &'a [u8; DS_V32_ROW_BYTES],
    out: &'a mut [f32; DS_V32_DIM],
}

impl pulp::WithSimd for Dequantize<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let scales = ds_v32_scales(self.row);
        let (latent, rope) = self.out.split_at_mut(DS_V32_LATENT);
        for (t, tile) in latent.chunks_exact_mut(DS_V32_TILE).enumerate() {
            let sc = scales[t];
            let codes = &self.row[t * DS_V32_TILE..(t + 1) * DS_V32_TILE];
            for (v, &c) in tile.iter_mut().zip(codes) {
                *v = crate::convert::e4m3(c) * sc;
            }
        }
        let at = DS_V32_LATENT + 4 * scales.len();
        for (v, b) in rope.iter_mut().zip(self.row[at..].chunks_exact(2)) {
            *v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moemla_core::fp8::{dequantize_ds_v32_row, quantize_ds_v32_row};

    #[test]
    fn rows_dequantize_bit_for_bit_as_the_format_defines() {
        // Every code in every tile position, with power-of-two, odd, tiny and NaN scales.
        let mut row = [0u8; DS_V32_ROW_BYTES];
        for (i, b) in row.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        for (t, sc) in [0.25f32, 0.3, 1e-30, f32::NAN].iter().enumerate() {
            let at = DS_V32_LATENT + 4 * t;
            row[at..at + 4].copy_from_slice(&sc.to_le_bytes());
        }
        let mut want = [0.0f32; DS_V32_DIM];
        dequantize_ds_v32_row(&row, &mut want);
        let mut got = vec![0.0f32; DS_V32_DIM];
        KvRows::Fp8(&row).read(0, 0, 1, &mut got);
        for (d, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "[{d}]: {g} vs {w}"
            );
        }
    }

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
