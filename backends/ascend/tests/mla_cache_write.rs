//! mla_cache_write on the CANN emulator against the contract's rule, computed on the host:
//! rows written in order at their slots (-1 skipped, the later row wins a slot), every
//! other cache byte unchanged.

mod common;

use moemla_core::{ops, Backend, CacheWriteParams, DType, Error, HostTensor, KvFormat, Op};

/// The cache after the write, by the contract: `cache` with row i of `kv` copied to slot
/// `slots[i]` for each i in order, -1 skipped. Byte rows of `row_bytes`.
fn reference(cache: &[u8], kv: &[u8], slots: &[i32], row_bytes: usize) -> Vec<u8> {
    let mut out = cache.to_vec();
    for (i, &s) in slots.iter().enumerate() {
        if s >= 0 {
            let s = s as usize;
            out[s * row_bytes..(s + 1) * row_bytes]
                .copy_from_slice(&kv[i * row_bytes..(i + 1) * row_bytes]);
        }
    }
    out
}

/// Writes `slots.len()` rows of width `d` into a [3, 16, 1, d] cache of `dtype` and
/// compares the whole cache byte for byte with [`reference`].
fn check(dtype: DType, d: usize, slots: &[i32]) {
    let be = common::backend();
    let (nb, bs, n) = (3, 16, slots.len());
    let cache_host = HostTensor::from_f32_as(
        [nb, bs, 1, d],
        &common::values(7, nb * bs * d, -3.0, 3.0),
        dtype,
    )
    .unwrap();
    let kv_host =
        HostTensor::from_f32_as([n, d], &common::values(8, n * d, -1.0, 1.0), dtype).unwrap();
    let mut cache = be.upload(&cache_host).unwrap();
    let kv = be.upload(&kv_host).unwrap();
    let slot_t = be
        .upload(&HostTensor::from_slice([n], slots).unwrap())
        .unwrap();
    ops::mla_cache_write(&be, &kv, &slot_t, &mut cache, &CacheWriteParams::default())
        .unwrap_or_else(|e| panic!("{dtype} {slots:?}: {e}"));
    let got = be.download(&cache).unwrap();
    let want = reference(
        cache_host.as_bytes(),
        kv_host.as_bytes(),
        slots,
        d * dtype.size_in_bytes(),
    );
    assert!(got.as_bytes() == want.as_slice(), "{dtype} {slots:?}");
}

#[test]
fn rows_in_order_are_scattered_directly() {
    for dtype in [DType::F16, DType::BF16] {
        check(dtype, 40, &[17, 0, 47, 16, 5]);
    }
}

#[test]
fn minus_one_rows_are_skipped_and_the_later_row_wins_a_slot() {
    // aclnnScatterPaKvCache takes neither -1 nor a repeated slot (the emulator fails on
    // both, as their result is undefined on CANN): the backend writes only the winners.
    for dtype in [DType::F16, DType::BF16] {
        check(dtype, 72, &[3, -1, 20, 3, 47, -1, 20, 21, 3]);
    }
    // Nothing left to write: the cache is untouched.
    check(DType::F16, 8, &[-1, -1]);
}

#[test]
fn f32_rows_are_copied_one_by_one() {
    // aclnnScatterPaKvCache takes no FLOAT on A2/A3: F32 goes through aclnnInplaceCopy per
    // written row, with the same -1 / later-row-wins rule.
    check(DType::F32, 24, &[3, -1, 20, 3, 47, 0]);
}

#[test]
fn the_fp8_cache_is_unsupported_with_a_reason() {
    let be = common::backend();
    let kv = be
        .upload(&HostTensor::from_f32_as([1, 576], &[0.5; 576], DType::BF16).unwrap())
        .unwrap();
    let slots = be
        .upload(&HostTensor::from_slice([1], &[0i32]).unwrap())
        .unwrap();
    let mut cache = be.alloc_zeroed(&[1, 16, 1, 656].into(), DType::U8).unwrap();
    let params = CacheWriteParams {
        kv_format: KvFormat::Fp8DsV32,
    };
    assert!(matches!(
        ops::mla_cache_write(&be, &kv, &slots, &mut cache, &params),
        Err(Error::Unsupported { .. })
    ));
    let info = be.info();
    assert!(info.supports(Op::MlaCacheWrite, DType::BF16));
    assert!(info.supports(Op::MlaCacheWrite, DType::F32));
    assert!(info
        .notes
        .iter()
        .any(|n| n.starts_with("unsupported: mla_cache_write fp8_ds_v32")));
}

#[test]
fn a_bad_slot_is_an_input_error_and_nothing_is_written() {
    let be = common::backend();
    let cache_host = HostTensor::from_f32_as([2, 16, 1, 8], &[1.5; 256], DType::F16).unwrap();
    let mut cache = be.upload(&cache_host).unwrap();
    let kv = be
        .upload(&HostTensor::from_f32_as([3, 8], &[0.25; 24], DType::F16).unwrap())
        .unwrap();
    let slots = be
        .upload(&HostTensor::from_slice([3], &[0i32, 32, 1]).unwrap())
        .unwrap();
    match ops::mla_cache_write(&be, &kv, &slots, &mut cache, &CacheWriteParams::default()) {
        Err(Error::IndexOutOfRange { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(be.download(&cache).unwrap().as_bytes() == cache_host.as_bytes());
}
