//! The CPU backend's contract-v2 features against plain f64 references written here from
//! the contract (e4m3 decoding and encoding re-derived from the format, not taken from
//! `moemla_core::fp8`): V4 routing, FP8 experts (w8a16, w8a8 with both scale modes, partial
//! blocks), the SwiGLU clamp, `mla_kv_quantize`, `mla_decode` over the FP8 cache,
//! `mla_sparse_decode` and `dsa_indexer_topk`, and the end-to-end property of DSA: the
//! indexer's top-k fed to sparse decode equals dense decode when top_k covers the sequence.

use half::bf16;
use moemla_core::ops::{self, ExpertsInputs, RouteInputs, SparseDecodeInputs};
use moemla_core::{
    ActivationQuant, ActivationScale, Backend, DType, DeviceTensor, Error, ExpertsParams,
    GroupSelect, HostTensor, IndexerParams, KvFormat, KvQuantizeParams, MlaDecodeParams, Op,
    RouteParams, ScoreFunc, SparseDecodeParams,
};
use moemla_cpu::CpuBackend;

/// A small deterministic generator (64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.unit()) as f32
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }
}

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

/// Uploads `values` as `dtype`; returns the tensor and the stored values (f64).
fn floats(
    b: &CpuBackend,
    dims: &[usize],
    values: &[f32],
    dtype: DType,
) -> (DeviceTensor, Vec<f64>) {
    let host = HostTensor::from_f32_as(dims, values, dtype).unwrap();
    let stored = host
        .to_f32_vec()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    (b.upload(&host).unwrap(), stored)
}

fn ints(b: &CpuBackend, dims: &[usize], v: &[i32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, v).unwrap()).unwrap()
}

fn bytes(b: &CpuBackend, dims: &[usize], dtype: DType, v: Vec<u8>) -> DeviceTensor {
    b.upload(&HostTensor::from_bytes(dims, dtype, v).unwrap())
        .unwrap()
}

fn download(b: &CpuBackend, t: &DeviceTensor) -> Vec<f64> {
    let h = b.download(t).unwrap();
    h.to_f32_vec().unwrap().iter().map(|&v| v as f64).collect()
}

/// Asserts `|got - want| <= tol * (scale + |want|)` elementwise (`scale` = max |want|);
/// infinities must match exactly. Returns the largest error relative to `scale`.
#[track_caller]
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = (want.iter())
        .filter(|v| v.is_finite())
        .fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(scale > 1e-6, "{what}: degenerate reference");
    let mut worst = 0.0f64;
    for (n, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() {
            assert_eq!(g, w, "{what}[{n}]");
            continue;
        }
        let err = (g - w).abs();
        assert!(err <= tol * (scale + w.abs()), "{what}[{n}]: {g} vs {w}");
        worst = worst.max(err / scale);
    }
    worst
}

// ---- e4m3, written from the format -------------------------------------------------------

/// The value of an e4m3fn code (NaN for 0x7F/0xFF).
fn e4m3(code: u8) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((code >> 3) & 0xF) as i32, (code & 7) as f64);
    match (e, m as u8) {
        (15, 7) => f64::NAN,
        (0, _) => sign * m * 2f64.powi(-9),
        _ => sign * (1.0 + m / 8.0) * 2f64.powi(e - 7),
    }
}

/// Round to the nearest e4m3 value, ties to the even code, saturating at 448.
fn e4m3_code(v: f64) -> u8 {
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs();
    if a >= 448.0 {
        return sign | 0x7E;
    }
    let mut best = 0u8;
    for c in 1..=0x7Eu8 {
        let (d_best, d) = ((e4m3(best) - a).abs(), (e4m3(c) - a).abs());
        if d < d_best || (d == d_best && c % 2 == 0) {
            best = c;
        }
    }
    sign | best
}

/// Contract `fp8_block128` on one f32 row (as f64 values), per group of 128.
fn quantize_activation(row: &[f64], ue8m0: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(row.len());
    for group in row.chunks(128) {
        let g: Vec<f32> = group.iter().map(|&v| v as f32).collect();
        let amax = g.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-4);
        let mut sc = amax / 448.0;
        if ue8m0 {
            sc = 2f64.powi((sc as f64).log2().ceil() as i32) as f32;
        }
        out.extend(g.iter().map(|&v| e4m3_at(v / sc) * sc as f64));
    }
    out
}

/// The value e4m3 encoding gives `v`.
fn e4m3_at(v: f32) -> f64 {
    e4m3(e4m3_code(v as f64))
}

// ---- moe_route v2 ---------------------------------------------------------------------

fn sqrt_softplus(x: f64) -> f64 {
    if x > 20.0 { x } else { x.exp().ln_1p() }.sqrt()
}

#[test]
fn hash_routing_takes_each_tokens_table_row_and_renormalises() {
    let b = cpu();
    let (t, e, vocab, k) = (5, 16, 6, 3);
    let mut rng = Lcg::new(1);
    let mut logits = rng.vec(t * e, -3.0, 3.0);
    // Token 4 has every score 0 (sigmoid of -1000): its weights are exactly 0, not NaN.
    logits[4 * e..].fill(-1000.0);
    let table: Vec<i32> = (0..vocab * k)
        .map(|n| ((n * 5 + n / k) % e) as i32)
        .collect();
    let input_ids = [3, 0, 5, 3, 1];
    for (func, sf) in [(ScoreFunc::Sqrtsoftplus, 0), (ScoreFunc::Sigmoid, 1)] {
        let p = RouteParams {
            score_func: func,
            top_k: k,
            n_group: 1,
            topk_group: 1,
            group_select: GroupSelect::Max,
            renormalize: true,
            routed_scaling_factor: 1.5,
        };
        let (lt, lv) = floats(&b, &[t, e], &logits, DType::F32);
        let (ids, tab) = (ints(&b, &[t], &input_ids), ints(&b, &[vocab, k], &table));
        let out = ops::moe_route_with(&b, RouteInputs::new(&lt).with_hash(&ids, &tab), &p).unwrap();
        let got_ids = b.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
        let got_w = download(&b, &out.topk_weights);
        for (tok, &id) in input_ids.iter().enumerate() {
            let row = &table[id as usize * k..][..k];
            assert_eq!(&got_ids[tok * k..][..k], row, "token {tok}");
            let s: Vec<f64> = row
                .iter()
                .map(|&x| {
                    let v = lv[tok * e + x as usize];
                    if sf == 0 {
                        sqrt_softplus(v)
                    } else {
                        1.0 / (1.0 + (-v).exp())
                    }
                })
                .collect();
            let sum: f64 = s.iter().sum::<f64>().max(1e-20);
            for j in 0..k {
                let want = s[j] / sum * 1.5;
                let got = got_w[tok * k + j];
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want),
                    "{tok},{j}: {got} vs {want}"
                );
            }
        }
        if sf == 1 {
            assert_eq!(&got_w[4 * k..], &[0.0; 3], "all-zero scores give weights 0");
        }
    }
}

#[test]
fn hash_routing_checks_the_rows_tokens_read() {
    let b = cpu();
    let p = RouteParams {
        score_func: ScoreFunc::Sqrtsoftplus,
        top_k: 2,
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: false,
        routed_scaling_factor: 1.0,
    };
    let (lt, _) = floats(&b, &[2, 4], &[0.5; 8], DType::BF16);
    // Row 1 is unread and holds garbage; row 2 (read by token 1) repeats expert 3.
    let tab = ints(&b, &[3, 2], &[0, 1, i32::MIN, 9, 3, 3]);
    let ids = ints(&b, &[2], &[0, 2]);
    let err = ops::moe_route_with(&b, RouteInputs::new(&lt).with_hash(&ids, &tab), &p).unwrap_err();
    assert!(
        matches!(&err, Error::IndexOutOfRange { arg: "tid2eid", index, value: 3, .. } if index == &vec![2, 1]),
        "{err}"
    );
}

#[test]
fn sqrtsoftplus_top_k_routing_matches_f64() {
    let b = cpu();
    let (t, e, k) = (7, 64, 6);
    let mut rng = Lcg::new(2);
    let (lt, lv) = floats(&b, &[t, e], &rng.vec(t * e, -4.0, 25.0), DType::F16);
    let (bt, bv) = floats(&b, &[e], &rng.vec(e, -0.05, 0.05), DType::F32);
    let p = RouteParams {
        score_func: ScoreFunc::Sqrtsoftplus,
        top_k: k,
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.5,
    };
    let out = ops::moe_route(&b, &lt, Some(&bt), &p).unwrap();
    let got_ids = b.download(&out.topk_ids).unwrap().to_i32_vec().unwrap();
    let got_w = download(&b, &out.topk_weights);
    for tok in 0..t {
        let s: Vec<f64> = lv[tok * e..][..e]
            .iter()
            .map(|&x| sqrt_softplus(x))
            .collect();
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &c| (s[c] + bv[c]).total_cmp(&(s[a] + bv[a])));
        let sum: f64 = order[..k].iter().map(|&i| s[i]).sum();
        for j in 0..k {
            let id = got_ids[tok * k + j] as usize;
            assert!(order[..k].contains(&id), "token {tok}: {id}");
            let want = s[id] / sum * 1.5;
            assert!((got_w[tok * k + j] - want).abs() < 1e-5, "{tok},{j}");
        }
    }
}

// ---- moe_experts v2 -------------------------------------------------------------------

/// FP8 weights [E, R, C] with 128x128 block scales: codes and scales chosen here (every
/// block's largest code is ±448, 1% of codes -0.0), and their exact values.
fn fp8_weights(
    rng: &mut Lcg,
    e: usize,
    r: usize,
    c: usize,
    gain: f64,
) -> (Vec<u8>, Vec<f32>, Vec<f64>) {
    let (rb, cb) = (r.div_ceil(128), c.div_ceil(128));
    let scales: Vec<f32> = (0..e * rb * cb)
        .map(|_| rng.uniform(0.5, 1.5) * gain as f32 / 448.0)
        .collect();
    let mut codes = vec![0u8; e * r * c];
    for (n, code) in codes.iter_mut().enumerate() {
        let u = rng.unit();
        *code = if u < 0.01 {
            0x80
        } else if n % 997 == 0 {
            0x7E | if u < 0.5 { 0x80 } else { 0 }
        } else {
            e4m3_code(rng.uniform(-200.0, 200.0) as f64)
        };
    }
    let values = (0..e * r * c)
        .map(|n| {
            let (x, rem) = (n / (r * c), n % (r * c));
            let (row, col) = (rem / c, rem % c);
            e4m3(codes[n]) * scales[(x * rb + row / 128) * cb + col / 128] as f64
        })
        .collect();
    (codes, scales, values)
}

/// `y` in f64 over exact weights; `quant`: fp8_block128 with UE8M0 (`Some(true)`) or f32
/// (`Some(false)`) scales; `limit`: the SwiGLU clamp.
#[allow(clippy::too_many_arguments)]
fn experts_reference(
    x: &[f64],
    w13: &[f64],
    w2: &[f64],
    ids: &[i32],
    weights: &[f32],
    (h, i, k): (usize, usize, usize),
    quant: Option<bool>,
    limit: Option<f64>,
) -> Vec<f64> {
    let t = x.len() / h;
    let mut y = vec![0.0; t * h];
    for tok in 0..t {
        let xt = match quant {
            Some(ue) => quantize_activation(&x[tok * h..][..h], ue),
            None => x[tok * h..][..h].to_vec(),
        };
        for j in 0..k {
            let (id, w) = (ids[tok * k + j], weights[tok * k + j]);
            if id < 0 || w == 0.0 {
                continue;
            }
            let e = id as usize;
            let dot = |row: usize| -> f64 {
                let wr = &w13[(e * 2 * i + row) * h..][..h];
                wr.iter().zip(&xt).map(|(a, b)| a * b).sum()
            };
            let mut act: Vec<f64> = (0..i)
                .map(|r| {
                    let (mut g, mut u) = (dot(r), dot(i + r));
                    if let Some(c) = limit {
                        g = g.min(c);
                        u = u.clamp(-c, c);
                    }
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            if let Some(ue) = quant {
                act = quantize_activation(&act, ue);
            }
            for c in 0..h {
                let wr = &w2[(e * h + c) * i..][..i];
                let d: f64 = wr.iter().zip(&act).map(|(a, b)| a * b).sum();
                y[tok * h + c] += w as f64 * d;
            }
        }
    }
    y
}

/// An FP8 experts problem: T tokens, H 200, I 96 (2I = 192: the second w13 block row
/// straddles W1/W3; every dim has a partial block), E 3, k 2.
struct Fp8Experts {
    t: usize,
    x: Vec<f32>,
    w13: (Vec<u8>, Vec<f32>, Vec<f64>),
    w2: (Vec<u8>, Vec<f32>, Vec<f64>),
    ids: Vec<i32>,
    weights: Vec<f32>,
}

const H: usize = 200;
const I: usize = 96;
const E: usize = 3;
const K: usize = 2;

impl Fp8Experts {
    fn new(t: usize, seed: u64) -> Self {
        let mut rng = Lcg::new(seed);
        let ids = (0..t * K)
            .map(|n| {
                if n == 3 {
                    -1
                } else {
                    ((n * 2 + n / K) % E) as i32
                }
            })
            .collect();
        let mut weights = rng.vec(t * K, 0.1, 1.0);
        if t > 2 {
            weights[4] = -0.0;
        }
        Fp8Experts {
            t,
            x: rng.vec(t * H, -2.0, 2.0),
            w13: fp8_weights(&mut rng, E, 2 * I, H, 0.12),
            w2: fp8_weights(&mut rng, E, H, I, 0.12),
            ids,
            weights,
        }
    }

    fn run(&self, b: &CpuBackend, dtype: DType, p: &ExpertsParams) -> (Vec<f64>, Vec<f64>) {
        let (x, xv) = floats(b, &[self.t, H], &self.x, dtype);
        let w13 = bytes(b, &[E, 2 * I, H], DType::F8E4M3, self.w13.0.clone());
        let w2 = bytes(b, &[E, H, I], DType::F8E4M3, self.w2.0.clone());
        let (s13, _) = floats(b, &[E, 2, 2], &self.w13.1, DType::F32);
        let (s2, _) = floats(b, &[E, 2, 1], &self.w2.1, DType::F32);
        let ids = ints(b, &[self.t, K], &self.ids);
        let (w, _) = floats(b, &[self.t, K], &self.weights, DType::F32);
        let inputs = ExpertsInputs::new(&x, &w13, &w2, &ids, &w).with_scales(&s13, &s2);
        let y = ops::moe_experts_with(b, inputs, p).unwrap();
        assert_eq!(y.dtype(), dtype);
        (download(b, &y), xv)
    }

    fn reference(&self, xv: &[f64], quant: Option<bool>, limit: Option<f64>) -> Vec<f64> {
        let dims = (H, I, K);
        experts_reference(
            xv,
            &self.w13.2,
            &self.w2.2,
            &self.ids,
            &self.weights,
            dims,
            quant,
            limit,
        )
    }
}

#[test]
fn fp8_experts_w8a16_match_exactly_dequantized_weights() {
    let b = cpu();
    // T 1 takes the matrix-vector path, T 13 the tiled GEMMs.
    for (t, dtype, tol) in [
        (1, DType::F32, 1e-5),
        (13, DType::F32, 1e-5),
        (13, DType::BF16, 8e-3),
        (13, DType::F16, 1e-3),
    ] {
        let prob = Fp8Experts::new(t, 3);
        let (got, xv) = prob.run(&b, dtype, &ExpertsParams::default());
        let want = prob.reference(&xv, None, None);
        assert_close(&format!("y T{t} {dtype}"), &got, &want, tol);
    }
}

#[test]
fn fp8_experts_w8a8_quantize_x_and_the_activations_per_128() {
    let b = cpu();
    for (t, ue8m0) in [(13, false), (13, true), (1, true)] {
        let prob = Fp8Experts::new(t, 4);
        let p = ExpertsParams {
            activation_quant: ActivationQuant::Fp8Block128,
            activation_scale: if ue8m0 {
                ActivationScale::Ue8m0
            } else {
                ActivationScale::F32
            },
            swiglu_limit: None,
        };
        let (got, xv) = prob.run(&b, DType::F32, &p);
        let want = prob.reference(&xv, Some(ue8m0), None);
        assert_close(&format!("w8a8 T{t} ue8m0 {ue8m0}"), &got, &want, 1e-4);
        // The test bites: skipping either quantization, or the other scale mode, misses
        // the tolerance by far.
        let skipped = prob.reference(&xv, None, None);
        let other = prob.reference(&xv, Some(!ue8m0), None);
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for wrong in [skipped, other] {
            let err = (wrong.iter().zip(&want)).fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                err > 1e-2 * scale,
                "quantization must matter: {err} vs {scale}"
            );
        }
    }
}

#[test]
fn swiglu_limit_clamps_gate_and_up() {
    let b = cpu();
    let (t, h, i, e, k) = (6, 64, 40, 2, 2);
    let mut rng = Lcg::new(5);
    let x = rng.vec(t * h, -2.0, 2.0);
    let w13 = rng.vec(e * 2 * i * h, -0.6, 0.6);
    let w2 = rng.vec(e * h * i, -0.1, 0.1);
    let ids: Vec<i32> = (0..t * k).map(|n| (n % e) as i32).collect();
    let weights = rng.vec(t * k, 0.2, 1.0);
    let (xt, xv) = floats(&b, &[t, h], &x, DType::F32);
    let (w13t, w13v) = floats(&b, &[e, 2 * i, h], &w13, DType::F32);
    let (w2t, w2v) = floats(&b, &[e, h, i], &w2, DType::F32);
    let idt = ints(&b, &[t, k], &ids);
    let (wt, _) = floats(&b, &[t, k], &weights, DType::F32);
    let p = ExpertsParams {
        swiglu_limit: Some(2.0),
        ..Default::default()
    };
    let inputs = ExpertsInputs::new(&xt, &w13t, &w2t, &idt, &wt);
    let got = download(&b, &ops::moe_experts_with(&b, inputs, &p).unwrap());
    let dims = (h, i, k);
    let want = experts_reference(&xv, &w13v, &w2v, &ids, &weights, dims, None, Some(2.0));
    assert_close("clamped y", &got, &want, 1e-5);
    let free = experts_reference(&xv, &w13v, &w2v, &ids, &weights, dims, None, None);
    let err = (free.iter().zip(&want)).fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(err > 0.1, "the clamp must bite: {err}");
}

// ---- the FP8 latent cache -------------------------------------------------------------

/// bf16 round-to-nearest-even of an f32, as bits.
fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// The contract's 656-byte row, written from its definition (f64 log2 for the power of
/// two: exact for f32 inputs, unlike an f32 log2).
fn quantize_row_reference(kv: &[f32]) -> Vec<u8> {
    let mut row = vec![0u8; 656];
    for t in 0..4 {
        let tile = &kv[t * 128..(t + 1) * 128];
        let amax = tile.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let sc = (amax / 448.0).max(1e-4);
        let sc = 2f64.powi((sc as f64).log2().ceil() as i32) as f32;
        for (d, &v) in tile.iter().enumerate() {
            row[t * 128 + d] = e4m3_code(v as f64 / sc as f64);
        }
        row[512 + 4 * t..516 + 4 * t].copy_from_slice(&sc.to_le_bytes());
    }
    for r in 0..64 {
        row[528 + 2 * r..530 + 2 * r].copy_from_slice(&bf16_bits(kv[512 + r]).to_le_bytes());
    }
    row
}

/// A row dequantized from its definition.
fn dequantize_row_reference(row: &[u8]) -> Vec<f64> {
    let scale = |t: usize| f32::from_le_bytes(row[512 + 4 * t..516 + 4 * t].try_into().unwrap());
    let mut out: Vec<f64> = (0..512)
        .map(|d| e4m3(row[d]) * scale(d / 128) as f64)
        .collect();
    out.extend((0..64).map(|r| {
        let bits = u16::from_le_bytes([row[528 + 2 * r], row[529 + 2 * r]]);
        bf16::from_bits(bits).to_f64()
    }));
    out
}

/// `n` latent rows with magnitudes from 1e-3 to 1e3, an all-zero tile and -0.0.
fn latent_rows(rng: &mut Lcg, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * 576);
    for r in 0..n {
        let mag = 10f64.powf(-3.0 + 6.0 * r as f64 / n.max(2) as f64);
        for _ in 0..576 {
            v.push(rng.uniform(-mag, mag));
        }
    }
    v[128..256].fill(0.0);
    v[130] = -0.0;
    v
}

#[test]
fn kv_quantize_matches_an_independent_quantizer_byte_for_byte() {
    let b = cpu();
    let mut rng = Lcg::new(6);
    let n = 40;
    let values = latent_rows(&mut rng, n);
    let p = KvQuantizeParams {
        kv_format: KvFormat::Fp8DsV32,
    };
    for dtype in DType::FLOATS {
        let (kv, stored) = floats(&b, &[n, 576], &values, dtype);
        let out = ops::mla_kv_quantize(&b, &kv, &p).unwrap();
        let got = b.download(&out).unwrap();
        assert_eq!((got.dims(), got.dtype()), (&[n, 656][..], DType::U8));
        for r in 0..n {
            let row: Vec<f32> = stored[r * 576..][..576].iter().map(|&v| v as f32).collect();
            let want = quantize_row_reference(&row);
            let have = &got.as_bytes()[r * 656..][..656];
            if let Some(at) = (0..656).find(|&i| have[i] != want[i]) {
                panic!(
                    "{dtype} row {r} byte {at}: {:#04x} vs {:#04x}",
                    have[at], want[at]
                );
            }
        }
        assert_eq!(got.as_bytes()[130], 0x80, "-0.0 encodes as 0x80");
    }
}

#[test]
fn kv_quantize_rejects_a_non_finite_row() {
    let b = cpu();
    let mut v = vec![1.0f32; 3 * 576];
    v[2 * 576 + 7] = f32::NEG_INFINITY;
    let (kv, _) = floats(&b, &[3, 576], &v, DType::BF16);
    let p = KvQuantizeParams {
        kv_format: KvFormat::Fp8DsV32,
    };
    match ops::mla_kv_quantize(&b, &kv, &p).unwrap_err() {
        Error::Input { op, arg, got, .. } => {
            assert_eq!((op, arg), (Op::MlaKvQuantize, "kv"));
            assert!(got.contains("row 2"), "{got}");
        }
        other => panic!("{other}"),
    }
}

/// An FP8 cache [num_blocks, bs, 1, 656] whose used slots hold quantized rows of `rng`
/// values scaled by 1..1.25 (non-power-of-two scales), unused ones 0xFF; and the rows'
/// exact values by slot (NaN where unused).
fn fp8_cache(
    rng: &mut Lcg,
    num_blocks: usize,
    bs: usize,
    used: &[usize],
) -> (Vec<u8>, Vec<Vec<f64>>) {
    let slots = num_blocks * bs;
    let mut cache = vec![0xFFu8; slots * 656];
    let mut rows = vec![vec![f64::NAN; 576]; slots];
    for &s in used {
        let kv = rng.vec(576, -1.5, 1.5);
        let mut row = quantize_row_reference(&kv);
        let stretch = rng.uniform(1.0, 1.25);
        for t in 0..4 {
            let at = 512 + 4 * t;
            let sc = f32::from_le_bytes(row[at..at + 4].try_into().unwrap()) * stretch;
            row[at..at + 4].copy_from_slice(&sc.to_le_bytes());
        }
        rows[s] = dequantize_row_reference(&row);
        cache[s * 656..(s + 1) * 656].copy_from_slice(&row);
    }
    (cache, rows)
}

/// Softmax attention of `q` (Hq x Dqk, f64) over `keys` (rows of Dqk), value = the first
/// `d_v` columns: (o per head, lse per head).
fn attention(
    q: &[f64],
    keys: &[&[f64]],
    d_qk: usize,
    d_v: usize,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let h_q = q.len() / d_qk;
    let mut o = vec![0.0; h_q * d_v];
    let mut lse = vec![f64::NEG_INFINITY; h_q];
    if keys.is_empty() {
        return (o, lse);
    }
    for h in 0..h_q {
        let qh = &q[h * d_qk..][..d_qk];
        let s: Vec<f64> = keys
            .iter()
            .map(|k| scale * k.iter().zip(qh).map(|(a, b)| a * b).sum::<f64>())
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let l: f64 = p.iter().sum();
        for (pj, k) in p.iter().zip(keys) {
            for d in 0..d_v {
                o[h * d_v + d] += pj * k[d] / l;
            }
        }
        lse[h] = m + l.ln();
    }
    (o, lse)
}

#[test]
fn mla_decode_over_the_fp8_cache_reads_only_used_rows_with_their_stored_scales() {
    let b = cpu();
    let mut rng = Lcg::new(7);
    let (bsz, s_q, h_q, bs, max_blocks) = (2, 2, 8, 16, 3);
    let seqlens = [37usize, 9];
    let table = [4, 1, 0, 2, 2_147_480_000, -1];
    let used: Vec<usize> = (0..bsz)
        .flat_map(|b| {
            (0..seqlens[b]).map(move |p| table[b * max_blocks + p / bs] as usize * bs + p % bs)
        })
        .collect();
    let (cache, rows) = fp8_cache(&mut rng, 5, bs, &used);
    let scale = MlaDecodeParams::DEEPSEEK_V3_SOFTMAX_SCALE;
    for dtype in [DType::BF16, DType::F16] {
        let (q, qv) = floats(
            &b,
            &[bsz, s_q, h_q, 576],
            &rng.vec(bsz * s_q * h_q * 576, -1.0, 1.0),
            dtype,
        );
        let kv = bytes(&b, &[5, bs, 1, 656], DType::U8, cache.clone());
        let (tt, lt) = (
            ints(&b, &[bsz, max_blocks], &table),
            ints(&b, &[bsz], &[37, 9]),
        );
        let p = MlaDecodeParams {
            kv_format: KvFormat::Fp8DsV32,
            ..MlaDecodeParams::deepseek_v3()
        };
        let out = ops::mla_decode(&b, &q, &kv, &tt, &lt, &p).unwrap();
        let (o, lse) = (download(&b, &out.o), download(&b, &out.lse));
        let (mut want_o, mut want_lse) = (Vec::new(), vec![0.0; bsz * h_q * s_q]);
        for bi in 0..bsz {
            for i in 0..s_q {
                let len = seqlens[bi] - s_q + i + 1;
                let keys: Vec<&[f64]> = (0..len)
                    .map(|p| &rows[table[bi * max_blocks + p / bs] as usize * bs + p % bs][..])
                    .collect();
                let qr = &qv[(bi * s_q + i) * h_q * 576..][..h_q * 576];
                let (oo, ll) = attention(qr, &keys, 576, 512, scale);
                want_o.extend(oo);
                for h in 0..h_q {
                    want_lse[(bi * h_q + h) * s_q + i] = ll[h];
                }
            }
        }
        let tol = if dtype == DType::BF16 { 8e-3 } else { 1e-3 };
        assert_close("o", &o, &want_o, tol);
        assert_close("lse", &lse, &want_lse, 1e-5);
    }
}

// ---- mla_sparse_decode ----------------------------------------------------------------

/// Sparse attention in f64 over `rows` (by slot): per (b, i) the entries j < len[b] that
/// are not -1; the sink scales o by 1 / (1 + exp(sink - lse)).
#[allow(clippy::too_many_arguments)]
fn sparse_reference(
    q: &[f64],
    rows: &[Vec<f64>],
    indices: &[i32],
    lens: &[usize],
    sink: Option<&[f32]>,
    (bsz, s_q, h_q, topk): (usize, usize, usize, usize),
    (d_qk, d_v): (usize, usize),
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut o = Vec::new();
    let mut lse = vec![0.0; bsz * h_q * s_q];
    for b in 0..bsz {
        for i in 0..s_q {
            let r = b * s_q + i;
            let keys: Vec<&[f64]> = indices[r * topk..][..lens[b]]
                .iter()
                .filter(|&&s| s != -1)
                .map(|&s| &rows[s as usize][..])
                .collect();
            let (mut oo, ll) =
                attention(&q[r * h_q * d_qk..][..h_q * d_qk], &keys, d_qk, d_v, scale);
            for h in 0..h_q {
                lse[(b * h_q + h) * s_q + i] = ll[h];
                if let (Some(s), true) = (sink, ll[h].is_finite()) {
                    let f = 1.0 / (1.0 + (s[h] as f64 - ll[h]).exp());
                    oo[h * d_v..(h + 1) * d_v].iter_mut().for_each(|v| *v *= f);
                }
            }
            o.extend(oo);
        }
    }
    (o, lse)
}

#[test]
fn sparse_decode_attends_the_listed_multiset_with_lengths_and_sinks() {
    let b = cpu();
    let mut rng = Lcg::new(8);
    let (bsz, s_q, h_q, topk, d_qk, d_v, bs, nb) = (3, 2, 8, 40, 64, 48, 16, 6);
    let slots = nb * bs;
    // Slots 0..70 hold values, the rest NaN: listed entries never name them.
    let mut cache = rng.vec(slots * d_qk, -1.0, 1.0);
    cache[70 * d_qk..].fill(f32::NAN);
    let lens = [40usize, 9, 0];
    let mut indices: Vec<i32> = (0..bsz * s_q * topk)
        .map(|_| rng.below(70) as i32)
        .collect();
    for r in 0..bsz * s_q {
        let row = &mut indices[r * topk..][..topk];
        row[3] = -1;
        row[5] = row[4]; // a duplicate attends twice
        if r / s_q == 1 {
            row[9..].fill(2_147_480_000); // beyond topk_length: never read
        }
    }
    // Batch 0, query 1: no valid entry at all.
    indices[topk..2 * topk].fill(-1);
    let sink = [
        0.3f32,
        -1.0,
        f32::NEG_INFINITY,
        f32::INFINITY,
        2.0,
        0.0,
        -0.5,
        1.0,
    ];
    for dtype in DType::FLOATS {
        let (q, qv) = floats(
            &b,
            &[bsz, s_q, h_q, d_qk],
            &rng.vec(bsz * s_q * h_q * d_qk, -1.0, 1.0),
            dtype,
        );
        let (kv, kvv) = floats(&b, &[nb, bs, 1, d_qk], &cache, dtype);
        let rows: Vec<Vec<f64>> = kvv.chunks(d_qk).map(|c| c.to_vec()).collect();
        let it = ints(&b, &[bsz, s_q, topk], &indices);
        let lt = ints(&b, &[bsz], &lens.map(|l| l as i32));
        let (st, _) = floats(&b, &[h_q], &sink, DType::F32);
        let p = SparseDecodeParams {
            softmax_scale: 0.125,
            head_dim_v: d_v,
            kv_format: KvFormat::Dense,
        };
        let inputs = SparseDecodeInputs::new(&q, &kv, &it)
            .with_topk_length(&lt)
            .with_attn_sink(&st);
        let out = ops::mla_sparse_decode(&b, inputs, &p).unwrap();
        let (o, lse) = (download(&b, &out.o), download(&b, &out.lse));
        let dims = (bsz, s_q, h_q, topk);
        let (want_o, want_lse) = sparse_reference(
            &qv,
            &rows,
            &indices,
            &lens,
            Some(&sink),
            dims,
            (d_qk, d_v),
            0.125,
        );
        let tol = match dtype {
            DType::F32 => 1e-5,
            DType::F16 => 1e-3,
            _ => 8e-3,
        };
        assert_close(&format!("o {dtype}"), &o, &want_o, tol);
        assert_close(&format!("lse {dtype}"), &lse, &want_lse, 1e-5);
        // The empty rows: o = 0, lse = -inf; the +inf sink zeroes head 3.
        for h in 0..h_q {
            assert_eq!(lse[h * s_q + 1], f64::NEG_INFINITY);
            assert_eq!(lse[(2 * h_q + h) * s_q], f64::NEG_INFINITY);
        }
        assert!(o[3 * d_v..][..d_v].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn sparse_decode_over_the_fp8_cache_with_long_lists_split_across_threads() {
    let b = cpu();
    let mut rng = Lcg::new(9);
    // One query (decode) over 1000 entries and an MTP pair over 300: several jobs per row.
    for (bsz, s_q, topk) in [(1, 1, 1000), (1, 2, 300)] {
        let (h_q, bs, nb) = (16, 64, 20);
        let used: Vec<usize> = (0..1100).collect();
        let (cache, rows) = fp8_cache(&mut rng, nb, bs, &used);
        let indices: Vec<i32> = (0..bsz * s_q * topk)
            .map(|_| rng.below(1100) as i32)
            .collect();
        let (q, qv) = floats(
            &b,
            &[bsz, s_q, h_q, 576],
            &rng.vec(bsz * s_q * h_q * 576, -1.0, 1.0),
            DType::BF16,
        );
        let kv = bytes(&b, &[nb, bs, 1, 656], DType::U8, cache);
        let it = ints(&b, &[bsz, s_q, topk], &indices);
        let p = SparseDecodeParams::deepseek_v32();
        let out = ops::mla_sparse_decode(&b, SparseDecodeInputs::new(&q, &kv, &it), &p).unwrap();
        let (o, lse) = (download(&b, &out.o), download(&b, &out.lse));
        let dims = (bsz, s_q, h_q, topk);
        let (want_o, want_lse) = sparse_reference(
            &qv,
            &rows,
            &indices,
            &[topk],
            None,
            dims,
            (576, 512),
            p.softmax_scale,
        );
        assert_close("o fp8", &o, &want_o, 8e-3);
        assert_close("lse fp8", &lse, &want_lse, 1e-5);
    }
}

// ---- dsa_indexer_topk -----------------------------------------------------------------

/// A paged indexer problem: per sequence its positions' slots through a random table.
struct Paged {
    table: Vec<i32>,
    max_blocks: usize,
    bs: usize,
}

impl Paged {
    fn slot(&self, b: usize, p: usize) -> usize {
        self.table[b * self.max_blocks + p / self.bs] as usize * self.bs + p % self.bs
    }
}

#[test]
fn indexer_picks_the_best_scores_with_causal_limits_and_padding() {
    let b = cpu();
    let mut rng = Lcg::new(10);
    let (bsz, s_q, h_i, d_i, bs, nb, top_k) = (2, 3, 4, 32, 16, 6, 16);
    let seqlens = [40usize, 5];
    let paged = Paged {
        table: vec![5, 0, 3, 2, 2_147_480_000, -7],
        max_blocks: 3,
        bs,
    };
    let weights = rng.vec(bsz * s_q * h_i, 0.2, 1.0);
    for dtype in DType::FLOATS {
        let (q, qv) = floats(
            &b,
            &[bsz, s_q, h_i, d_i],
            &rng.vec(bsz * s_q * h_i * d_i, -1.0, 1.0),
            dtype,
        );
        let (k, kv) = floats(
            &b,
            &[nb, bs, d_i],
            &rng.vec(nb * bs * d_i, -1.0, 1.0),
            dtype,
        );
        let (w, _) = floats(&b, &[bsz, s_q, h_i], &weights, DType::F32);
        let tt = ints(&b, &[bsz, 3], &paged.table);
        let lt = ints(&b, &[bsz], &[40, 5]);
        let p = IndexerParams {
            top_k,
            causal: true,
        };
        let out = ops::dsa_indexer_topk(&b, &q, &w, &k, &tt, &lt, &p).unwrap();
        let idx = b.download(&out.topk_indices).unwrap().to_i32_vec().unwrap();
        let sc = download(&b, &out.topk_scores);
        for (bi, &seqlen) in seqlens.iter().enumerate() {
            for i in 0..s_q {
                let r = bi * s_q + i;
                let len = seqlen - s_q + i + 1;
                let mut want: Vec<(f64, usize)> = (0..len)
                    .map(|pos| {
                        let slot = paged.slot(bi, pos);
                        let s: f64 = (0..h_i)
                            .map(|h| {
                                let dot: f64 = (0..d_i)
                                    .map(|d| qv[(r * h_i + h) * d_i + d] * kv[slot * d_i + d])
                                    .sum();
                                weights[r * h_i + h] as f64 * dot.max(0.0)
                            })
                            .sum();
                        (s, slot)
                    })
                    .collect();
                want.sort_by(|a, c| c.0.total_cmp(&a.0));
                want.truncate(top_k);
                let got_i = &idx[r * top_k..][..top_k];
                let got_s = &sc[r * top_k..][..top_k];
                for (j, &(s, slot)) in want.iter().enumerate() {
                    let at = got_i.iter().position(|&g| g == slot as i32);
                    let at = at.unwrap_or_else(|| panic!("{dtype} row {r}: slot {slot} missing"));
                    assert!(
                        (got_s[at] - s).abs() <= 1e-4 * (1.0 + s.abs()),
                        "{dtype} {r} {j}"
                    );
                }
                assert!(
                    got_s[..want.len()].windows(2).all(|w| w[0] >= w[1]),
                    "descending"
                );
                assert!(got_i[want.len()..].iter().all(|&v| v == -1), "padding");
                assert!(got_s[want.len()..].iter().all(|&v| v == f64::NEG_INFINITY));
            }
        }
    }
}

#[test]
fn indexer_top_k_fed_to_sparse_decode_equals_dense_decode_when_it_covers_the_sequence() {
    let b = cpu();
    let mut rng = Lcg::new(11);
    let (bsz, s_q, h_q, d_qk, d_v, bs, nb) = (2, 3, 8, 64, 48, 16, 7);
    let (h_i, d_i, top_k) = (4, 16, 64);
    let seqlens = [45, 20];
    let table = [6, 1, 3, 0, 4, 5, 2, 2_147_480_000, -1, -1];
    let (tt, lt) = (ints(&b, &[bsz, 5], &table), ints(&b, &[bsz], &seqlens));
    // Indexer: causal top-64 of at most 45 positions, so every attended position.
    let (q_i, _) = floats(
        &b,
        &[bsz, s_q, h_i, d_i],
        &rng.vec(bsz * s_q * h_i * d_i, -1.0, 1.0),
        DType::F32,
    );
    let (w_i, _) = floats(
        &b,
        &[bsz, s_q, h_i],
        &rng.vec(bsz * s_q * h_i, 0.1, 1.0),
        DType::F32,
    );
    let (k_i, _) = floats(
        &b,
        &[nb, bs, d_i],
        &rng.vec(nb * bs * d_i, -1.0, 1.0),
        DType::F32,
    );
    let ip = IndexerParams {
        top_k,
        causal: true,
    };
    let picked = ops::dsa_indexer_topk(&b, &q_i, &w_i, &k_i, &tt, &lt, &ip).unwrap();
    // MLA over the same paged layout.
    let (q, _) = floats(
        &b,
        &[bsz, s_q, h_q, d_qk],
        &rng.vec(bsz * s_q * h_q * d_qk, -1.0, 1.0),
        DType::F32,
    );
    let (kv, _) = floats(
        &b,
        &[nb, bs, 1, d_qk],
        &rng.vec(nb * bs * d_qk, -1.0, 1.0),
        DType::F32,
    );
    let dense = MlaDecodeParams {
        softmax_scale: 0.125,
        causal: true,
        head_dim_v: d_v,
        kv_format: KvFormat::Dense,
    };
    let want = ops::mla_decode(&b, &q, &kv, &tt, &lt, &dense).unwrap();
    let sp = SparseDecodeParams {
        softmax_scale: 0.125,
        head_dim_v: d_v,
        kv_format: KvFormat::Dense,
    };
    let got = ops::mla_sparse_decode(
        &b,
        SparseDecodeInputs::new(&q, &kv, &picked.topk_indices),
        &sp,
    )
    .unwrap();
    assert_close("o", &download(&b, &got.o), &download(&b, &want.o), 1e-5);
    assert_close(
        "lse",
        &download(&b, &got.lse),
        &download(&b, &want.lse),
        1e-6,
    );
}
