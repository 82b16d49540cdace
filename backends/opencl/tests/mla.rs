//! mla_decode on the OpenCL device against a plain f64 reference, and its bad-index flags.

mod common;

use common::{assert_close, backend, float_tensor, int_tensor, read_f32, tolerance};
use moemla_core::{ops, Backend, DType, Error, HostTensor, MlaDecodeParams, Op};

struct Problem {
    b: usize,
    s_q: usize,
    h_q: usize,
    h_kv: usize,
    d_qk: usize,
    d_v: usize,
    num_blocks: usize,
    block_size: usize,
    max_blocks: usize,
    seqlens: Vec<i32>,
    table: Vec<i32>,
}

/// (o [B, Sq, Hq, Dv], lse [B, Hq, Sq]) in f64, from the contract.
fn reference(p: &Problem, q: &[f64], kv: &[f64], scale: f64, causal: bool) -> (Vec<f64>, Vec<f64>) {
    let mut o = vec![0.0; p.b * p.s_q * p.h_q * p.d_v];
    let mut lse = vec![f64::NEG_INFINITY; p.b * p.h_q * p.s_q];
    for b in 0..p.b {
        let seqlen = p.seqlens[b] as i64;
        for i in 0..p.s_q {
            let len = if causal {
                seqlen - p.s_q as i64 + i as i64 + 1
            } else {
                seqlen
            };
            for h in 0..p.h_q {
                let g = h / (p.h_q / p.h_kv);
                let qrow = &q[((b * p.s_q + i) * p.h_q + h) * p.d_qk..][..p.d_qk];
                let krow = |pos: usize| {
                    let blk = p.table[b * p.max_blocks + pos / p.block_size] as usize;
                    &kv[((blk * p.block_size + pos % p.block_size) * p.h_kv + g) * p.d_qk..]
                        [..p.d_qk]
                };
                let logits: Vec<f64> = (0..len.max(0) as usize)
                    .map(|pos| scale * krow(pos).iter().zip(qrow).map(|(a, b)| a * b).sum::<f64>())
                    .collect();
                if logits.is_empty() {
                    continue;
                }
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                for (pos, l) in logits.iter().enumerate() {
                    let pr = (l - m).exp() / total;
                    for d in 0..p.d_v {
                        o[((b * p.s_q + i) * p.h_q + h) * p.d_v + d] += pr * krow(pos)[d];
                    }
                }
                lse[(b * p.h_q + h) * p.s_q + i] = m + total.ln();
            }
        }
    }
    (o, lse)
}

/// A cache filled with NaN except the rows the sequences use, which get random values.
fn cache_values(p: &Problem) -> Vec<f32> {
    let row = p.h_kv * p.d_qk;
    let mut kv = vec![f32::NAN; p.num_blocks * p.block_size * row];
    let fill = common::uniform(7, kv.len(), -1.0, 1.0);
    for b in 0..p.b {
        for pos in 0..p.seqlens[b] as usize {
            let blk = p.table[b * p.max_blocks + pos / p.block_size] as usize;
            let at = (blk * p.block_size + pos % p.block_size) * row;
            kv[at..at + row].copy_from_slice(&fill[at..at + row]);
        }
    }
    kv
}

fn check(p: &Problem, causal: bool, dtype: DType) {
    let Some(be) = backend() else { return };
    let q_dims = [p.b, p.s_q, p.h_q, p.d_qk];
    let q_len = q_dims.iter().product();
    let (q, q64) = float_tensor(&*be, &q_dims, &common::uniform(5, q_len, -1.0, 1.0), dtype);
    let kv_dims = [p.num_blocks, p.block_size, p.h_kv, p.d_qk];
    let (kv, kv64) = float_tensor(&*be, &kv_dims, &cache_values(p), dtype);
    let table = int_tensor(&*be, &[p.b, p.max_blocks], &p.table);
    let seqlens = int_tensor(&*be, &[p.b], &p.seqlens);
    let params = MlaDecodeParams {
        softmax_scale: 0.3,
        causal,
        head_dim_v: p.d_v,
        kv_format: Default::default(),
    };
    let out = ops::mla_decode(&*be, &q, &kv, &table, &seqlens, &params).unwrap();
    let (o, lse) = reference(p, &q64, &kv64, 0.3, causal);
    let tol = tolerance(dtype);
    assert_close(
        &format!("o {dtype} causal={causal}"),
        &read_f32(&*be, &out.o),
        &o,
        tol,
    );
    assert_close(
        &format!("lse {dtype} causal={causal}"),
        &read_f32(&*be, &out.lse),
        &lse,
        tol,
    );
}

/// Two sequences over a shuffled table; unused entries hold FlashMLA's filler 2147480000.
fn problem(seqlens: Vec<i32>, s_q: usize, h_q: usize, h_kv: usize) -> Problem {
    let (block_size, max_blocks) = (4, 9);
    let b = seqlens.len();
    let mut table = vec![2_147_480_000; b * max_blocks];
    let mut next = 0;
    for (row, &len) in seqlens.iter().enumerate() {
        for j in 0..(len as usize).div_ceil(block_size) {
            table[row * max_blocks + j] = (next * 5 + 3) % 20; // a permutation of 0..20
            next += 1;
        }
    }
    Problem {
        b,
        s_q,
        h_q,
        h_kv,
        d_qk: 40,
        d_v: 32,
        num_blocks: 20,
        block_size,
        max_blocks,
        seqlens,
        table,
    }
}

#[test]
fn paged_decode_with_nan_beyond_seqlen_in_every_dtype() {
    let p = problem(vec![33, 6], 1, 4, 1);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        check(&p, false, dtype);
    }
}

#[test]
fn causal_queries_are_bottom_right_aligned_and_empty_ranges_give_minus_inf() {
    // Sequence 1 has 1 token and 3 queries: queries 0 and 1 see nothing (o = 0, lse = -inf).
    let p = problem(vec![17, 1, 0], 3, 4, 2);
    check(&p, true, DType::F32);
    check(&p, false, DType::BF16);
}

#[test]
fn many_query_heads_share_one_kv_head_across_row_blocks() {
    let p = problem(vec![30, 36], 2, 20, 1);
    check(&p, true, DType::F16);
}

fn run_indices(p: &Problem) -> Error {
    let be = backend().unwrap();
    let (q, _) = float_tensor(
        &*be,
        &[p.b, p.s_q, p.h_q, p.d_qk],
        &vec![0.1; p.b * p.s_q * p.h_q * p.d_qk],
        DType::F32,
    );
    let kv = be
        .upload(
            &HostTensor::zeros([p.num_blocks, p.block_size, p.h_kv, p.d_qk], DType::F32).unwrap(),
        )
        .unwrap();
    let table = int_tensor(&*be, &[p.b, p.max_blocks], &p.table);
    let seqlens = int_tensor(&*be, &[p.b], &p.seqlens);
    let params = MlaDecodeParams {
        softmax_scale: 0.3,
        causal: false,
        head_dim_v: p.d_v,
        kv_format: Default::default(),
    };
    // The op enqueues and returns; the error comes with the next download.
    let out = ops::mla_decode(&*be, &q, &kv, &table, &seqlens, &params).unwrap();
    be.download(&out.lse).unwrap_err()
}

// The index-error tests run in child processes: the error belongs to the backend, and a
// parallel test's download would take it.

#[test]
fn bad_seqlen_is_reported_before_bad_table_entries() {
    common::in_child(
        "bad_seqlen_is_reported_before_bad_table_entries",
        bad_seqlen_before_bad_entries,
    );
}

fn bad_seqlen_before_bad_entries() {
    if backend().is_none() {
        return;
    }
    let mut p = problem(vec![5, 8, 9], 1, 2, 1);
    p.table[1] = -3; // used by sequence 0 (5 tokens, 2 blocks)
    p.seqlens[2] = 37; // capacity 36
    p.seqlens[1] = -1;
    let want = Error::IndexOutOfRange {
        op: Op::MlaDecode,
        arg: "cache_seqlens",
        index: vec![1],
        value: -1,
        valid: "[0, 36] (max_blocks * block_size)".to_string(),
    };
    assert_eq!(run_indices(&p), want);
}

#[test]
fn first_bad_used_table_entry_is_reported_and_unused_ones_are_ignored() {
    common::in_child(
        "first_bad_used_table_entry_is_reported_and_unused_ones_are_ignored",
        first_bad_used_entry,
    );
}

fn first_bad_used_entry() {
    if backend().is_none() {
        return;
    }
    let mut p = problem(vec![5, 8], 1, 2, 1);
    // Row 0 uses 2 entries; its filler entries (2147480000) are never read.
    p.table[9 + 1] = 20;
    p.table[9] = 25;
    let want = Error::IndexOutOfRange {
        op: Op::MlaDecode,
        arg: "block_table",
        index: vec![1, 0],
        value: 25,
        valid: "[0, 20) (num_blocks)".to_string(),
    };
    assert_eq!(run_indices(&p), want);
}
