//! `mla_kv_quantize_into` and `dsa_indexer_topk_into`: one test per rule on the caller's
//! outputs (contract shape, dtype, this backend, no aliasing), run from a stub backend
//! whose `_into` methods answer that the call reached them; and the trait's default
//! `_into` methods (run the allocating op, then `copy_into`) on a backend without its own.

mod common;

use common::{assert_reached, reached, zeros, Buf};
use moemla_core::calls::{DsaIndexerTopkCall, DsaIndexerTopkOutput, MlaKvQuantizeCall};
use moemla_core::ops;
use moemla_core::{
    Backend, BackendInfo, DType, DeviceBuffer, DeviceTensor, Error, HostTensor, IndexerParams,
    KvFormat, KvQuantizeParams, Op, OpSupport, Result, Shape,
};
use std::any::Any;
use std::sync::Arc;

/// A backend named `name` listing every v2 variant, whose two `_into` methods answer
/// [`common::REACHED`].
struct Stub {
    name: &'static str,
}

impl Backend for Stub {
    fn name(&self) -> &str {
        self.name
    }
    fn info(&self) -> BackendInfo {
        common::info(self.name, OpSupport::all_v2())
    }
    common::host_memory!();
    common::unused_v1_ops!();
    fn mla_kv_quantize_into(&self, _: &MlaKvQuantizeCall<'_>, _: &DeviceTensor) -> Result<()> {
        Err(reached(self.name))
    }
    fn dsa_indexer_topk_into(
        &self,
        _: &DsaIndexerTopkCall<'_>,
        _: &DeviceTensor,
        _: &DeviceTensor,
    ) -> Result<()> {
        Err(reached(self.name))
    }
}

fn fp8() -> KvQuantizeParams {
    KvQuantizeParams {
        kv_format: KvFormat::Fp8DsV32,
    }
}

fn quantize(b: &dyn Backend, kv_fp8: &DeviceTensor) -> Result<()> {
    let kv = zeros(b, &[3, 576], DType::BF16);
    ops::mla_kv_quantize_into(b, &kv, &fp8(), kv_fp8)
}

/// A valid indexer call (B 2, Sq 1, Hi 2, Di 4, 2 blocks of 4, top_k 3).
struct Indexer {
    q: DeviceTensor,
    weights: DeviceTensor,
    k_cache: DeviceTensor,
    table: DeviceTensor,
    lens: DeviceTensor,
}

impl Indexer {
    fn new(b: &dyn Backend) -> Indexer {
        Indexer {
            q: zeros(b, &[2, 1, 2, 4], DType::F16),
            weights: zeros(b, &[2, 1, 2], DType::F32),
            k_cache: zeros(b, &[2, 4, 4], DType::F16),
            table: zeros(b, &[2, 1], DType::I32),
            lens: zeros(b, &[2], DType::I32),
        }
    }
    fn run(&self, b: &dyn Backend, ids: &DeviceTensor, scores: &DeviceTensor) -> Result<()> {
        let p = IndexerParams {
            top_k: 3,
            causal: false,
        };
        let Indexer {
            q,
            weights,
            k_cache,
            table,
            lens,
        } = self;
        ops::dsa_indexer_topk_into(b, q, weights, k_cache, table, lens, &p, ids, scores)
    }
}

#[test]
fn valid_outputs_reach_the_backend() {
    let b = Stub { name: "stub" };
    assert_reached(quantize(&b, &zeros(&b, &[3, 656], DType::U8)));
    let call = Indexer::new(&b);
    let ids = zeros(&b, &[2, 1, 3], DType::I32);
    let scores = zeros(&b, &[2, 1, 3], DType::F32);
    assert_reached(call.run(&b, &ids, &scores));
}

#[test]
fn outputs_must_have_the_contract_shape() {
    let b = Stub { name: "stub" };
    let err = quantize(&b, &zeros(&b, &[3, 576], DType::U8)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dim {
                op: Op::MlaKvQuantize,
                arg: "kv_fp8",
                dim: 1,
                dim_name: "656",
                got: 576,
                ..
            }
        ),
        "{err}"
    );
    let err = quantize(&b, &zeros(&b, &[3 * 656], DType::U8)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rank {
                op: Op::MlaKvQuantize,
                arg: "kv_fp8",
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{err}"
    );
    let call = Indexer::new(&b);
    let ids = zeros(&b, &[2, 1, 3], DType::I32);
    let scores = zeros(&b, &[2, 1, 4], DType::F32);
    let err = call.run(&b, &ids, &scores).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Dim {
                op: Op::DsaIndexerTopk,
                arg: "topk_scores",
                dim: 2,
                dim_name: "top_k",
                got: 4,
                ..
            }
        ),
        "{err}"
    );
    let ids = zeros(&b, &[1, 1, 3], DType::I32);
    let err = call.run(&b, &ids, &zeros(&b, &[2, 1, 3], DType::F32));
    assert!(
        matches!(
            err,
            Err(Error::Dim {
                op: Op::DsaIndexerTopk,
                arg: "topk_indices",
                dim: 0,
                dim_name: "B",
                got: 1,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn outputs_must_have_the_contract_dtype() {
    let b = Stub { name: "stub" };
    let err = quantize(&b, &zeros(&b, &[3, 656], DType::I32)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DType {
                op: Op::MlaKvQuantize,
                arg: "kv_fp8",
                got: DType::I32,
                ..
            }
        ),
        "{err}"
    );
    let call = Indexer::new(&b);
    let f32s = zeros(&b, &[2, 1, 3], DType::F32);
    let err = call.run(&b, &f32s, &zeros(&b, &[2, 1, 3], DType::F32));
    assert!(
        matches!(
            err,
            Err(Error::DType {
                op: Op::DsaIndexerTopk,
                arg: "topk_indices",
                got: DType::F32,
                ..
            })
        ),
        "{err:?}"
    );
    let i32s = zeros(&b, &[2, 1, 3], DType::I32);
    let err = call.run(&b, &i32s, &zeros(&b, &[2, 1, 3], DType::I32));
    assert!(
        matches!(
            err,
            Err(Error::DType {
                op: Op::DsaIndexerTopk,
                arg: "topk_scores",
                got: DType::I32,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn outputs_must_be_on_the_backend() {
    let b = Stub { name: "stub" };
    let other = Stub { name: "other" };
    let err = quantize(&b, &zeros(&other, &[3, 656], DType::U8)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::WrongBackend {
                op: "mla_kv_quantize",
                arg: "kv_fp8",
                expected,
                got,
            } if expected == "stub" && got == "other"
        ),
        "{err}"
    );
    let call = Indexer::new(&b);
    let ids = zeros(&b, &[2, 1, 3], DType::I32);
    let scores = zeros(&other, &[2, 1, 3], DType::F32);
    let err = call.run(&b, &ids, &scores).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::WrongBackend {
                op: "dsa_indexer_topk",
                arg: "topk_scores",
                got,
                ..
            } if got == "other"
        ),
        "{err}"
    );
}

/// Two tensors of the stub over one buffer: `dims_a`/`a` and `dims_b`/`b`.
fn shared(dims_a: &[usize], a: DType, dims_b: &[usize], b: DType) -> [DeviceTensor; 2] {
    let buf: Arc<dyn DeviceBuffer> = Arc::new(Buf(HostTensor::zeros(dims_a, a).unwrap()));
    [
        DeviceTensor::new(buf.clone(), "stub".into(), dims_a, a),
        DeviceTensor::new(buf, "stub".into(), dims_b, b),
    ]
}

#[track_caller]
fn assert_aliases(r: Result<()>, want_op: Op, want_arg: &str, other: &str) {
    match r {
        Err(Error::Input { op, arg, got, .. })
            if op == want_op && arg == want_arg && got.contains(&format!("`{other}`")) => {}
        other => panic!("expected an aliasing error on `{want_arg}`, got {other:?}"),
    }
}

#[test]
fn outputs_alias_no_input_and_no_other_output() {
    let b = Stub { name: "stub" };
    let [kv, kv_fp8] = shared(&[3, 576], DType::BF16, &[3, 656], DType::U8);
    let r = ops::mla_kv_quantize_into(&b, &kv, &fp8(), &kv_fp8);
    assert_aliases(r, Op::MlaKvQuantize, "kv_fp8", "kv");

    let mut call = Indexer::new(&b);
    let [weights, scores] = shared(&[2, 1, 2], DType::F32, &[2, 1, 3], DType::F32);
    call.weights = weights;
    let ids = zeros(&b, &[2, 1, 3], DType::I32);
    assert_aliases(
        call.run(&b, &ids, &scores),
        Op::DsaIndexerTopk,
        "topk_scores",
        "weights",
    );
    let call = Indexer::new(&b);
    let [ids, scores] = shared(&[2, 1, 3], DType::I32, &[2, 1, 3], DType::F32);
    assert_aliases(
        call.run(&b, &ids, &scores),
        Op::DsaIndexerTopk,
        "topk_scores",
        "topk_indices",
    );
    let [cache, ids] = shared(&[2, 4, 4], DType::F16, &[2, 1, 3], DType::I32);
    let call = Indexer {
        k_cache: cache,
        ..Indexer::new(&b)
    };
    let scores = zeros(&b, &[2, 1, 3], DType::F32);
    assert_aliases(
        call.run(&b, &ids, &scores),
        Op::DsaIndexerTopk,
        "topk_indices",
        "k_cache",
    );
}

/// A backend with the allocating ops and `copy_into` only (its buffers are host tensors
/// behind a lock), so the `_into` forms take the trait's default: run, then copy.
struct Copying;

/// A lockable host buffer of [`Copying`].
#[derive(Debug)]
struct Cell(std::sync::Mutex<HostTensor>);

impl DeviceBuffer for Cell {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn cell(t: &DeviceTensor) -> std::sync::MutexGuard<'_, HostTensor> {
    t.buffer::<Cell>("copying", "test", "t")
        .unwrap()
        .0
        .lock()
        .unwrap()
}

impl Backend for Copying {
    fn name(&self) -> &str {
        "copying"
    }
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "copying".into(),
            ..Stub { name: "copying" }.info()
        }
    }
    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        self.upload(&HostTensor::zeros(shape.clone(), dtype)?)
    }
    fn upload(&self, h: &HostTensor) -> Result<DeviceTensor> {
        let buf = Arc::new(Cell(std::sync::Mutex::new(h.clone())));
        Ok(DeviceTensor::new(
            buf,
            "copying".into(),
            h.shape().clone(),
            h.dtype(),
        ))
    }
    fn download(&self, t: &DeviceTensor) -> Result<HostTensor> {
        Ok(cell(t).clone())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn copy_into(
        &self,
        src: &DeviceTensor,
        src_offset: usize,
        dst: &DeviceTensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let size = src.dtype().size_in_bytes();
        let from = cell(src).as_bytes()[src_offset * size..(src_offset + len) * size].to_vec();
        let at = dst_offset * size;
        cell(dst).as_bytes_mut()[at..at + from.len()].copy_from_slice(&from);
        Ok(())
    }
    common::unused_v1_ops!();
    fn mla_kv_quantize(&self, call: &MlaKvQuantizeCall<'_>) -> Result<DeviceTensor> {
        let bytes: Vec<u8> = (0..call.rows * 656).map(|i| (i % 251) as u8).collect();
        self.upload(&HostTensor::from_bytes([call.rows, 656], DType::U8, bytes)?)
    }
    fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        let n = call.batch * call.s_q * call.params.top_k;
        let dims = [call.batch, call.s_q, call.params.top_k];
        let ids: Vec<i32> = (0..n as i32).map(|i| 3 * i - 1).collect();
        let scores: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        Ok(DsaIndexerTopkOutput {
            topk_indices: self.upload(&HostTensor::from_slice(dims, &ids)?)?,
            topk_scores: self.upload(&HostTensor::from_slice(dims, &scores)?)?,
        })
    }
}

#[test]
fn the_default_into_forms_run_the_op_and_copy_its_results_into_the_callers_tensors() {
    let b = Copying;
    let out = zeros(&b, &[3, 656], DType::U8);
    quantize(&b, &out).unwrap();
    let want: Vec<u8> = (0..3 * 656).map(|i| (i % 251) as u8).collect();
    assert_eq!(cell(&out).as_bytes(), &want[..]);

    let call = Indexer::new(&b);
    let ids = zeros(&b, &[2, 1, 3], DType::I32);
    let scores = zeros(&b, &[2, 1, 3], DType::F32);
    call.run(&b, &ids, &scores).unwrap();
    assert_eq!(cell(&ids).to_i32_vec().unwrap(), [-1, 2, 5, 8, 11, 14]);
    let got = cell(&scores).to_f32_vec().unwrap();
    assert_eq!(got, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
}
