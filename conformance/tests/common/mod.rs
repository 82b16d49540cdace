//! Test fixtures: tiny golden cases written with the `safetensors` crate into a temporary
//! directory, their expected values computed here in plain f64 from the contract's text.

#![allow(dead_code)] // each test file uses a different part

use moemla_core::{DType, HostTensor};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "moemla-conformance-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside the directory.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a case file: `tensors` by full name (`in.x`, `out.y`), metadata as given.
pub fn write_case(path: &Path, meta: &[(&str, &str)], tensors: &[(&str, &HostTensor)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = match t.dtype() {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                DType::I32 => Dtype::I32,
                DType::F8E4M3 => Dtype::F8_E4M3,
                DType::U8 => Dtype::U8,
            };
            let view = TensorView::new(dtype, t.dims().to_vec(), t.as_bytes()).unwrap();
            (name.to_string(), view)
        })
        .collect();
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic values in [-1, 1) (a 64-bit LCG; Knuth's MMIX constants).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `values` stored in `dtype`, and the stored values widened to f64 (what the reference
/// must compute from).
pub fn stored(dims: &[usize], vals: &[f32], dtype: DType) -> (HostTensor, Vec<f64>) {
    let t = HostTensor::from_f32_as(dims.to_vec(), vals, dtype).unwrap();
    let wide = t.to_f32_vec().unwrap().iter().map(|&v| v as f64).collect();
    (t, wide)
}

/// An F32 tensor of f64 values (expected outputs are stored as F32).
pub fn f32_tensor(dims: &[usize], vals: &[f64]) -> HostTensor {
    let v: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
    HostTensor::from_slice(dims.to_vec(), &v).unwrap()
}

/// An I32 tensor.
pub fn i32_tensor(dims: &[usize], vals: &[i32]) -> HostTensor {
    HostTensor::from_slice(dims.to_vec(), vals).unwrap()
}

/// The lower-case dtype folder name (`f32`, `bf16`).
pub fn folder(dtype: DType) -> String {
    dtype.name().to_lowercase()
}

// ---- moe_route: T=4, E=8, top_k=2, 2 groups keep 1, sigmoid, top-2-sum, bias ----

pub const ROUTE_T: usize = 4;
pub const ROUTE_E: usize = 8;
pub const ROUTE_K: usize = 2;
pub const ROUTE_PARAMS: &str = r#"{"score_func":"sigmoid","top_k":2,"n_group":2,"topk_group":1,"group_select":"top2_sum","renormalize":true,"routed_scaling_factor":2.5}"#;

/// Reference routing in f64 for [`ROUTE_PARAMS`]: ids in descending selection score.
pub fn route_ref(logits: &[f64], bias: &[f64]) -> (Vec<i32>, Vec<f64>) {
    let (mut ids, mut weights) = (Vec::new(), Vec::new());
    for row in logits.chunks(ROUTE_E) {
        let s: Vec<f64> = row.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
        let mut sel: Vec<f64> = s.iter().zip(bias).map(|(a, b)| a + b).collect();
        // Group score: sum of the two best in each group of 4; keep the best group.
        let score = |g: usize| {
            let mut v: Vec<f64> = sel[g * 4..g * 4 + 4].to_vec();
            v.sort_by(|a, b| b.partial_cmp(a).unwrap());
            v[0] + v[1]
        };
        let keep = if score(0) >= score(1) { 0 } else { 1 };
        for (e, v) in sel.iter_mut().enumerate() {
            if e / 4 != keep {
                *v = f64::NEG_INFINITY;
            }
        }
        let mut order: Vec<usize> = (0..ROUTE_E).collect();
        order.sort_by(|&a, &b| sel[b].partial_cmp(&sel[a]).unwrap());
        let top = &order[..ROUTE_K];
        let sum: f64 = top.iter().map(|&e| s[e]).sum();
        for &e in top {
            ids.push(e as i32);
            weights.push(s[e] / sum * 2.5);
        }
    }
    (ids, weights)
}

fn route_case(dir: &Path, dtype: DType) {
    let dims = [ROUTE_T, ROUTE_E];
    // Well separated logits: a permutation of a spaced ladder per row, so no near-ties.
    let raw: Vec<f32> = (0..ROUTE_T * ROUTE_E)
        .map(|i| ((i * 5 + i / ROUTE_E * 3) % ROUTE_E) as f32 * 0.5 - 2.0)
        .collect();
    let (logits, lw) = stored(&dims, &raw, dtype);
    let bias_v: Vec<f32> = (0..ROUTE_E).map(|e| (e % 3) as f32 * 0.01).collect();
    let (bias, bw) = stored(&[ROUTE_E], &bias_v, DType::F32);
    let (ids, w) = route_ref(&lw, &bw);
    let path = dir.join(format!("moe_route/{}/route.safetensors", folder(dtype)));
    let out_dims = [ROUTE_T, ROUTE_K];
    write_case(
        &path,
        &[
            ("op", "moe_route"),
            ("params", ROUTE_PARAMS),
            ("source", "test f64"),
        ],
        &[
            ("in.logits", &logits),
            ("in.bias", &bias),
            ("out.topk_ids", &i32_tensor(&out_dims, &ids)),
            ("out.topk_weights", &f32_tensor(&out_dims, &w)),
        ],
    );
}

// ---- moe_experts: T=3, H=8, I=4, E=3, k=2 (one id -1) ----

pub const EXP_T: usize = 3;
pub const EXP_H: usize = 8;
const EXP_I: usize = 4;
const EXP_E: usize = 3;
const EXP_K: usize = 2;
pub const EXP_IDS: [i32; 6] = [0, 2, 1, -1, 2, 1];

/// Reference SwiGLU experts in f64.
pub fn experts_ref(x: &[f64], w13: &[f64], w2: &[f64], ids: &[i32], w: &[f64]) -> Vec<f64> {
    let (h, i_) = (EXP_H, EXP_I);
    let mut y = vec![0.0; EXP_T * h];
    for t in 0..EXP_T {
        for j in 0..EXP_K {
            let e = ids[t * EXP_K + j];
            if e < 0 {
                continue;
            }
            let e = e as usize;
            let dot = |row: usize| -> f64 {
                (0..h)
                    .map(|c| w13[(e * 2 * i_ + row) * h + c] * x[t * h + c])
                    .sum()
            };
            let act: Vec<f64> = (0..i_)
                .map(|r| {
                    let g = dot(r);
                    g / (1.0 + (-g).exp()) * dot(i_ + r)
                })
                .collect();
            for c in 0..h {
                let down: f64 = (0..i_).map(|r| w2[(e * h + c) * i_ + r] * act[r]).sum();
                y[t * h + c] += w[t * EXP_K + j] * down;
            }
        }
    }
    y
}

fn experts_case(dir: &Path, dtype: DType) {
    let (h, i_, e) = (EXP_H, EXP_I, EXP_E);
    let (x, xw) = stored(&[EXP_T, h], &values(1, EXP_T * h), dtype);
    let scaled = |v: Vec<f32>| v.iter().map(|a| a * 1.5).collect::<Vec<f32>>();
    let (w13, w13w) = stored(&[e, 2 * i_, h], &scaled(values(2, e * 2 * i_ * h)), dtype);
    let (w2, w2w) = stored(&[e, h, i_], &scaled(values(3, e * h * i_)), dtype);
    let tw = [0.7f32, 0.3, 1.0, 0.5, 0.6, 0.4];
    let (weights, ww) = stored(&[EXP_T, EXP_K], &tw, DType::F32);
    let y = experts_ref(&xw, &w13w, &w2w, &EXP_IDS, &ww);
    let path = dir.join(format!("moe_experts/{}/experts.safetensors", folder(dtype)));
    write_case(
        &path,
        &[("op", "moe_experts"), ("params", "{}")],
        &[
            ("in.x", &x),
            ("in.w13", &w13),
            ("in.w2", &w2),
            ("in.topk_ids", &i32_tensor(&[EXP_T, EXP_K], &EXP_IDS)),
            ("in.topk_weights", &weights),
            ("out.y", &f32_tensor(&[EXP_T, h], &y)),
        ],
    );
}

// ---- mla_decode: B=2, Sq=2, Hq=2, Hkv=1, Dqk=12, Dv=8, block 4, causal ----

pub const MLA_B: usize = 2;
pub const MLA_SQ: usize = 2;
pub const MLA_HQ: usize = 2;
const MLA_D: usize = 12;
pub const MLA_DV: usize = 8;
const MLA_BLOCK: usize = 4;
const MLA_BLOCKS: usize = 5;
const MLA_SCALE: f64 = 0.35;
const MLA_LENS: [i32; 2] = [5, 7];
/// Rows use blocks [3, 0] and [4, 1]; the third column is unused (out of range on purpose).
const MLA_TABLE: [i32; 6] = [3, 0, 2147480000, 4, 1, -7];

/// Reference absorbed MLA decode in f64 (causal, bottom-right aligned).
pub fn mla_ref(q: &[f64], kv: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (d, dv) = (MLA_D, MLA_DV);
    let mut o = vec![0.0; MLA_B * MLA_SQ * MLA_HQ * dv];
    let mut lse = vec![f64::NEG_INFINITY; MLA_B * MLA_HQ * MLA_SQ];
    for b in 0..MLA_B {
        let len = MLA_LENS[b] as usize;
        for i in 0..MLA_SQ {
            let attended = len + i + 1 - MLA_SQ;
            for h in 0..MLA_HQ {
                let qrow = &q[((b * MLA_SQ + i) * MLA_HQ + h) * d..][..d];
                let krow = |p: usize| {
                    let blk = MLA_TABLE[b * 3 + p / MLA_BLOCK] as usize;
                    &kv[(blk * MLA_BLOCK + p % MLA_BLOCK) * d..][..d]
                };
                let logits: Vec<f64> = (0..attended)
                    .map(|p| MLA_SCALE * qrow.iter().zip(krow(p)).map(|(a, b)| a * b).sum::<f64>())
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                lse[(b * MLA_HQ + h) * MLA_SQ + i] = m + sum.ln();
                let out = &mut o[((b * MLA_SQ + i) * MLA_HQ + h) * dv..][..dv];
                for (p, l) in logits.iter().enumerate() {
                    let p_w = (l - m).exp() / sum;
                    for (c, slot) in out.iter_mut().enumerate() {
                        *slot += p_w * krow(p)[c];
                    }
                }
            }
        }
    }
    (o, lse)
}

fn mla_case(dir: &Path, dtype: DType) {
    let q_dims = [MLA_B, MLA_SQ, MLA_HQ, MLA_D];
    let (q, qw) = stored(&q_dims, &values(4, q_dims.iter().product()), dtype);
    let kv_dims = [MLA_BLOCKS, MLA_BLOCK, 1, MLA_D];
    let mut kv_vals = values(5, kv_dims.iter().product());
    // Block 2 is unused, as are the slots past each sequence's length: fill with NaN.
    let used = |blk: usize, slot: usize| match blk {
        3 | 4 => true,
        0 => slot < 1,
        1 => slot < 3,
        _ => false,
    };
    for (n, v) in kv_vals.iter_mut().enumerate() {
        let (blk, slot) = (n / (MLA_BLOCK * MLA_D), n / MLA_D % MLA_BLOCK);
        if !used(blk, slot) {
            *v = f32::NAN;
        }
    }
    let (kv, kvw) = stored(&kv_dims, &kv_vals, dtype);
    let (o, lse) = mla_ref(&qw, &kvw);
    let params = format!(r#"{{"softmax_scale":{MLA_SCALE},"causal":true,"head_dim_v":{MLA_DV}}}"#);
    let path = dir.join(format!("mla_decode/{}/mla.safetensors", folder(dtype)));
    write_case(
        &path,
        &[("op", "mla_decode"), ("params", &params)],
        &[
            ("in.q", &q),
            ("in.kv_cache", &kv),
            ("in.block_table", &i32_tensor(&[MLA_B, 3], &MLA_TABLE)),
            ("in.cache_seqlens", &i32_tensor(&[MLA_B], &MLA_LENS)),
            ("out.o", &f32_tensor(&[MLA_B, MLA_SQ, MLA_HQ, MLA_DV], &o)),
            ("out.lse", &f32_tensor(&[MLA_B, MLA_HQ, MLA_SQ], &lse)),
        ],
    );
}

/// Writes the fixture set: each op in F32 and BF16 (6 cases).
pub fn fixture_set(dir: &Path) {
    for dtype in [DType::F32, DType::BF16] {
        route_case(dir, dtype);
        experts_case(dir, dtype);
        mla_case(dir, dtype);
    }
}

/// Number of cases [`fixture_set`] writes.
pub const FIXTURE_CASES: usize = 6;
