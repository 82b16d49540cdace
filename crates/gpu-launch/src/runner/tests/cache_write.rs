//! `mla_cache_write` on the fake device: one launch, nothing allocated after warm-up,
//! the caller's cache written in place, errors at the next synchronize.

use super::*;
use moemla_core::{CacheWriteParams, KvFormat};

/// A dense F32 cache of 3 blocks of 2 slots, 4 values a row, holding 100 + i.
fn dense_cache(b: &FakeBackend) -> (DeviceTensor, Vec<f32>) {
    let before: Vec<f32> = (0..24).map(|i| 100.0 + i as f32).collect();
    let cache = b
        .upload(&HostTensor::from_slice([3, 2, 1, 4], &before).unwrap())
        .unwrap();
    (cache, before)
}

fn rows(b: &FakeBackend, n: usize) -> DeviceTensor {
    let v: Vec<f32> = (0..n * 4).map(|i| i as f32).collect();
    b.upload(&HostTensor::from_slice([n, 4], &v).unwrap())
        .unwrap()
}

#[test]
fn cache_write_enqueues_one_launch_writes_in_place_and_the_later_row_wins() {
    let (b, fake) = backend();
    let (mut cache, before) = dense_cache(&b);
    let alias = cache.clone();
    let kv = rows(&b, 4);
    let slots = i32s(&b, &[4], &[4, -1, 0, 4]);
    let params = CacheWriteParams::default();
    // Warm-up: the first op with an index check allocates the flag chunk.
    ops::mla_cache_write(&b, &kv, &slots, &mut cache, &params).unwrap();
    b.synchronize().unwrap();
    fake.take_log();
    ops::mla_cache_write(&b, &kv, &slots, &mut cache, &params).unwrap();
    assert_eq!(
        fake.take_log(),
        ["enter", "launch moemla_mla_cache_write_dense"]
    );
    let addr = |t: &DeviceTensor| Arg::Ptr(b.runner.buffer(t, "t", "t").unwrap().addr);
    let (_, args) = queued(&fake).pop().unwrap();
    assert_eq!(args.len(), 9);
    assert_eq!(args[..3], [addr(&kv), addr(&slots), addr(&cache)]);
    // N, row bytes, slots; then (after the flags) no winner table: 4 rows are scanned.
    assert_eq!(args[3..6], [Arg::I32(4), Arg::I32(16), Arg::I32(6)]);
    assert_eq!(args[7..], [Arg::Ptr(0), Arg::I32(0)]);
    // Row 2 into slot 0; rows 0 and 3 into slot 4, row 3 last; row 1 skipped.
    let mut want = before;
    want[0..4].copy_from_slice(&[8.0, 9.0, 10.0, 11.0]);
    want[16..20].copy_from_slice(&[12.0, 13.0, 14.0, 15.0]);
    assert_eq!(b.download(&alias).unwrap().to_f32_vec().unwrap(), want);
}

#[test]
fn a_bad_slot_surfaces_at_the_next_synchronize_and_its_row_is_not_written() {
    let (b, fake) = backend();
    let (mut cache, before) = dense_cache(&b);
    let kv = rows(&b, 3);
    let slots = i32s(&b, &[3], &[1, 6, -3]);
    ops::mla_cache_write(&b, &kv, &slots, &mut cache, &Default::default()).unwrap();
    assert!(!has(&fake.take_log(), "sync"));
    assert_eq!(
        b.synchronize(),
        Err(Error::IndexOutOfRange {
            op: Op::MlaCacheWrite,
            arg: "slot_mapping",
            index: vec![1],
            value: 6,
            valid: "-1 or [0, 6) (num_blocks * block_size)".into(),
        })
    );
    let mut want = before;
    want[4..8].copy_from_slice(&[0.0, 1.0, 2.0, 3.0]);
    assert_eq!(b.download(&cache).unwrap().to_f32_vec().unwrap(), want);
}

#[test]
fn an_fp8_cache_write_reports_a_non_finite_row_before_a_bad_slot() {
    let (b, fake) = backend();
    let mut cache = b
        .upload(&HostTensor::from_slice([2, 2, 1, 656], &[7u8; 4 * 656]).unwrap())
        .unwrap();
    let mut v = vec![0.5f32; 3 * 576];
    v[576 + 17] = f32::NAN;
    v[2 * 576 + 3] = f32::INFINITY; // its slot is -1: never read
    let kv = b
        .upload(&HostTensor::from_slice([3, 576], &v).unwrap())
        .unwrap();
    let slots = i32s(&b, &[3], &[9, 2, -1]);
    let params = CacheWriteParams {
        kv_format: KvFormat::Fp8DsV32,
    };
    fake.take_log();
    ops::mla_cache_write(&b, &kv, &slots, &mut cache, &params).unwrap();
    let log = fake.take_log();
    assert!(
        log.contains(&"launch moemla_mla_cache_write_fp8_f32".to_string()),
        "{log:?}"
    );
    let (_, args) = queued(&fake).pop().unwrap();
    assert_eq!(args.len(), 8);
    assert_eq!(args[3..5], [Arg::I32(3), Arg::I32(4)]);
    assert_eq!(args[6..], [Arg::Ptr(0), Arg::I32(0)]);
    assert_eq!(
        b.synchronize(),
        Err(Error::Input {
            op: Op::MlaCacheWrite,
            arg: "kv",
            expected: "finite values (kv_format fp8_ds_v32)".into(),
            got: "NaN at row 1 (element [1, 17])".into(),
        })
    );
    // Reported once; neither flagged row was written.
    b.synchronize().unwrap();
    assert_eq!(b.download(&cache).unwrap().as_bytes(), &[7u8; 4 * 656][..]);
}

/// Past `SCAN_ROWS` rows the winner table is emptied and filled in the stream's workspace
/// before the write, which gets its address and mask (the kernels run on the emulator).
#[test]
fn more_rows_than_the_scan_limit_fill_a_winner_table_first() {
    use moemla_kernel_plan::cache_write::SCAN_ROWS;
    let (b, fake) = backend();
    let n = SCAN_ROWS + 1;
    let mut cache = b
        .upload(&HostTensor::from_slice([3, 2, 1, 4], &[0.0f32; 24]).unwrap())
        .unwrap();
    let kv = rows(&b, n);
    let ids: Vec<i32> = (0..n as i32).map(|i| i % 6).collect();
    let slots = i32s(&b, &[n], &ids);
    ops::mla_cache_write(&b, &kv, &slots, &mut cache, &Default::default()).unwrap();
    b.synchronize().unwrap();
    fake.take_log();
    ops::mla_cache_write(&b, &kv, &slots, &mut cache, &Default::default()).unwrap();
    let launches: Vec<(String, Vec<Arg>)> = queued(&fake);
    let names: Vec<&str> = launches.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names[names.len() - 3..],
        [
            "moemla_cache_winner_clear",
            "moemla_cache_winner_insert",
            "moemla_mla_cache_write_dense"
        ]
    );
    let [clear, insert, write] = &launches[launches.len() - 3..] else {
        unreachable!()
    };
    // 1025 rows: a table of 4096 entries (mask 4095).
    let (table, mask) = (clear.1[0], Arg::I32(4095));
    assert!(matches!(table, Arg::Ptr(a) if a != 0), "{table:?}");
    assert_eq!(clear.1, [table, mask]);
    let addr = Arg::Ptr(b.runner.buffer(&slots, "t", "t").unwrap().addr);
    let n = Arg::I32(n as i32);
    assert_eq!(insert.1, [addr, n, Arg::I32(6), table, mask]);
    assert_eq!(write.1[7..], [table, mask]);
    // No allocation after the first call: the table lies in the reused workspace.
    assert!(!has(&fake.take_log(), "alloc"));
    // The later row wins each slot: the last of rows 1019..=1024 naming it.
    let got = b.download(&cache).unwrap().to_f32_vec().unwrap();
    for slot in 0..6 {
        let row = (1019..=1024).find(|r| r % 6 == slot).unwrap();
        let want: Vec<f32> = (0..4).map(|c| (row * 4 + c) as f32).collect();
        assert_eq!(got[slot * 4..][..4], want[..], "slot {slot}");
    }
}

#[test]
fn supported_lists_cache_write_dense_and_fp8_in_every_dtype() {
    use moemla_core::{Format, OpSupport};
    let all = crate::supported();
    for dtype in DType::FLOATS {
        assert!(all.contains(&OpSupport::new(Op::MlaCacheWrite, dtype)));
        let fp8 = OpSupport::with_format(Op::MlaCacheWrite, dtype, Format::Fp8DsV32);
        assert!(all.contains(&fp8), "{dtype:?}");
    }
}
