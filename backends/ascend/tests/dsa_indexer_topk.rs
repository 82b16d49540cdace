//! dsa_indexer_topk on the CANN emulator against an f64 reference of the contract: causal
//! limits, a sequence shorter than top_k (-1 / -inf padding), paged keys.

mod common;

use moemla_core::{ops, Backend, DType, Error, HostTensor, IndexerParams};

/// Per (b, i): (slot, score) of every attended position, best first.
#[allow(clippy::too_many_arguments)]
fn reference(
    q: &[f32],
    w: &[f32],
    k: &[f32],
    table: &[i32],
    seqlens: &[i32],
    (b, sq, hi, di, bs, mb): (usize, usize, usize, usize, usize, usize),
    causal: bool,
) -> Vec<Vec<(i32, f64)>> {
    let mut out = Vec::new();
    for bi in 0..b {
        for i in 0..sq {
            let len = seqlens[bi] as i64;
            let l = if causal {
                len - sq as i64 + i as i64 + 1
            } else {
                len
            }
            .max(0) as usize;
            let r = bi * sq + i;
            let mut row: Vec<(i32, f64)> = (0..l)
                .map(|p| {
                    let slot = table[bi * mb + p / bs] * bs as i32 + (p % bs) as i32;
                    let kv = &k[slot as usize * di..][..di];
                    let score = (0..hi)
                        .map(|h| {
                            let qv = &q[(r * hi + h) * di..][..di];
                            let dot: f64 =
                                qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum();
                            w[r * hi + h] as f64 * dot.max(0.0)
                        })
                        .sum();
                    (slot, score)
                })
                .collect();
            row.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.push(row);
        }
    }
    out
}

#[test]
fn indexer_matches_reference_with_causal_limits_and_padding() {
    let be = common::backend();
    let (b, sq, hi, di, nb, bs, mb, top_k) = (2, 3, 4, 16, 6, 16, 3, 20);
    for dtype in [DType::F32, DType::BF16] {
        let q_host = HostTensor::from_f32_as(
            [b, sq, hi, di],
            &common::values(61, b * sq * hi * di, -1.0, 1.0),
            dtype,
        )
        .unwrap();
        let k_host = HostTensor::from_f32_as(
            [nb, bs, di],
            &common::values(62, nb * bs * di, -1.0, 1.0),
            dtype,
        )
        .unwrap();
        let w: Vec<f32> = common::values(63, b * sq * hi, 0.1, 1.0);
        // Sequence 0: 40 tokens over blocks 4, 1, 5; sequence 1: 19 tokens (query 0 sees
        // 17 < top_k positions: padding), its unused table entry out of range on purpose.
        let table = [4i32, 1, 5, 0, 2, 99];
        let seqlens = [40i32, 19];
        let up = |h: &HostTensor| be.upload(h).unwrap();
        let (q, kc) = (up(&q_host), up(&k_host));
        let wt = up(&HostTensor::from_slice([b, sq, hi], &w).unwrap());
        let bt = up(&HostTensor::from_slice([b, mb], &table).unwrap());
        let sl = up(&HostTensor::from_slice([b], &seqlens).unwrap());
        let p = IndexerParams {
            top_k,
            causal: true,
        };
        let out = ops::dsa_indexer_topk(&be, &q, &wt, &kc, &bt, &sl, &p).unwrap();
        let got_i = be
            .download(&out.topk_indices)
            .unwrap()
            .to_i32_vec()
            .unwrap();
        let got_s = be.download(&out.topk_scores).unwrap().to_f32_vec().unwrap();
        let want = reference(
            &q_host.to_f32_vec().unwrap(),
            &w,
            &k_host.to_f32_vec().unwrap(),
            &table,
            &seqlens,
            (b, sq, hi, di, bs, mb),
            true,
        );
        let tol = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
        for (r, row) in want.iter().enumerate() {
            let kk = top_k.min(row.len());
            let (gi, gs) = (&got_i[r * top_k..][..top_k], &got_s[r * top_k..][..top_k]);
            assert!(gi[kk..].iter().all(|&v| v == -1), "{dtype} row {r}: {gi:?}");
            assert!(gs[kk..].iter().all(|&v| v == f32::NEG_INFINITY));
            // Descending, and each returned slot carries its own score.
            for j in 0..kk {
                let (_, w) = row
                    .iter()
                    .find(|(s, _)| *s == gi[j])
                    .expect("an attended slot");
                assert!(
                    (gs[j] as f64 - w).abs() <= tol + tol * w.abs(),
                    "{dtype} [{r}, {j}]"
                );
                assert!(j == 0 || gs[j] <= gs[j - 1]);
            }
            // The k-th best score bounds every slot left out (as a set, up to ties).
            if kk > 0 && kk < row.len() {
                assert!(row[kk].1 <= row[kk - 1].1 + 1e-9);
                let chosen: std::collections::HashSet<i32> = gi[..kk].iter().copied().collect();
                let missing = row[..kk]
                    .iter()
                    .filter(|(s, _)| !chosen.contains(s))
                    .count();
                assert!(
                    missing <= 1,
                    "{dtype} row {r}: {missing} of the best {kk} missing"
                );
            }
        }
        assert!(want.iter().any(|row| row.len() < top_k), "no padded row");
    }
}

#[test]
fn a_used_block_table_entry_out_of_range_is_an_input_error() {
    let be = common::backend();
    let up = |h: HostTensor| be.upload(&h).unwrap();
    let q = up(HostTensor::from_f32_as([1, 1, 2, 8], &[0.5; 16], DType::F16).unwrap());
    let w = up(HostTensor::from_slice([1, 1, 2], &[1.0f32, 1.0]).unwrap());
    let k = up(HostTensor::from_f32_as([2, 16, 8], &[0.25; 256], DType::F16).unwrap());
    let bt = up(HostTensor::from_slice([1, 2], &[0i32, 2]).unwrap());
    let sl = up(HostTensor::from_slice([1], &[20i32]).unwrap());
    let p = IndexerParams {
        top_k: 4,
        causal: false,
    };
    match ops::dsa_indexer_topk(&be, &q, &w, &k, &bt, &sl, &p) {
        Err(Error::IndexOutOfRange { arg, .. }) => assert_eq!(arg, "block_table"),
        other => panic!("{other:?}"),
    }
}
