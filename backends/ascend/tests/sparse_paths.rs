//! Which path serves mla_sparse_decode and dsa_indexer_topk: CANN's
//! aclnnSparseFlashAttention / aclnnLightningIndexer where their documented limits and
//! semantics cover the call, the composed path elsewhere (`src/ops/sparse_flash_attention.rs`,
//! `src/ops/lightning_indexer.rs`). The committed golden-v2 cases run through the backend
//! and pass, and the backend's path counters say which path each case took.

mod common;

use moemla_core::{ops, Backend, DType, HostTensor, SparseDecodeParams};

#[test]
fn golden_v2_dense_deepseek_cases_run_on_sparse_flash_attention_in_f16_and_bf16() {
    // One case per dtype fits SFA: v32_dense (Dqk 576, Dv 512, Hq 16, dense cache, no
    // sink). The d64 cases (Dqk 64) and the FP8-cache cases run composed.
    for dtype in ["f16", "bf16"] {
        let (n, paths) = common::golden_v2("mla_sparse_decode", dtype);
        assert_eq!(paths.sparse_attention_fused, 1, "{dtype}: {paths:?}");
        assert_eq!(paths.sparse_attention_fallback, 0, "{dtype}: {paths:?}");
        assert_eq!(paths.sparse_attention_composed, n - 1, "{dtype}: {paths:?}");
    }
}

#[test]
fn golden_v2_f32_sparse_cases_all_run_composed() {
    let (n, paths) = common::golden_v2("mla_sparse_decode", "f32");
    assert_eq!(paths.sparse_attention_fused, 0, "{paths:?}");
    assert_eq!(paths.sparse_attention_composed, n, "{paths:?}");
}

#[test]
fn golden_v2_indexer_cases_at_hi64_di128_run_on_lightning_indexer() {
    // Hi 64 Di 128 fits LI (bf16: k 2048 and causal k 256; f16: causal k 256); Hi 4 / 8
    // with Di 32 / 16 and every F32 case run composed.
    for (dtype, fused) in [("bf16", 2), ("f16", 1), ("f32", 0)] {
        let (n, paths) = common::golden_v2("dsa_indexer_topk", dtype);
        assert_eq!(paths.indexer_fused, fused, "{dtype}: {paths:?}");
        assert_eq!(paths.indexer_fallback, 0, "{dtype}: {paths:?}");
        assert_eq!(paths.indexer_composed, n - fused, "{dtype}: {paths:?}");
    }
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
    // Head counts from 8 to DeepSeek's 128 (SFA's limit), F16 and BF16.
    let calls = [8, 16, 64, 128]
        .into_iter()
        .flat_map(|hq| [(DType::F16, 2e-3, hq), (DType::BF16, 2e-2, hq)]);
    for (dtype, tol, hq) in calls {
        let (o, lse, want_o, want_lse, paths) = deepseek_call(dtype, hq, None);
        assert_eq!(
            paths.sparse_attention_fused, 1,
            "{dtype} Hq {hq}: {paths:?}"
        );
        assert_eq!(
            paths.sparse_attention_composed, 0,
            "{dtype} Hq {hq}: {paths:?}"
        );
        for (n, (g, w)) in o.iter().zip(&want_o).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol + tol * w.abs(),
                "{dtype} Hq {hq} o[{n}] = {g}, want {w}"
            );
        }
        for (n, (g, w)) in lse.iter().zip(&want_lse).enumerate() {
            if w.is_infinite() {
                assert_eq!(*g as f64, *w, "{dtype} Hq {hq} lse[{n}]");
            } else {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 + 1e-4 * w.abs(),
                    "{dtype} Hq {hq} lse[{n}] = {g}, want {w}"
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

/// One causal indexer call (B 2, Sq 3, Di 128, block 16, top_k 8; batch 0 shorter than
/// Sq, so its rows attend 0, 1 and 2 positions) checked against an f64 reference of the
/// contract: index sets per row, scores matched by index. Returns the paths taken.
fn indexer_call(dtype: DType, hi: usize) -> moemla_ascend::Paths {
    let be = common::backend();
    let (b, sq, di, bs, nb, mb, top_k) = (2, 3, 128, 16, 4, 2, 8);
    let q_host = HostTensor::from_f32_as(
        [b, sq, hi, di],
        &common::values(91, b * sq * hi * di, -1.0, 1.0),
        dtype,
    )
    .unwrap();
    let k_host = HostTensor::from_f32_as(
        [nb, bs, di],
        &common::values(92, nb * bs * di, -1.0, 1.0),
        dtype,
    )
    .unwrap();
    let w = common::values(93, b * sq * hi, 0.1, 1.0);
    let table = [3i32, 1, 0, 2];
    let seqlens = [2i32, 20];
    let q = be.upload(&q_host).unwrap();
    let k = be.upload(&k_host).unwrap();
    let w_t = be
        .upload(&HostTensor::from_slice([b, sq, hi], &w).unwrap())
        .unwrap();
    let bt = be
        .upload(&HostTensor::from_slice([b, mb], &table).unwrap())
        .unwrap();
    let sl = be
        .upload(&HostTensor::from_slice([b], &seqlens).unwrap())
        .unwrap();
    let params = moemla_core::IndexerParams {
        top_k,
        causal: true,
    };
    let out = ops::dsa_indexer_topk(&be, &q, &w_t, &k, &bt, &sl, &params).unwrap();
    let got_i = be
        .download(&out.topk_indices)
        .unwrap()
        .to_i32_vec()
        .unwrap();
    let got_s = be.download(&out.topk_scores).unwrap().to_f32_vec().unwrap();
    let (qf, kf) = (q_host.to_f32_vec().unwrap(), k_host.to_f32_vec().unwrap());
    for r in 0..b * sq {
        let (bi, i) = (r / sq, r % sq);
        let len = (seqlens[bi] as i64 - sq as i64 + i as i64 + 1).max(0) as usize;
        let mut want: Vec<(f64, i32)> = (0..len)
            .map(|p| {
                let slot = table[bi * mb + p / bs] as usize * bs + p % bs;
                let s: f64 = (0..hi)
                    .map(|h| {
                        let dot: f64 = (0..di)
                            .map(|d| qf[(r * hi + h) * di + d] as f64 * kf[slot * di + d] as f64)
                            .sum();
                        w[r * hi + h] as f64 * dot.max(0.0)
                    })
                    .sum();
                (s, slot as i32)
            })
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        want.truncate(top_k);
        let row_i = &got_i[r * top_k..(r + 1) * top_k];
        let row_s = &got_s[r * top_k..(r + 1) * top_k];
        let mut got: Vec<i32> = row_i.iter().copied().filter(|&s| s != -1).collect();
        got.sort_unstable();
        let mut want_set: Vec<i32> = want.iter().map(|w| w.1).collect();
        want_set.sort_unstable();
        assert_eq!(got, want_set, "{dtype} Hi {hi} row {r}: {row_i:?}");
        for (j, &slot) in row_i.iter().enumerate() {
            if slot == -1 {
                assert_eq!(row_s[j], f32::NEG_INFINITY, "{dtype} row {r} entry {j}");
                continue;
            }
            let w = want.iter().find(|w| w.1 == slot).unwrap().0;
            assert!(
                (row_s[j] as f64 - w).abs() <= 1e-3 + 1e-4 * w.abs(),
                "{dtype} Hi {hi} row {r} slot {slot}: {} vs {w}",
                row_s[j]
            );
        }
    }
    be.paths()
}

#[test]
fn lightning_indexer_path_matches_the_contract_with_causal_padding() {
    for dtype in [DType::F16, DType::BF16] {
        let paths = indexer_call(dtype, 4);
        assert_eq!(
            (paths.indexer_fused, paths.indexer_composed),
            (1, 0),
            "{dtype}"
        );
    }
}

#[test]
fn indexer_calls_lightning_indexer_cannot_take_run_composed() {
    // Hi 65 (A2/A3: <= 64 heads) and F32 (F16/BF16 only).
    for (dtype, hi) in [(DType::BF16, 65), (DType::F32, 4)] {
        let paths = indexer_call(dtype, hi);
        assert_eq!(
            (paths.indexer_fused, paths.indexer_composed),
            (0, 1),
            "{dtype} Hi {hi}"
        );
    }
}
