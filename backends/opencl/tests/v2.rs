//! Contract-v2 behaviour on the OpenCL device beyond the golden set: sqrt-softplus routing
//! against an f64 reference, the index checks of hash routing, sparse attention and the
//! indexer (reported by the call or the next synchronize, naming the first bad position),
//! unread entries left unchecked, mla_kv_quantize's input error, and the indexer feeding
//! sparse attention equal to dense decode when top_k covers the sequence.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{assert_close, backend, float_tensor, int_tensor, read_f32, read_i32};
use moemla_core::ops::{self, RouteInputs, SparseDecodeInputs};
use moemla_core::{
    Backend, DType, Error, GroupSelect, IndexerParams, KvQuantizeParams, MlaDecodeParams, Op,
    Result, RouteParams, ScoreFunc, SparseDecodeParams,
};

/// Index errors belong to the backend's queue (the next synchronize of any caller reports
/// them), so this binary's tests run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The index error of an op: from the call, or else from the next synchronize.
fn index_error<T>(be: &dyn Backend, result: Result<T>) -> Error {
    match result {
        Err(e) => e,
        Ok(_) => be.synchronize().expect_err("an index error"),
    }
}

/// Asserts `e` is `IndexOutOfRange` of (op, arg, index, value).
fn assert_index_error(e: Error, want: (Op, &str, Vec<usize>, i64)) {
    match e {
        Error::IndexOutOfRange {
            op,
            arg,
            index,
            value,
            ..
        } => assert_eq!((op, arg, index, value), want),
        other => panic!("expected IndexOutOfRange {want:?}, got {other}"),
    }
}

fn v4_params(top_k: usize) -> RouteParams {
    RouteParams {
        score_func: ScoreFunc::Sqrtsoftplus,
        top_k,
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.5,
    }
}

#[test]
fn every_v2_op_and_variant_is_listed() {
    let Some(be) = backend() else { return };
    assert_eq!(be.info().supported, moemla_core::OpSupport::all_v2());
}

#[test]
fn sqrtsoftplus_routing_matches_the_f64_reference() {
    let _serial = serial();
    let Some(be) = backend() else { return };
    let (t, e) = (9, 64);
    // Logits up to 30: both branches of softplus (x > 20 is x itself).
    let raw = common::uniform(41, t * e, -8.0, 30.0);
    for dtype in [DType::F32, DType::BF16] {
        let (logits, logits64) = float_tensor(&*be, &[t, e], &raw, dtype);
        let p = RouteParams {
            n_group: 4,
            topk_group: 2,
            group_select: GroupSelect::Top2Sum,
            ..v4_params(6)
        };
        let out = ops::moe_route(&*be, &logits, None, &p).unwrap();
        let ids = read_i32(&*be, &out.topk_ids);
        let weights = read_f32(&*be, &out.topk_weights);
        let want = common::route_reference(&logits64, None, e, &p);
        for (tok, row) in want.iter().enumerate() {
            for (j, &(id, w)) in row.iter().enumerate() {
                assert_eq!(ids[tok * 6 + j], id as i32, "token {tok} slot {j}");
                assert_close("weight", &[weights[tok * 6 + j]], &[w], 1e-5);
            }
        }
    }
}

#[test]
fn hash_routing_reads_each_tokens_row_and_checks_the_tables() {
    let _serial = serial();
    let Some(be) = backend() else { return };
    let (t, e, k, vocab) = (4, 16, 3, 6);
    let raw = common::uniform(5, t * e, -3.0, 3.0);
    let (logits, logits64) = float_tensor(&*be, &[t, e], &raw, DType::F32);
    // Row 5 is bad (an id of E) but no token reads it.
    let mut table: Vec<i32> = (0..vocab * k).map(|i| ((i * 7) % e) as i32).collect();
    table[5 * k + 1] = e as i32;
    let tid2eid = int_tensor(&*be, &[vocab, k], &table);
    let input_ids = int_tensor(&*be, &[t], &[2, 0, 4, 2]);
    let p = v4_params(k);
    let inputs = RouteInputs::new(&logits).with_hash(&input_ids, &tid2eid);
    let out = ops::moe_route_with(&*be, inputs, &p).unwrap();
    let ids = read_i32(&*be, &out.topk_ids);
    let weights = read_f32(&*be, &out.topk_weights);
    for (tok, &token) in [2usize, 0, 4, 2].iter().enumerate() {
        let row = &table[token * k..][..k];
        assert_eq!(&ids[tok * k..][..k], row, "token {tok}");
        let s: Vec<f64> = row
            .iter()
            .map(|&id| logits64[tok * e + id as usize].exp().ln_1p().sqrt())
            .collect();
        let sum: f64 = s.iter().sum();
        let want: Vec<f64> = s.iter().map(|v| v / sum * 1.5).collect();
        assert_close("weights", &weights[tok * k..][..k], &want, 1e-5);
    }

    // A token id outside [0, vocab): named by its position, before any table error.
    let bad_ids = int_tensor(&*be, &[t], &[2, 0, 6, 5]);
    let inputs = RouteInputs::new(&logits).with_hash(&bad_ids, &tid2eid);
    let err = index_error(&*be, ops::moe_route_with(&*be, inputs, &p));
    assert_index_error(err, (Op::MoeRoute, "input_ids", vec![2], 6));
    // A read row with an id outside [0, E), then one repeating an id.
    let reads_bad_row = int_tensor(&*be, &[t], &[1, 5, 0, 0]);
    let inputs = RouteInputs::new(&logits).with_hash(&reads_bad_row, &tid2eid);
    let err = index_error(&*be, ops::moe_route_with(&*be, inputs, &p));
    assert_index_error(err, (Op::MoeRoute, "tid2eid", vec![5, 1], e as i64));
    table[5 * k + 1] = table[5 * k];
    let repeats = int_tensor(&*be, &[vocab, k], &table);
    let inputs = RouteInputs::new(&logits).with_hash(&reads_bad_row, &repeats);
    let err = index_error(&*be, ops::moe_route_with(&*be, inputs, &p));
    assert_index_error(
        err,
        (Op::MoeRoute, "tid2eid", vec![5, 1], table[5 * k] as i64),
    );
    // Bad entries are found in token order (as the contract's check does), not table
    // order: token 0 reads row 4 (a repeat at column 1), token 1 row 1 (E at column 2).
    let mut two_bad: Vec<i32> = (0..vocab * k).map(|i| ((i * 7) % e) as i32).collect();
    two_bad[k + 2] = e as i32;
    two_bad[4 * k + 1] = two_bad[4 * k];
    let two_bad = int_tensor(&*be, &[vocab, k], &two_bad);
    for (tokens, want, valid) in [
        ([4, 1, 0, 0], vec![4, 1], "[0, 16), distinct within the row"),
        ([0, 1, 4, 0], vec![1, 2], "[0, 16) (E)"),
    ] {
        let ids = int_tensor(&*be, &[t], &tokens);
        let inputs = RouteInputs::new(&logits).with_hash(&ids, &two_bad);
        match index_error(&*be, ops::moe_route_with(&*be, inputs, &p)) {
            Error::IndexOutOfRange {
                arg,
                index,
                valid: v,
                ..
            } => assert_eq!((arg, index, v.as_str()), ("tid2eid", want, valid)),
            other => panic!("expected a tid2eid index error, got {other}"),
        }
    }
    be.synchronize().unwrap();
}

/// A small dense sparse-attention problem: B 2, Sq 2, Hq 4, Dqk 16, Dv 8, 4 blocks of 4.
struct Sparse {
    q: moemla_core::DeviceTensor,
    kv: moemla_core::DeviceTensor,
    params: SparseDecodeParams,
}

fn sparse_problem(be: &dyn Backend) -> Sparse {
    let (q, _) = float_tensor(
        be,
        &[2, 2, 4, 16],
        &common::uniform(7, 256, -1.0, 1.0),
        DType::F32,
    );
    let (kv, _) = float_tensor(
        be,
        &[4, 4, 1, 16],
        &common::uniform(8, 256, -1.0, 1.0),
        DType::F32,
    );
    let params = SparseDecodeParams {
        softmax_scale: 0.25,
        head_dim_v: 8,
        kv_format: Default::default(),
    };
    Sparse { q, kv, params }
}

#[test]
fn sparse_indices_and_lengths_are_checked_where_they_count() {
    let _serial = serial();
    let Some(be) = backend() else { return };
    let s = sparse_problem(&*be);
    let mut idx: Vec<i32> = (0..2 * 2 * 5).map(|i| i % 16).collect();
    idx[7] = -1;
    // Past topk_length[1] = 3: any value, never read nor rejected.
    idx[10 + 4] = 1 << 30; // [1, 0, 4]
    idx[15 + 3] = -7; // [1, 1, 3]
    let indices = int_tensor(&*be, &[2, 2, 5], &idx);
    let lens = int_tensor(&*be, &[2], &[5, 3]);
    let inputs = SparseDecodeInputs::new(&s.q, &s.kv, &indices).with_topk_length(&lens);
    let out = ops::mla_sparse_decode(&*be, inputs, &s.params).unwrap();
    let lse = read_f32(&*be, &out.lse);
    assert!(lse.iter().all(|v| v.is_finite()), "{lse:?}");

    // Without the lengths the same entries count: the first bad one is named.
    let inputs = SparseDecodeInputs::new(&s.q, &s.kv, &indices);
    let err = index_error(&*be, ops::mla_sparse_decode(&*be, inputs, &s.params));
    assert_index_error(
        err,
        (Op::MlaSparseDecode, "indices", vec![1, 0, 4], 1 << 30),
    );
    // A length outside [0, topk] is named before any index.
    let bad_lens = int_tensor(&*be, &[2], &[5, 6]);
    let inputs = SparseDecodeInputs::new(&s.q, &s.kv, &indices).with_topk_length(&bad_lens);
    let err = index_error(&*be, ops::mla_sparse_decode(&*be, inputs, &s.params));
    assert_index_error(err, (Op::MlaSparseDecode, "topk_length", vec![1], 6));
    be.synchronize().unwrap();
}

#[test]
fn indexer_tables_are_checked_where_they_are_used() {
    let _serial = serial();
    let Some(be) = backend() else { return };
    let (q, _) = float_tensor(
        &*be,
        &[1, 2, 2, 8],
        &common::uniform(3, 32, -1.0, 1.0),
        DType::F32,
    );
    let (w, _) = float_tensor(&*be, &[1, 2, 2], &[1.0, 0.5, 0.25, 2.0], DType::F32);
    let (k_cache, _) = float_tensor(
        &*be,
        &[3, 4, 8],
        &common::uniform(4, 96, -1.0, 1.0),
        DType::F32,
    );
    let params = IndexerParams {
        top_k: 4,
        causal: true,
    };
    // seqlen 7 uses columns 0 and 1; column 2 holds garbage that is never read.
    let table = int_tensor(&*be, &[1, 3], &[2, 0, 99]);
    let seqlens = int_tensor(&*be, &[1], &[7]);
    let out = ops::dsa_indexer_topk(&*be, &q, &w, &k_cache, &table, &seqlens, &params).unwrap();
    let idx = read_i32(&*be, &out.topk_indices);
    // Query 0 attends positions 0..6, query 1 all 7: slots of blocks 2 and 0.
    for &slot in &idx {
        assert!((8..12).contains(&slot) || (0..3).contains(&slot), "{idx:?}");
    }
    let bad_table = int_tensor(&*be, &[1, 3], &[2, 3, 99]);
    let err = index_error(
        &*be,
        ops::dsa_indexer_topk(&*be, &q, &w, &k_cache, &bad_table, &seqlens, &params),
    );
    assert_index_error(err, (Op::DsaIndexerTopk, "block_table", vec![0, 1], 3));
    let bad_len = int_tensor(&*be, &[1], &[13]);
    let err = index_error(
        &*be,
        ops::dsa_indexer_topk(&*be, &q, &w, &k_cache, &bad_table, &bad_len, &params),
    );
    assert_index_error(err, (Op::DsaIndexerTopk, "cache_seqlens", vec![0], 13));
    be.synchronize().unwrap();
}

#[test]
fn kv_quantize_reports_non_finite_input_at_the_next_synchronize_naming_the_row() {
    let _serial = serial();
    let Some(be) = backend() else { return };
    let mut raw = common::uniform(9, 3 * 576, -2.0, 2.0);
    raw[576 + 34] = f32::NAN; // row 1, element 34
    raw[2 * 576 + 520] = f32::INFINITY; // row 2, a rope dim
    let (kv, _) = float_tensor(&*be, &[3, 576], &raw, DType::F32);
    let params = KvQuantizeParams {
        kv_format: moemla_core::KvFormat::Fp8DsV32,
    };
    // The call only enqueues; the next synchronize reports the first bad element (in
    // row-major order) with the value the kernel read, once.
    be.synchronize().unwrap();
    let before = be.traffic().unwrap();
    let out = ops::mla_kv_quantize(&*be, &kv, &params).unwrap();
    assert_eq!(be.traffic().unwrap().since(&before).downloads, 0);
    assert_eq!(out.dims(), &[3, 656]);
    match be.synchronize() {
        Err(Error::Input {
            op,
            arg,
            expected,
            got,
        }) => {
            assert_eq!((op, arg), (Op::MlaKvQuantize, "kv"));
            assert_eq!(expected, "finite values");
            assert_eq!(got, "NaN at row 1 (element [1, 34])");
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    be.synchronize().unwrap();
}

/// DeepSeek-V3.2's own property: with top_k covering the sequence, the indexer's slots fed
/// to sparse attention give dense causal decode's result.
#[test]
fn indexer_into_sparse_attention_equals_dense_decode() {
    let _serial = serial();
    let Some(be) = backend() else { return };
    let (b, s_q, h, d, dv, bs) = (2, 2, 4, 32, 16, 8);
    let (q, _) = float_tensor(
        &*be,
        &[b, s_q, h, d],
        &common::uniform(1, b * s_q * h * d, -1.0, 1.0),
        DType::F32,
    );
    let (kv, _) = float_tensor(
        &*be,
        &[5, bs, 1, d],
        &common::uniform(2, 5 * bs * d, -1.0, 1.0),
        DType::F32,
    );
    let (iq, _) = float_tensor(
        &*be,
        &[b, s_q, 2, d],
        &common::uniform(3, b * s_q * 2 * d, -1.0, 1.0),
        DType::F32,
    );
    let (iw, _) = float_tensor(
        &*be,
        &[b, s_q, 2],
        &[1.0, 0.5, 0.7, 0.2, 0.3, 0.9, 1.1, 0.4],
        DType::F32,
    );
    // The indexer's keys are the latent cache's rows (same slots).
    let (k_cache, _) = float_tensor(
        &*be,
        &[5, bs, d],
        &common::uniform(2, 5 * bs * d, -1.0, 1.0),
        DType::F32,
    );
    let table = int_tensor(&*be, &[b, 2], &[3, 1, 0, 4]);
    let seqlens = int_tensor(&*be, &[b], &[13, 9]);
    let ip = IndexerParams {
        top_k: 16,
        causal: true,
    };
    let top = ops::dsa_indexer_topk(&*be, &iq, &iw, &k_cache, &table, &seqlens, &ip).unwrap();
    let sp = SparseDecodeParams {
        softmax_scale: 0.2,
        head_dim_v: dv,
        kv_format: Default::default(),
    };
    let sparse = ops::mla_sparse_decode(
        &*be,
        SparseDecodeInputs::new(&q, &kv, &top.topk_indices),
        &sp,
    )
    .unwrap();
    let dp = MlaDecodeParams {
        softmax_scale: 0.2,
        causal: true,
        head_dim_v: dv,
        kv_format: Default::default(),
    };
    let dense = ops::mla_decode(&*be, &q, &kv, &table, &seqlens, &dp).unwrap();
    let want: Vec<f64> = read_f32(&*be, &dense.o).iter().map(|&v| v as f64).collect();
    assert_close("o", &read_f32(&*be, &sparse.o), &want, 1e-5);
    let want: Vec<f64> = read_f32(&*be, &dense.lse)
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_close("lse", &read_f32(&*be, &sparse.lse), &want, 1e-5);
}
