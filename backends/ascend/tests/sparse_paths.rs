//! Which path serves mla_sparse_decode: CANN's aclnnSparseFlashAttention where its
//! documented limits and semantics cover the call, the composed path elsewhere
//! (`src/ops/sparse_flash_attention.rs`). The committed golden-v2 cases run through the
//! backend and pass, and the backend's path counters say which path each dtype took.

mod common;

use moemla_core::{ops, Backend, DType, HostTensor, SparseDecodeParams};
use std::path::Path;

/// Runs the golden-v2 mla_sparse_decode cases of `dtype` and returns (cases run, paths).
fn golden(dtype: &str) -> (usize, moemla_ascend::Paths) {
    let be = common::backend();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../conformance/golden-v2/mla_sparse_decode")
        .join(dtype);
    let cases = moemla_conformance::load_cases(&[dir]);
    assert!(!cases.is_empty(), "no golden-v2 cases for {dtype}");
    let report = moemla_conformance::run(&be, &cases);
    for r in &report.results {
        assert_eq!(
            r.status,
            moemla_conformance::Status::Pass,
            "{} on ascend: {:?}",
            r.case,
            r
        );
    }
    (cases.len(), be.paths())
}

#[test]
fn golden_v2_dense_deepseek_cases_run_on_sparse_flash_attention_in_f16_and_bf16() {
    // One case per dtype fits SFA: v32_dense (Dqk 576, Dv 512, Hq 16, dense cache, no
    // sink). The d64 cases (Dqk 64) and the FP8-cache cases run composed.
    for dtype in ["f16", "bf16"] {
        let (n, paths) = golden(dtype);
        assert_eq!(paths.sparse_attention_fused, 1, "{dtype}: {paths:?}");
        assert_eq!(
            paths.sparse_attention_composed,
            n as u64 - 1,
            "{dtype}: {paths:?}"
        );
    }
}

#[test]
fn golden_v2_f32_cases_all_run_composed() {
    let (n, paths) = golden("f32");
    assert_eq!(paths.sparse_attention_fused, 0, "{paths:?}");
    assert_eq!(paths.sparse_attention_composed, n as u64, "{paths:?}");
}

/// (o, lse) in f64 by the contract's formulas (no sink), over a dense cache [slots, 576].
fn reference(
    q: &[f32],
    cache: &[f32],
    idx: &[i32],
    lengths: &[i32],
    (b, sq, hq, topk): (usize, usize, usize, usize),
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (dqk, dv) = (576, 512);
    let mut o = vec![0.0; b * sq * hq * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * hq * sq];
    for r in 0..b * sq {
        let (bi, i) = (r / sq, r % sq);
        let rows: Vec<usize> = idx[r * topk..r * topk + lengths[bi] as usize]
            .iter()
            .filter(|&&s| s != -1)
            .map(|&s| s as usize)
            .collect();
        if rows.is_empty() {
            continue;
        }
        for h in 0..hq {
            let qv = &q[(r * hq + h) * dqk..][..dqk];
            let s: Vec<f64> = rows
                .iter()
                .map(|&k| {
                    scale
                        * qv.iter()
                            .zip(&cache[k * dqk..][..dqk])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let l = m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            lse[(bi * hq + h) * sq + i] = l;
            for (w, &k) in s.iter().zip(&rows) {
                for d in 0..dv {
                    o[(r * hq + h) * dv + d] += (w - l).exp() * cache[k * dqk + d] as f64;
                }
            }
        }
    }
    (o, lse)
}

/// Runs one call with DeepSeek dims and returns (o, lse, reference o, reference lse, paths).
#[allow(clippy::type_complexity)]
fn deepseek_call(
    dtype: DType,
    hq: usize,
    sink: Option<f32>,
) -> (Vec<f32>, Vec<f32>, Vec<f64>, Vec<f64>, moemla_ascend::Paths) {
    let be = common::backend();
    let (b, sq, topk, nb, bs) = (2, 2, 8, 2, 16);
    let slots = nb * bs;
    let q_host = HostTensor::from_f32_as(
        [b, sq, hq, 576],
        &common::values(81, b * sq * hq * 576, -0.2, 0.2),
        dtype,
    )
    .unwrap();
    let cache_host = HostTensor::from_f32_as(
        [nb, bs, 1, 576],
        &common::values(82, slots * 576, -0.5, 0.5),
        dtype,
    )
    .unwrap();
    // Row 0: -1 in the middle (SFA stops at the first -1: the backend must compact) and a
    // duplicate; row 1: one slot eight times (more entries than distinct slots, six in the
    // whole call: SFA reads at most S2 entries of a row); row 2: nothing valid; row 3
    // (batch 1, length 5): entries past the length are never read, out of range included.
    let idx: Vec<i32> = vec![
        3, -1, 30, 3, 7, -1, -1, 12, //
        9, 9, 9, 9, 9, 9, 9, 9, //
        -1, -1, -1, -1, -1, -1, -1, -1, //
        3, 0, 30, -1, 7, 999, -9, 2,
    ];
    let lengths = [8i32, 5];
    let q = be.upload(&q_host).unwrap();
    let cache = be.upload(&cache_host).unwrap();
    let idx_t = be
        .upload(&HostTensor::from_slice([b, sq, topk], &idx).unwrap())
        .unwrap();
    let len_t = be
        .upload(&HostTensor::from_slice([b], &lengths).unwrap())
        .unwrap();
    let sink_host = vec![sink.unwrap_or(0.0); hq];
    let sink_t = be
        .upload(&HostTensor::from_slice([hq], &sink_host).unwrap())
        .unwrap();
    let params = SparseDecodeParams {
        softmax_scale: 0.3,
        head_dim_v: 512,
        kv_format: Default::default(),
    };
    let mut inputs = ops::SparseDecodeInputs::new(&q, &cache, &idx_t).with_topk_length(&len_t);
    if sink.is_some() {
        inputs = inputs.with_attn_sink(&sink_t);
    }
    let out = ops::mla_sparse_decode(&be, inputs, &params).unwrap();
    let o = be.download(&out.o).unwrap().to_f32_vec().unwrap();
    let lse = be.download(&out.lse).unwrap().to_f32_vec().unwrap();
    let (want_o, want_lse) = reference(
        &q_host.to_f32_vec().unwrap(),
        &cache_host.to_f32_vec().unwrap(),
        &idx,
        &lengths,
        (b, sq, hq, topk),
        0.3,
    );
    (o, lse, want_o, want_lse, be.paths())
}

#[test]
fn sparse_flash_attention_matches_the_contract_on_minus_one_duplicates_lengths_and_empty_rows() {
    for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 2e-2)] {
        let (o, lse, want_o, want_lse, paths) = deepseek_call(dtype, 8, None);
        assert_eq!(paths.sparse_attention_fused, 1, "{dtype}: {paths:?}");
        assert_eq!(paths.sparse_attention_composed, 0, "{dtype}: {paths:?}");
        for (n, (g, w)) in o.iter().zip(&want_o).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol + tol * w.abs(),
                "{dtype} o[{n}] = {g}, want {w}"
            );
        }
        for (n, (g, w)) in lse.iter().zip(&want_lse).enumerate() {
            if w.is_infinite() {
                assert_eq!(*g as f64, *w, "{dtype} lse[{n}]");
            } else {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                    "{dtype} lse[{n}] = {g}, want {w}"
                );
            }
        }
        assert!(
            want_o.iter().any(|w| w.abs() > 0.01),
            "degenerate reference"
        );
    }
}

#[test]
fn calls_sparse_flash_attention_cannot_express_run_composed() {
    // A sink (no SFA input for it), Hq 3 (SFA: powers of two), F32 (SFA: F16/BF16 only).
    for (dtype, hq, sink) in [
        (DType::BF16, 8, Some(f32::NEG_INFINITY)),
        (DType::F16, 3, None),
        (DType::F32, 8, None),
    ] {
        let (o, _, want_o, _, paths) = deepseek_call(dtype, hq, sink);
        assert_eq!(
            paths.sparse_attention_fused, 0,
            "{dtype} Hq {hq}: {paths:?}"
        );
        assert_eq!(
            paths.sparse_attention_composed, 1,
            "{dtype} Hq {hq}: {paths:?}"
        );
        // A -inf sink has no effect: the plain reference holds.
        for (n, (g, w)) in o.iter().zip(&want_o).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 2e-2 + 2e-2 * w.abs(),
                "{dtype} Hq {hq} o[{n}] = {g}, want {w}"
            );
        }
    }
}
