//! `mla_cache_write` bad input: one test per rule of its table in docs/ops.md (typed error,
//! argument, dim), the capability gate (dense on a backend without the op, `fp8_ds_v32` on
//! one that does not list it), and the shared host-side checks of `moemla_core::indices`
//! (slots, then finite rows), run from a stub backend.

mod common;

use common::{assert_reached, reached, zeros, Buf};
use moemla_core::calls::MlaCacheWriteCall;
use moemla_core::ops;
use moemla_core::{
    indices, Backend, BackendInfo, CacheWriteParams, DType, DeviceTensor, Error, HostTensor,
    KvFormat, Op, OpSupport, Result,
};
use std::sync::Arc;

/// Lists `supported`; with `implements`, runs the shared checks in `mla_cache_write` and
/// then answers that the call reached it (else keeps the default method).
struct Stub {
    supported: Vec<OpSupport>,
    implements: bool,
}

fn host(t: &DeviceTensor) -> &HostTensor {
    common::host("stub", t)
}

impl Backend for Stub {
    fn name(&self) -> &str {
        "stub"
    }
    fn info(&self) -> BackendInfo {
        common::info("stub", self.supported.clone())
    }
    common::host_memory!();
    common::unused_v1_ops!();
    fn mla_cache_write(&self, call: &MlaCacheWriteCall<'_>) -> Result<()> {
        if !self.implements {
            return Err(Error::Unsupported {
                backend: "stub".into(),
                op: Op::MlaCacheWrite,
                what: call.dtype.to_string(),
                reason: "not implemented".into(),
            });
        }
        let slots = host(call.slot_mapping).to_i32_vec()?;
        if call.params.kv_format == KvFormat::Fp8DsV32 {
            let kv = host(call.kv).to_f32_vec()?;
            indices::check_cache_rows_finite(call, &kv, &slots)?;
        }
        indices::check_cache_slots(call, &slots)?;
        Err(reached("stub"))
    }
}

fn full() -> Stub {
    Stub {
        supported: OpSupport::all_v2(),
        implements: true,
    }
}

fn ints(b: &dyn Backend, v: &[i32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice([v.len()], v).unwrap())
        .unwrap()
}

fn dense() -> CacheWriteParams {
    CacheWriteParams::default()
}

fn fp8() -> CacheWriteParams {
    CacheWriteParams {
        kv_format: KvFormat::Fp8DsV32,
    }
}

/// A valid dense call: 3 rows of 8 into a cache of 2 blocks of 4 slots.
struct Call {
    kv: DeviceTensor,
    slots: DeviceTensor,
    cache: DeviceTensor,
}

impl Call {
    fn dense(b: &dyn Backend) -> Call {
        Call {
            kv: zeros(b, &[3, 8], DType::BF16),
            slots: ints(b, &[0, -1, 7]),
            cache: zeros(b, &[2, 4, 1, 8], DType::BF16),
        }
    }
    fn fp8(b: &dyn Backend) -> Call {
        Call {
            kv: zeros(b, &[3, 576], DType::F16),
            slots: ints(b, &[0, -1, 7]),
            cache: zeros(b, &[2, 4, 1, 656], DType::U8),
        }
    }
    fn run(&mut self, b: &dyn Backend, p: &CacheWriteParams) -> Result<()> {
        ops::mla_cache_write(b, &self.kv, &self.slots, &mut self.cache, p)
    }
}

#[track_caller]
fn assert_rank(r: Result<()>, want: &str) {
    match r {
        Err(Error::Rank { op, arg, .. }) if op == Op::MlaCacheWrite && arg == want => {}
        other => panic!("expected a Rank error on `{want}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_dtype(r: Result<()>, want: &str) {
    match r {
        Err(Error::DType { op, arg, .. }) if op == Op::MlaCacheWrite && arg == want => {}
        other => panic!("expected a DType error on `{want}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_dim(r: Result<()>, want: &str, want_dim: usize, want_name: &str) {
    match r {
        Err(Error::Dim {
            op,
            arg,
            dim,
            dim_name,
            ..
        }) if op == Op::MlaCacheWrite
            && arg == want
            && dim == want_dim
            && dim_name == want_name => {}
        other => panic!("expected a Dim error on `{want}` dim {want_dim}, got {other:?}"),
    }
}

#[test]
fn valid_calls_reach_the_backend() {
    let b = full();
    assert_reached(Call::dense(&b).run(&b, &dense()));
    assert_reached(Call::fp8(&b).run(&b, &fp8()));
}

#[test]
fn every_tensor_must_belong_to_the_backend() {
    let b = full();
    let mut c = Call::dense(&b);
    // A tensor stamped with another backend's name.
    c.cache = DeviceTensor::new(
        Arc::new(Buf(host(&c.cache).clone())),
        "elsewhere".into(),
        c.cache.shape().clone(),
        c.cache.dtype(),
    );
    match c.run(&b, &dense()) {
        Err(Error::WrongBackend { op, arg, .. }) => {
            assert_eq!((op, arg), ("mla_cache_write", "kv_cache"))
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn ranks() {
    let b = full();
    let mut c = Call::dense(&b);
    c.kv = zeros(&b, &[24], DType::BF16);
    assert_rank(c.run(&b, &dense()), "kv");
    let mut c = Call::dense(&b);
    c.slots = zeros(&b, &[3, 1], DType::I32);
    assert_rank(c.run(&b, &dense()), "slot_mapping");
    let mut c = Call::dense(&b);
    c.cache = zeros(&b, &[2, 4, 8], DType::BF16);
    assert_rank(c.run(&b, &dense()), "kv_cache");
}

#[test]
fn dtypes() {
    let b = full();
    let mut c = Call::dense(&b);
    c.kv = zeros(&b, &[3, 8], DType::I32);
    assert_dtype(c.run(&b, &dense()), "kv");
    let mut c = Call::dense(&b);
    c.slots = zeros(&b, &[3], DType::F32);
    assert_dtype(c.run(&b, &dense()), "slot_mapping");
    // Dense: the cache holds the run dtype of kv.
    let mut c = Call::dense(&b);
    c.cache = zeros(&b, &[2, 4, 1, 8], DType::F16);
    assert_dtype(c.run(&b, &dense()), "kv_cache");
    // fp8_ds_v32: U8 rows.
    let mut c = Call::fp8(&b);
    c.cache = zeros(&b, &[2, 4, 1, 656], DType::F16);
    assert_dtype(c.run(&b, &fp8()), "kv_cache");
}

#[test]
fn dims() {
    let b = full();
    let mut c = Call::dense(&b);
    c.kv = zeros(&b, &[0, 8], DType::BF16);
    c.slots = zeros(&b, &[0], DType::I32);
    assert_dim(c.run(&b, &dense()), "kv", 0, "N");
    let mut c = Call::dense(&b);
    c.kv = zeros(&b, &[3, 0], DType::BF16);
    assert_dim(c.run(&b, &dense()), "kv", 1, "Dqk");
    let mut c = Call::dense(&b);
    c.slots = ints(&b, &[0, 1]);
    assert_dim(c.run(&b, &dense()), "slot_mapping", 0, "N");
    let mut c = Call::dense(&b);
    c.cache = zeros(&b, &[0, 4, 1, 8], DType::BF16);
    assert_dim(c.run(&b, &dense()), "kv_cache", 0, "num_blocks");
    let mut c = Call::dense(&b);
    c.cache = zeros(&b, &[2, 0, 1, 8], DType::BF16);
    assert_dim(c.run(&b, &dense()), "kv_cache", 1, "block_size");
    let mut c = Call::dense(&b);
    c.cache = zeros(&b, &[2, 4, 2, 8], DType::BF16);
    assert_dim(c.run(&b, &dense()), "kv_cache", 2, "Hkv");
    let mut c = Call::dense(&b);
    c.cache = zeros(&b, &[2, 4, 1, 9], DType::BF16);
    assert_dim(c.run(&b, &dense()), "kv_cache", 3, "Dqk");
    // fp8_ds_v32: Dqk 576 and 656-byte rows.
    let mut c = Call::fp8(&b);
    c.kv = zeros(&b, &[3, 512], DType::F16);
    assert_dim(c.run(&b, &fp8()), "kv", 1, "Dqk");
    let mut c = Call::fp8(&b);
    c.cache = zeros(&b, &[2, 4, 1, 576], DType::U8);
    assert_dim(c.run(&b, &fp8()), "kv_cache", 3, "row bytes");
}

#[test]
fn the_cache_shares_no_buffer_with_an_input() {
    let b = full();
    let mut c = Call::dense(&b);
    let mut cache = c.kv.reshape([3, 1, 1, 8]).unwrap();
    match ops::mla_cache_write(&b, &c.kv, &c.slots, &mut cache, &dense()) {
        Err(Error::Input { op, arg, got, .. }) => {
            assert_eq!((op, arg), (Op::MlaCacheWrite, "kv_cache"));
            assert!(got.contains("`kv`"), "{got}");
        }
        r => panic!("{r:?}"),
    }
    c.cache = zeros(&b, &[2, 4, 1, 8], DType::BF16);
    assert_reached(c.run(&b, &dense()));
}

#[test]
fn slots_outside_the_cache_name_the_first_bad_position() {
    let b = full();
    for (slots, at, value) in [
        (vec![0, 8, -1], 1, 8),
        (vec![-2, 9, 0], 0, -2),
        (vec![7, -1, i32::MAX], 2, i32::MAX),
    ] {
        let mut c = Call::dense(&b);
        c.slots = ints(&b, &slots);
        match c.run(&b, &dense()) {
            Err(Error::IndexOutOfRange {
                op,
                arg,
                index,
                value: v,
                valid,
            }) => {
                assert_eq!((op, arg), (Op::MlaCacheWrite, "slot_mapping"));
                assert_eq!((index, v), (vec![at], i64::from(value)));
                assert_eq!(valid, "-1 or [0, 8) (num_blocks * block_size)");
            }
            r => panic!("{slots:?}: {r:?}"),
        }
    }
}

#[test]
fn fp8_rows_must_be_finite_except_skipped_ones() {
    let b = full();
    let mut c = Call::fp8(&b);
    let mut v = vec![0.5f32; 3 * 576];
    v[576 + 4] = f32::NAN; // row 1: slot -1, never read
    v[2 * 576 + 513] = f32::INFINITY;
    c.kv = b
        .upload(&HostTensor::from_slice([3, 576], &v).unwrap())
        .unwrap();
    match c.run(&b, &fp8()) {
        Err(Error::Input { op, arg, got, .. }) => {
            assert_eq!((op, arg), (Op::MlaCacheWrite, "kv"));
            assert!(got.contains("row 2") && got.contains("[2, 513]"), "{got}");
        }
        r => panic!("{r:?}"),
    }
    // Row 2 skipped too: nothing non-finite is read.
    c.slots = ints(&b, &[0, -1, -1]);
    assert_reached(c.run(&b, &fp8()));
    // Dense rows are copied, never checked.
    let mut d = Call::dense(&b);
    d.kv = b
        .upload(&HostTensor::from_slice([3, 8], &[f32::NAN; 24]).unwrap())
        .unwrap();
    d.cache = zeros(&b, &[2, 4, 1, 8], DType::F32);
    assert_reached(d.run(&b, &dense()));
}

#[test]
fn backends_without_the_op_say_unsupported() {
    // The default method: dense reaches it and it answers Unsupported.
    let b = Stub {
        supported: OpSupport::all_v1(),
        implements: false,
    };
    match Call::dense(&b).run(&b, &dense()) {
        Err(Error::Unsupported { op, .. }) => assert_eq!(op, Op::MlaCacheWrite),
        r => panic!("{r:?}"),
    }
    // fp8_ds_v32 without the format listed: core refuses it before the backend.
    let b = Stub {
        supported: OpSupport::all_v1(),
        implements: true,
    };
    match Call::fp8(&b).run(&b, &fp8()) {
        Err(Error::Unsupported { op, what, .. }) => {
            assert_eq!((op, what.as_str()), (Op::MlaCacheWrite, "fp8_ds_v32 F16"))
        }
        r => panic!("{r:?}"),
    }
    // Bad input is the same error whether the backend has the op or not.
    let mut c = Call::dense(&b);
    c.slots = ints(&b, &[0, 1]);
    assert_dim(c.run(&b, &dense()), "slot_mapping", 0, "N");
}

#[test]
fn params_default_to_dense_and_reject_unknown_fields() {
    let p: CacheWriteParams = serde_json::from_str("{}").unwrap();
    assert_eq!(p.kv_format, KvFormat::Dense);
    let p: CacheWriteParams = serde_json::from_str(r#"{"kv_format":"fp8_ds_v32"}"#).unwrap();
    assert_eq!(p, fp8());
    assert!(serde_json::from_str::<CacheWriteParams>(r#"{"format":"dense"}"#).is_err());
    assert_eq!(Op::from_name("mla_cache_write"), Some(Op::MlaCacheWrite));
}
