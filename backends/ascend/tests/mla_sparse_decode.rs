//! mla_sparse_decode (dense cache) on the CANN emulator against an f64 reference of the
//! contract: -1 entries, duplicates counted twice, topk_length, sinks (finite, -inf, +inf),
//! a query with nothing to attend to.

mod common;

use moemla_core::{ops, Backend, DType, Error, HostTensor, SparseDecodeParams};

/// (o [B, Sq, Hq, Dv], lse [B, Hq, Sq]) in f64, by the contract's formulas.
#[allow(clippy::too_many_arguments)]
fn reference(
    q: &[f32],
    cache: &[f32],
    idx: &[i32],
    lengths: Option<&[i32]>,
    sink: Option<&[f32]>,
    (b, sq, hq, dqk, dv, topk): (usize, usize, usize, usize, usize, usize),
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut o = vec![0.0; b * sq * hq * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * hq * sq];
    for bi in 0..b {
        for i in 0..sq {
            let r = bi * sq + i;
            let len = lengths.map_or(topk, |l| l[bi] as usize);
            let rows: Vec<usize> = idx[r * topk..r * topk + len]
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
                        let kv = &cache[k * dqk..][..dqk];
                        scale
                            * qv.iter()
                                .zip(kv)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let l = m + z.ln();
                lse[(bi * hq + h) * sq + i] = l;
                let factor = sink.map_or(1.0, |sk| 1.0 / (1.0 + (sk[h] as f64 - l).exp()));
                for (w, &k) in s.iter().zip(&rows) {
                    let p = (w - l).exp() * factor;
                    for d in 0..dv {
                        o[(r * hq + h) * dv + d] += p * cache[k * dqk + d] as f64;
                    }
                }
            }
        }
    }
    (o, lse)
}

fn check(dtype: DType) {
    let be = common::backend();
    let (b, sq, hq, dqk, dv, topk, nb, bs) = (2, 2, 4, 40, 32, 6, 3, 16);
    let slots = nb * bs;
    let q_host = HostTensor::from_f32_as(
        [b, sq, hq, dqk],
        &common::values(51, b * sq * hq * dqk, -1.0, 1.0),
        dtype,
    )
    .unwrap();
    let cache_host = HostTensor::from_f32_as(
        [nb, bs, 1, dqk],
        &common::values(52, slots * dqk, -1.0, 1.0),
        dtype,
    )
    .unwrap();
    // Query (0, 0): -1 entries and a duplicate; (0, 1): only -1 where counted; batch 1's
    // length is 3, so its entries 3.. are never read (one is out of range on purpose).
    let idx: Vec<i32> = vec![
        5, -1, 17, 5, 40, -1, //
        -1, -1, -1, -1, -1, -1, //
        1, 2, 47, 999, -7, 3, //
        0, 46, 46, 12345, 0, 0,
    ];
    let lengths = [6i32, 3];
    let sink = [0.5f32, f32::NEG_INFINITY, f32::INFINITY, -1.0];
    let q = be.upload(&q_host).unwrap();
    let cache = be.upload(&cache_host).unwrap();
    let idx_t = be
        .upload(&HostTensor::from_slice([b, sq, topk], &idx).unwrap())
        .unwrap();
    let len_t = be
        .upload(&HostTensor::from_slice([b], &lengths).unwrap())
        .unwrap();
    let sink_t = be
        .upload(&HostTensor::from_slice([hq], &sink).unwrap())
        .unwrap();
    let params = SparseDecodeParams {
        softmax_scale: 0.2,
        head_dim_v: dv,
        kv_format: Default::default(),
    };
    let inputs = ops::SparseDecodeInputs::new(&q, &cache, &idx_t)
        .with_topk_length(&len_t)
        .with_attn_sink(&sink_t);
    let out = ops::mla_sparse_decode(&be, inputs, &params).unwrap();
    assert_eq!(out.o.dtype(), dtype);
    let o = be.download(&out.o).unwrap().to_f32_vec().unwrap();
    let lse = be.download(&out.lse).unwrap().to_f32_vec().unwrap();
    let (want_o, want_lse) = reference(
        &q_host.to_f32_vec().unwrap(),
        &cache_host.to_f32_vec().unwrap(),
        &idx,
        Some(&lengths),
        Some(&sink),
        (b, sq, hq, dqk, dv, topk),
        0.2,
    );
    let tol = match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        _ => 2e-2,
    };
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
    // The +inf sink head is 0 where something is attended, the empty query all 0.
    assert!(
        want_o.iter().any(|w| w.abs() > 0.01),
        "degenerate reference"
    );
}

#[test]
fn sparse_decode_matches_reference_in_every_dtype() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        check(dtype);
    }
}

#[test]
fn a_counted_index_out_of_range_is_an_input_error() {
    let be = common::backend();
    let q = be
        .upload(&HostTensor::from_f32_as([1, 1, 2, 8], &[0.5; 16], DType::F16).unwrap())
        .unwrap();
    let cache = be
        .upload(&HostTensor::from_f32_as([1, 16, 1, 8], &[0.25; 128], DType::F16).unwrap())
        .unwrap();
    let idx = be
        .upload(&HostTensor::from_slice([1, 1, 3], &[0i32, 16, 1]).unwrap())
        .unwrap();
    let params = SparseDecodeParams {
        softmax_scale: 0.2,
        head_dim_v: 4,
        kv_format: Default::default(),
    };
    match ops::mla_sparse_decode(&be, ops::SparseDecodeInputs::new(&q, &cache, &idx), &params) {
        Err(Error::IndexOutOfRange { arg, .. }) => assert_eq!(arg, "indices"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_fp8_cache_is_dequantized_with_its_stored_scales() {
    // 656-byte rows: e4m3 codes (no NaN codes), four non-power-of-two f32 scales, bf16 rope;
    // dequantized by the contract's formula for the reference. Unused rows hold 0xFF (NaN).
    let be = common::backend();
    let (b, sq, hq, topk, nb, bs) = (1, 2, 4, 5, 2, 16);
    let slots = nb * bs;
    let mut cache = vec![0xFFu8; slots * 656];
    let mut dense = vec![f32::NAN; slots * 576];
    let codes = common::values(71, slots * 512, 0.0, 254.0);
    let rope = common::values(72, slots * 64, -1.0, 1.0);
    let used = [0usize, 3, 17, 31];
    for &s in &used {
        let row = &mut cache[s * 656..(s + 1) * 656];
        let scales = [0.013f32 * (s + 1) as f32, 0.7, 1.3e-3, 3.0];
        for d in 0..512 {
            let mut c = codes[s * 512 + d] as u8;
            if c & 0x7F == 0x7F {
                c ^= 1;
            }
            row[d] = c;
            dense[s * 576 + d] = moemla_core::fp8::e4m3_decode(c) * scales[d / 128];
        }
        for (t, sc) in scales.iter().enumerate() {
            row[512 + 4 * t..516 + 4 * t].copy_from_slice(&sc.to_le_bytes());
        }
        for r in 0..64 {
            let v = half::bf16::from_f32(rope[s * 64 + r]);
            row[528 + 2 * r..530 + 2 * r].copy_from_slice(&v.to_le_bytes());
            dense[s * 576 + 512 + r] = v.to_f32();
        }
    }
    let idx: Vec<i32> = vec![0, 17, -1, 31, 17, 3, -1, -1, 0, 0];
    let q_host = HostTensor::from_f32_as(
        [b, sq, hq, 576],
        &common::values(73, b * sq * hq * 576, -0.1, 0.1),
        DType::BF16,
    )
    .unwrap();
    let q = be.upload(&q_host).unwrap();
    let kv = be
        .upload(&HostTensor::from_bytes([nb, bs, 1, 656], DType::U8, cache).unwrap())
        .unwrap();
    let idx_t = be
        .upload(&HostTensor::from_slice([b, sq, topk], &idx).unwrap())
        .unwrap();
    let params = SparseDecodeParams::deepseek_v32();
    let out = ops::mla_sparse_decode(&be, ops::SparseDecodeInputs::new(&q, &kv, &idx_t), &params)
        .unwrap();
    let o = be.download(&out.o).unwrap().to_f32_vec().unwrap();
    let lse = be.download(&out.lse).unwrap().to_f32_vec().unwrap();
    let (want_o, want_lse) = reference(
        &q_host.to_f32_vec().unwrap(),
        &dense,
        &idx,
        None,
        None,
        (b, sq, hq, 576, 512, topk),
        params.softmax_scale,
    );
    for (n, (g, w)) in o.iter().zip(&want_o).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 2e-2 + 2e-2 * w.abs(),
            "o[{n}] = {g}, want {w}"
        );
    }
    for (n, (g, w)) in lse.iter().zip(&want_lse).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "lse[{n}] = {g}, want {w}"
        );
    }
    assert!(
        want_o.iter().any(|w| w.abs() > 0.01),
        "degenerate reference"
    );
}
