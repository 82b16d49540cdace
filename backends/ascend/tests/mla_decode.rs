//! mla_decode on the CANN emulator against a plain f64 reference of the contract.

mod common;

use moemla_core::{ops, Backend, DType, Error, HostTensor, MlaDecodeParams};

struct Case {
    dtype: DType,
    block_size: usize,
    seqlens: Vec<i32>,
    s_q: usize,
    h_q: usize,
    causal: bool,
}

/// Contract reference in f64: (o [B, Sq, Hq, 512], lse [B, Hq, Sq]).
fn reference(
    q: &[f32],
    cache: &[f32],
    table: &[i32],
    c: &Case,
    max_blocks: usize,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (b, sq, hq, bs, d, dv) = (c.seqlens.len(), c.s_q, c.h_q, c.block_size, 576, 512);
    let mut o = vec![0.0; b * sq * hq * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * hq * sq];
    for bi in 0..b {
        let len = c.seqlens[bi] as i64;
        for i in 0..sq {
            let l = if c.causal {
                len - sq as i64 + i as i64 + 1
            } else {
                len
            };
            for h in 0..hq {
                let qv = &q[((bi * sq + i) * hq + h) * d..][..d];
                let rows: Vec<&[f32]> = (0..l.max(0) as usize)
                    .map(|p| {
                        let blk = table[bi * max_blocks + p / bs] as usize;
                        &cache[(blk * bs + p % bs) * d..][..d]
                    })
                    .collect();
                let s: Vec<f64> = rows
                    .iter()
                    .map(|k| {
                        scale
                            * qv.iter()
                                .zip(*k)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                    })
                    .collect();
                if s.is_empty() {
                    continue;
                }
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                lse[(bi * hq + h) * sq + i] = m + z.ln();
                for (k, sc) in rows.iter().zip(&s) {
                    let p = (sc - m).exp() / z;
                    for j in 0..dv {
                        o[((bi * sq + i) * hq + h) * dv + j] += p * k[j] as f64;
                    }
                }
            }
        }
    }
    (o, lse)
}

fn run_case(c: &Case) {
    let be = common::backend();
    let (b, sq, hq, bs) = (c.seqlens.len(), c.s_q, c.h_q, c.block_size);
    let max_blocks = c
        .seqlens
        .iter()
        .map(|&l| (l as usize).div_ceil(bs))
        .max()
        .unwrap()
        .max(1)
        + 1;
    let num_blocks = b * max_blocks + 1;
    // Permuted block table; unused entries hold FlashMLA's out-of-range filler.
    let mut table = vec![2147480000i32; b * max_blocks];
    let mut next = num_blocks as i32 - 1;
    for bi in 0..b {
        for j in 0..(c.seqlens[bi] as usize).div_ceil(bs) {
            table[bi * max_blocks + j] = next;
            next -= 1;
        }
    }
    let q = HostTensor::from_f32_as(
        [b, sq, hq, 576],
        &common::values(3, b * sq * hq * 576, -1.0, 1.0),
        c.dtype,
    )
    .unwrap();
    let mut cache_vals = common::values(5, num_blocks * bs * 576, -1.0, 1.0);
    // NaN in every slot no sequence uses.
    let mut used = vec![false; num_blocks * bs];
    for bi in 0..b {
        for p in 0..c.seqlens[bi] as usize {
            used[table[bi * max_blocks + p / bs] as usize * bs + p % bs] = true;
        }
    }
    for (slot, u) in used.iter().enumerate() {
        if !u {
            cache_vals[slot * 576..(slot + 1) * 576].fill(f32::NAN);
        }
    }
    let cache = HostTensor::from_f32_as([num_blocks, bs, 1, 576], &cache_vals, c.dtype).unwrap();
    let params = MlaDecodeParams {
        softmax_scale: MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE,
        causal: c.causal,
        head_dim_v: 512,
        kv_format: Default::default(),
    };
    let out = ops::mla_decode(
        &be,
        &be.upload(&q).unwrap(),
        &be.upload(&cache).unwrap(),
        &be.upload(&HostTensor::from_slice([b, max_blocks], &table).unwrap())
            .unwrap(),
        &be.upload(&HostTensor::from_slice([b], &c.seqlens).unwrap())
            .unwrap(),
        &params,
    )
    .unwrap();
    let (want_o, want_lse) = reference(
        &q.to_f32_vec().unwrap(),
        &cache.to_f32_vec().unwrap(),
        &table,
        c,
        max_blocks,
        params.softmax_scale,
    );
    let tol = match c.dtype {
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        _ => 2e-2,
    };
    let got_o = be.download(&out.o).unwrap().to_f32_vec().unwrap();
    for (i, (g, w)) in got_o.iter().zip(&want_o).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol + tol * w.abs(),
            "o[{i}] = {g}, want {w}"
        );
    }
    let got_lse = be.download(&out.lse).unwrap().to_f32_vec().unwrap();
    for (i, (g, w)) in got_lse.iter().zip(&want_lse).enumerate() {
        let ok = (*w == f64::NEG_INFINITY && *g == f32::NEG_INFINITY)
            || (*g as f64 - w).abs() <= tol + tol * w.abs();
        assert!(ok, "lse[{i}] = {g}, want {w}");
    }
}

#[test]
fn decode_block16_bf16_matches_reference() {
    run_case(&Case {
        dtype: DType::BF16,
        block_size: 16,
        seqlens: vec![37, 0, 16],
        s_q: 1,
        h_q: 4,
        causal: true,
    });
}

#[test]
fn decode_block128_f16_matches_reference() {
    run_case(&Case {
        dtype: DType::F16,
        block_size: 128,
        seqlens: vec![130, 5],
        s_q: 1,
        h_q: 2,
        causal: false,
    });
}

#[test]
fn flashmla_block64_runs_as_fia_blocks_of_16() {
    run_case(&Case {
        dtype: DType::BF16,
        block_size: 64,
        seqlens: vec![100, 64, 3],
        s_q: 2,
        h_q: 4,
        causal: true,
    });
}

#[test]
fn block256_runs_as_fia_blocks_of_128() {
    run_case(&Case {
        dtype: DType::F16,
        block_size: 256,
        seqlens: vec![300],
        s_q: 1,
        h_q: 16,
        causal: true,
    });
}

#[test]
fn non_causal_multi_token_runs_as_folded_heads() {
    run_case(&Case {
        dtype: DType::BF16,
        block_size: 16,
        seqlens: vec![40, 0, 17],
        s_q: 4,
        h_q: 8,
        causal: false,
    });
}

#[test]
fn multi_token_causal_block16_f16_matches_reference() {
    // Sq 2 (MTP), a sequence shorter than Sq gets an empty range for its first query.
    run_case(&Case {
        dtype: DType::F16,
        block_size: 16,
        seqlens: vec![20, 1],
        s_q: 2,
        h_q: 8,
        causal: true,
    });
}

#[test]
fn multi_token_causal_block128_bf16_matches_reference() {
    run_case(&Case {
        dtype: DType::BF16,
        block_size: 128,
        seqlens: vec![129],
        s_q: 4,
        h_q: 1,
        causal: true,
    });
}

fn small_inputs(
    be: &dyn Backend,
    dtype: DType,
    bs: usize,
    table: &[i32],
    seqlens: &[i32],
) -> [moemla_core::DeviceTensor; 4] {
    let b = seqlens.len();
    let mb = table.len() / b;
    [
        be.upload(
            &HostTensor::from_f32_as(
                [b, 1, 1, 576],
                &common::values(1, b * 576, -1.0, 1.0),
                dtype,
            )
            .unwrap(),
        )
        .unwrap(),
        be.upload(
            &HostTensor::from_f32_as(
                [2, bs, 1, 576],
                &common::values(2, 2 * bs * 576, -1.0, 1.0),
                dtype,
            )
            .unwrap(),
        )
        .unwrap(),
        be.upload(&HostTensor::from_slice([b, mb], table).unwrap())
            .unwrap(),
        be.upload(&HostTensor::from_slice([b], seqlens).unwrap())
            .unwrap(),
    ]
}

#[test]
fn used_block_table_entry_out_of_range_is_an_index_error() {
    let be = common::backend();
    let [q, kv, bt, len] = small_inputs(&be, DType::BF16, 16, &[0, 7], &[20]);
    let err =
        ops::mla_decode(&be, &q, &kv, &bt, &len, &MlaDecodeParams::deepseek_v3()).unwrap_err();
    assert!(
        matches!(&err, Error::IndexOutOfRange { arg: "block_table", index, value: 7, .. } if index == &vec![0, 1]),
        "{err}"
    );
}

#[test]
fn f32_and_shapes_fia_cannot_do_run_composed() {
    // FIA's MLA mode takes F16/BF16, block sizes that are multiples of 16, Hq a power of two
    // and Sq <= 16: outside that (one kv head) the composed path of mla_sparse_decode runs.
    for c in [
        Case {
            dtype: DType::F32,
            block_size: 16,
            seqlens: vec![21, 0],
            s_q: 2,
            h_q: 4,
            causal: true,
        },
        Case {
            dtype: DType::BF16,
            block_size: 24,
            seqlens: vec![30, 5],
            s_q: 1,
            h_q: 3,
            causal: false,
        },
    ] {
        run_case(&c);
    }
}
