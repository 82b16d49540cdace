//! `mla_sparse_decode` on the device, direct (one split, no partials) and split, against an
//! f64 reference: -1 entries, duplicates, a row with nothing to attend, `topk_length`, and
//! sinks finite and -inf.

use super::{Dims, Facts, Plan};
use crate::flags::test_lock;
use moemla_core::ops::{self, SparseDecodeInputs};
use moemla_core::{Backend, HostTensor, SparseDecodeParams};

const H: usize = 4;
const DQK: usize = 16;
const DV: usize = 8;
const SLOTS: usize = 32; // 8 blocks of 4
const SCALE: f64 = 0.3;

/// A fixed pseudo-random value in [-1, 1).
fn value(i: usize, seed: usize) -> f32 {
    let x = (i * 2_654_435_761 + seed * 40_503) % 65_536;
    x as f32 / 32_768.0 - 1.0
}

/// Indices of `rows` query rows: row 0 all -1, then mixes of -1, duplicates and slots.
fn indices(rows: usize, topk: usize) -> Vec<i32> {
    (0..rows * topk)
        .map(|k| {
            let (r, j) = (k / topk, k % topk);
            match (r, j) {
                (0, _) => -1,
                (_, j) if j % 5 == 1 && r % 3 == 0 => -1,
                (_, 4) => ((r * 7) % SLOTS) as i32, // equals entry 0: a duplicate
                _ => ((r * 7 + j * 5) % SLOTS) as i32,
            }
        })
        .collect()
}

/// f64 reference of `o` [rows, H, DV] and `lse` [H, rows] (B 1, Sq `rows`) over the first
/// `len` of `topk` entries of each row.
fn reference(
    q: &[f32],
    kv: &[f32],
    (idx, topk, len): (&[i32], usize, usize),
    sink: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let rows = idx.len() / topk;
    let (mut o, mut lse) = (vec![0.0; rows * H * DV], vec![f64::NEG_INFINITY; rows * H]);
    for r in 0..rows {
        for h in 0..H {
            let qr = &q[(r * H + h) * DQK..][..DQK];
            let listed: Vec<usize> = idx[r * topk..][..len]
                .iter()
                .filter(|&&s| s >= 0)
                .map(|&s| s as usize)
                .collect();
            if listed.is_empty() {
                continue;
            }
            let scores: Vec<f64> = listed
                .iter()
                .map(|&s| {
                    let k = &kv[s * DQK..][..DQK];
                    SCALE
                        * qr.iter()
                            .zip(k)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            let row_lse = m + l.ln();
            let factor = 1.0 / (1.0 + (sink[h] as f64 - row_lse).exp());
            for d in 0..DV {
                let acc: f64 = listed
                    .iter()
                    .zip(&scores)
                    .map(|(&s, sc)| (sc - m).exp() * kv[s * DQK + d] as f64)
                    .sum();
                o[(r * H + h) * DV + d] = acc / l * factor;
            }
            lse[h * rows + r] = row_lse;
        }
    }
    (o, lse)
}

/// Runs B 1, Sq `rows`, `topk` entries of which `len` count, and checks the result;
/// returns the plan the device ran.
fn check(be: &crate::OpenClBackend, rows: usize, topk: usize, len: usize) -> Plan {
    let q: Vec<f32> = (0..rows * H * DQK).map(|i| value(i, 1)).collect();
    let kv: Vec<f32> = (0..SLOTS * DQK).map(|i| value(i, 2)).collect();
    let idx = indices(rows, topk);
    let sink = [0.5f32, f32::NEG_INFINITY, -1.0, 2.0];
    let qt = be.upload(&HostTensor::from_slice([1, rows, H, DQK], &q).unwrap());
    let kvt = be.upload(&HostTensor::from_slice([8, 4, 1, DQK], &kv).unwrap());
    let it = be.upload(&HostTensor::from_slice([1, rows, topk], &idx).unwrap());
    let lt = be.upload(&HostTensor::from_slice([1], &[len as i32]).unwrap());
    let st = be.upload(&HostTensor::from_slice([H], &sink).unwrap());
    let (qt, kvt, it, lt, st) = (
        qt.unwrap(),
        kvt.unwrap(),
        it.unwrap(),
        lt.unwrap(),
        st.unwrap(),
    );
    let params = SparseDecodeParams {
        softmax_scale: SCALE,
        head_dim_v: DV,
        kv_format: Default::default(),
    };
    let inputs = SparseDecodeInputs::new(&qt, &kvt, &it)
        .with_topk_length(&lt)
        .with_attn_sink(&st);
    let out = ops::mla_sparse_decode(be, inputs, &params).unwrap();
    let o = be.download(&out.o).unwrap().to_vec::<f32>().unwrap();
    let lse = be.download(&out.lse).unwrap().to_vec::<f32>().unwrap();
    let (want_o, want_lse) = reference(&q, &kv, (&idx, topk, len), &sink);
    for (i, (&got, &want)) in o.iter().zip(&want_o).enumerate() {
        assert!((got as f64 - want).abs() <= 1e-5, "o[{i}]: {got} vs {want}");
    }
    for (i, (&got, &want)) in lse.iter().zip(&want_lse).enumerate() {
        let same = got as f64 == want || (got as f64 - want).abs() <= 1e-5;
        assert!(same, "lse[{i}]: {got} vs {want}");
    }
    // Row 0 attends nothing: lse -inf on every head (o 0, compared above).
    assert!((0..H).all(|h| want_lse[h * rows] == f64::NEG_INFINITY));
    let dev = be.device();
    let d = Dims {
        rows,
        h_q: H,
        d_qk: DQK,
        d_v: DV,
        topk,
    };
    let f = Facts {
        local_mem: dev.facts.local_mem,
        max_work_group: dev.facts.max_work_group,
        compute_units: dev.facts.compute_units,
    };
    Plan::new(d, f).unwrap()
}

#[test]
fn direct_and_split_runs_match_the_f64_reference() {
    let _lock = test_lock::beside_others();
    let Ok(be) = crate::shared() else { return };
    // 1024 rows fill up to 256 compute units: one split, written directly.
    let plan = check(&be, 1024, 6, 5);
    assert!(plan.direct, "{plan:?}");
    // Two rows, 40 entries: several splits, merged by the combine.
    let plan = check(&be, 2, 40, 37);
    assert!(!plan.direct && plan.splits > 1, "{plan:?}");
}
