//! `mla_cache_write` on the OpenCL device beyond the golden set: slots outside the cache
//! reported at the next synchronize (the other rows written, the bad one not), a non-finite
//! FP8 row reported at the next synchronize too (nothing written), and the later row
//! winning a slot that many rows name across several work-items' scans.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{backend, int_tensor};
use moemla_core::fp8::quantize_ds_v32_row;
use moemla_core::{ops, Backend, CacheWriteParams, DType, Error, HostTensor, KvFormat, Op};

/// Index errors belong to the backend's queue: this binary's tests run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn fp8() -> CacheWriteParams {
    CacheWriteParams {
        kv_format: KvFormat::Fp8DsV32,
    }
}

#[test]
fn a_slot_outside_the_cache_is_reported_at_the_next_synchronize() {
    let _s = serial();
    let Some(be) = backend() else { return };
    let before: Vec<f32> = (0..4 * 3).map(|v| -(v as f32)).collect();
    let mut cache = be
        .upload(&HostTensor::from_slice([2, 2, 1, 3], &before).unwrap())
        .unwrap();
    let kv: Vec<f32> = (0..4 * 3).map(|v| 100.0 + v as f32).collect();
    let kv = be
        .upload(&HostTensor::from_slice([4, 3], &kv).unwrap())
        .unwrap();
    let slots = int_tensor(&*be, &[4], &[1, 4, -1, -7]);
    ops::mla_cache_write(&*be, &kv, &slots, &mut cache, &Default::default()).unwrap();
    match be.synchronize() {
        Err(Error::IndexOutOfRange {
            op,
            arg,
            index,
            value,
            valid,
        }) => {
            assert_eq!(
                (op, arg, index, value),
                (Op::MlaCacheWrite, "slot_mapping", vec![1], 4)
            );
            assert_eq!(valid, "-1 or [0, 4) (num_blocks * block_size)");
        }
        other => panic!("expected the slot error, got {other:?}"),
    }
    be.synchronize().unwrap(); // reported once
    let mut want = before.clone();
    want[3..6].copy_from_slice(&[100.0, 101.0, 102.0]);
    let got = be.download(&cache).unwrap().to_f32_vec().unwrap();
    assert_eq!(got, want);
}

#[test]
fn a_non_finite_fp8_row_is_an_input_error_at_the_next_synchronize_and_nothing_is_written() {
    let _s = serial();
    let Some(be) = backend() else { return };
    let mut cache = be
        .upload(&HostTensor::from_slice([1, 4, 1, 656], &[0x5Au8; 4 * 656]).unwrap())
        .unwrap();
    let mut rows = vec![0.75f32; 3 * 576];
    rows[7] = f32::NAN; // row 0: skipped, never read
    rows[2 * 576 + 520] = f32::NEG_INFINITY; // row 2, written
    let kv = be
        .upload(&HostTensor::from_slice([3, 576], &rows).unwrap())
        .unwrap();
    let slots = int_tensor(&*be, &[3], &[-1, 0, 3]);
    // The call only enqueues (nothing read back); the next synchronize reports the error,
    // naming the row, the element and the value the kernel found.
    be.synchronize().unwrap();
    let before = be.traffic().unwrap();
    ops::mla_cache_write(&*be, &kv, &slots, &mut cache, &fp8()).unwrap();
    assert_eq!(be.traffic().unwrap().since(&before).downloads, 0);
    match be.synchronize() {
        Err(Error::Input {
            op,
            arg,
            expected,
            got,
        }) => {
            assert_eq!((op, arg), (Op::MlaCacheWrite, "kv"));
            assert_eq!(expected, "finite values (kv_format fp8_ds_v32)");
            assert_eq!(got, "-inf at row 2 (element [2, 520])");
        }
        other => panic!("expected the input error, got {other:?}"),
    }
    be.synchronize().unwrap(); // reported once
    let got = be.download(&cache).unwrap();
    assert_eq!(got.as_bytes(), &[0x5Au8; 4 * 656][..]);
}

#[test]
fn the_later_row_wins_a_slot_many_rows_name() {
    let _s = serial();
    let Some(be) = backend() else { return };
    // 300 rows (more than a work-group scans in one pass) over 3 slots of 8, row r to
    // slot r % 3 except every 7th row skipped; the last row naming slot s wins.
    let n = 300;
    let slots: Vec<i32> = (0..n)
        .map(|r| if r % 7 == 0 { -1 } else { (r % 3) as i32 })
        .collect();
    let rows: Vec<f32> = (0..n * 576)
        .map(|i| ((i * 37 % 1001) as f32 - 500.0) * 0.01)
        .collect();
    let kv = be
        .upload(&HostTensor::from_slice([n, 576], &rows).unwrap())
        .unwrap();
    let slot_t = int_tensor(&*be, &[n], &slots);
    let mut cache = be
        .upload(&HostTensor::from_slice([2, 4, 1, 656], &[1u8; 8 * 656]).unwrap())
        .unwrap();
    ops::mla_cache_write(&*be, &kv, &slot_t, &mut cache, &fp8()).unwrap();
    let mut want = vec![1u8; 8 * 656];
    for s in 0..3 {
        let last = (0..n).rev().find(|&r| slots[r] == s as i32).unwrap();
        let row: &[f32; 576] = rows[last * 576..(last + 1) * 576].try_into().unwrap();
        let out: &mut [u8; 656] = (&mut want[s * 656..(s + 1) * 656]).try_into().unwrap();
        quantize_ds_v32_row(row, out);
    }
    assert_eq!(be.download(&cache).unwrap().as_bytes(), &want[..]);
    // Dense, bf16: the same slots, rows copied bit for bit.
    let kv16 = be
        .upload(&HostTensor::from_f32_as([n, 576], &rows, DType::BF16).unwrap())
        .unwrap();
    let mut dense = be
        .alloc_zeroed(&[1, 4, 1, 576].into(), DType::BF16)
        .unwrap();
    ops::mla_cache_write(&*be, &kv16, &slot_t, &mut dense, &Default::default()).unwrap();
    let src = be.download(&kv16).unwrap();
    let got = be.download(&dense).unwrap();
    for s in 0..4 {
        let row = 576 * 2;
        let want: Vec<u8> = match (0..n).rev().find(|&r| slots[r] == s as i32) {
            Some(last) => src.as_bytes()[last * row..(last + 1) * row].to_vec(),
            None => vec![0; row],
        };
        assert_eq!(
            &got.as_bytes()[s * row..(s + 1) * row],
            &want[..],
            "slot {s}"
        );
    }
}
