//! `mla_cache_write` on the CPU: rows copied (dense) or quantized to `fp8_ds_v32` rows
//! (byte-exact, the codec of `moemla_core::fp8`, as `mla_kv_quantize`) into the caller's
//! cache in place, in row order, so the later row wins a slot two rows name.

use crate::storage::{float_slice, i32_slice, storage, zeroed};
use moemla_core::calls::MlaCacheWriteCall;
use moemla_core::fp8::{quantize_ds_v32_row, DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::indices::{check_cache_rows_finite, check_cache_slots};
use moemla_core::{KvFormat, Result};

const CALL: &str = "mla_cache_write";

/// Writes the rows of `call.kv` into `cache` (the bytes of `call.kv_cache`, which the
/// caller has checked holds exactly its shape). Checks come first (finite rows for
/// `fp8_ds_v32`, then the slots): on an error nothing is written.
pub fn run(backend: &str, call: &MlaCacheWriteCall<'_>, cache: &mut [u8]) -> Result<()> {
    let slots = i32_slice(call.slot_mapping, backend, CALL, "slot_mapping")?;
    let kv = float_slice(call.kv, backend, CALL, "kv")?;
    if call.params.kv_format == KvFormat::Fp8DsV32 {
        let mut values = zeroed::<f32>(&[call.rows, DS_V32_DIM], "cpu mla_cache_write rows")?;
        kv.read_f32(0, &mut values);
        check_cache_rows_finite(call, &values, slots)?;
        check_cache_slots(call, slots)?;
        let (rows, _) = values.as_chunks::<DS_V32_DIM>();
        let (cache_rows, _) = cache.as_chunks_mut::<DS_V32_ROW_BYTES>();
        for (row, &slot) in rows.iter().zip(slots) {
            // Checked above: -1 or a slot of the cache.
            if let Ok(slot) = usize::try_from(slot) {
                quantize_ds_v32_row(row, &mut cache_rows[slot]);
            }
        }
        return Ok(());
    }
    check_cache_slots(call, slots)?;
    let bytes = storage(call.kv, backend, CALL, "kv")?.as_bytes();
    let width = call.d_qk * call.dtype.size_in_bytes();
    for (row, &slot) in bytes.chunks_exact(width).zip(slots) {
        if let Ok(slot) = usize::try_from(slot) {
            cache[slot * width..(slot + 1) * width].copy_from_slice(row);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::CpuBackend;
    use moemla_core::fp8::quantize_ds_v32_row;
    use moemla_core::{ops, Backend, CacheWriteParams, Error, HostTensor, KvFormat};

    fn fp8() -> CacheWriteParams {
        CacheWriteParams {
            kv_format: KvFormat::Fp8DsV32,
        }
    }

    #[test]
    fn writes_in_place_later_row_wins_and_skips_minus_one() {
        let cpu = CpuBackend::new();
        let before: Vec<f32> = (0..2 * 3 * 2).map(|v| v as f32).collect();
        let mut cache = cpu
            .upload(&HostTensor::from_slice([2, 3, 1, 2], &before).unwrap())
            .unwrap();
        let alias = cache.clone();
        let kv = [10.0f32, 11.0, 20.0, 21.0, 30.0, 31.0, 40.0, 41.0];
        let kv = cpu
            .upload(&HostTensor::from_slice([4, 2], &kv).unwrap())
            .unwrap();
        let slots = cpu
            .upload(&HostTensor::from_slice([4], &[4, -1, 0, 4]).unwrap())
            .unwrap();
        ops::mla_cache_write(&cpu, &kv, &slots, &mut cache, &Default::default()).unwrap();
        let mut want = before.clone();
        want[0..2].copy_from_slice(&[30.0, 31.0]);
        want[8..10].copy_from_slice(&[40.0, 41.0]);
        // In place: every handle on the buffer sees the write.
        assert_eq!(cpu.download(&alias).unwrap().to_f32_vec().unwrap(), want);
    }

    #[test]
    fn errors_write_nothing() {
        let cpu = CpuBackend::new();
        let mut cache = cpu
            .upload(&HostTensor::from_slice([1, 2, 1, 656], &[7u8; 1312]).unwrap())
            .unwrap();
        let mut rows = vec![0.25f32; 2 * 576];
        let kv = cpu
            .upload(&HostTensor::from_slice([2, 576], &rows).unwrap())
            .unwrap();
        let bad_slot = cpu
            .upload(&HostTensor::from_slice([2], &[0, 2]).unwrap())
            .unwrap();
        let err = ops::mla_cache_write(&cpu, &kv, &bad_slot, &mut cache, &fp8()).unwrap_err();
        assert!(
            matches!(&err, Error::IndexOutOfRange { arg: "slot_mapping", index, value: 2, .. } if index == &[1]),
            "{err}"
        );
        rows[576 + 24] = f32::NAN; // row 1, element 24
        let kv = cpu
            .upload(&HostTensor::from_slice([2, 576], &rows).unwrap())
            .unwrap();
        let slots = cpu
            .upload(&HostTensor::from_slice([2], &[0, 1]).unwrap())
            .unwrap();
        let err = ops::mla_cache_write(&cpu, &kv, &slots, &mut cache, &fp8()).unwrap_err();
        assert!(matches!(err, Error::Input { arg: "kv", .. }), "{err}");
        assert_eq!(cpu.download(&cache).unwrap().as_bytes(), &[7u8; 1312][..]);
        // Skipping the bad row: row 0 is written, quantized as mla_kv_quantize does.
        let slots = cpu
            .upload(&HostTensor::from_slice([2], &[1, -1]).unwrap())
            .unwrap();
        ops::mla_cache_write(&cpu, &kv, &slots, &mut cache, &fp8()).unwrap();
        let mut row = [0u8; 656];
        quantize_ds_v32_row(rows[..576].try_into().unwrap(), &mut row);
        let got = cpu.download(&cache).unwrap();
        assert_eq!(&got.as_bytes()[656..], &row[..]);
        assert_eq!(&got.as_bytes()[..656], &[7u8; 656][..]);
    }
}
