//! Helpers shared by this crate's integration tests: the shared backend, deterministic
//! data, and host round trips.

#![allow(dead_code)] // each test binary uses a subset

use moemla_core::{
    Backend, DType, DeviceTensor, Error, GroupSelect, HostTensor, RouteParams, ScoreFunc,
};
use moemla_opencl::OpenClBackend;
use std::sync::Arc;

/// The process-wide backend, or `None` (test skipped) when OpenCL is unavailable here and
/// env `MOEMLA_REQUIRE` does not list `opencl`.
pub fn backend() -> Option<Arc<OpenClBackend>> {
    match moemla_opencl::shared() {
        Ok(b) => Some(b),
        Err(e @ Error::Unavailable { .. }) => {
            let required = std::env::var("MOEMLA_REQUIRE")
                .is_ok_and(|v| v.split(',').any(|n| n.trim() == moemla_opencl::NAME));
            assert!(!required, "opencl is required by MOEMLA_REQUIRE: {e}");
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("opening the OpenCL backend failed: {e}"),
    }
}

/// Deterministic uniform values in [lo, hi) (xorshift; the seed picks the stream).
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `values` stored as `dtype` on the device, and the stored values widened to f64.
pub fn float_tensor(
    b: &dyn Backend,
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

/// An I32 tensor on the device.
pub fn int_tensor(b: &dyn Backend, dims: &[usize], values: &[i32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, values).unwrap())
        .unwrap()
}

/// A device tensor's elements widened to f32.
pub fn read_f32(b: &dyn Backend, t: &DeviceTensor) -> Vec<f32> {
    b.download(t).unwrap().to_f32_vec().unwrap()
}

/// A device I32 tensor's elements.
pub fn read_i32(b: &dyn Backend, t: &DeviceTensor) -> Vec<i32> {
    b.download(t).unwrap().to_i32_vec().unwrap()
}

/// The contract's default tolerance (atol = rtol) for a run dtype.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        DType::BF16 => 2e-2,
        _ => 1e-4,
    }
}

/// Asserts |got - want| <= tol + tol * |want| elementwise (NaN fails; equal infinities pass).
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let ok = g == w || (g - w).abs() <= tol + tol * w.abs();
        assert!(ok, "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}

/// DeepSeek gating in f64, written from the contract: per token, (id, weight) best first
/// (ties to the lower id; no NaN inputs).
pub fn route_reference(
    logits: &[f64],
    bias: Option<&[f64]>,
    e: usize,
    p: &RouteParams,
) -> Vec<Vec<(usize, f64)>> {
    logits
        .chunks(e)
        .map(|row| {
            let s: Vec<f64> = match p.score_func {
                ScoreFunc::Sigmoid => row.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
                ScoreFunc::Softmax => {
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = row.iter().map(|x| (x - m).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    ex.iter().map(|v| v / sum).collect()
                }
                ScoreFunc::Sqrtsoftplus => (row.iter())
                    .map(|&x| if x > 20.0 { x } else { x.exp().ln_1p() }.sqrt())
                    .collect(),
            };
            let mut sel: Vec<f64> = (0..e).map(|i| s[i] + bias.map_or(0.0, |b| b[i])).collect();
            if p.n_group > 1 {
                let gs = e / p.n_group;
                let score = |g: usize| {
                    let mut v: Vec<f64> = sel[g * gs..(g + 1) * gs].to_vec();
                    v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                    match p.group_select {
                        GroupSelect::Max => v[0],
                        GroupSelect::Top2Sum => v.iter().take(2).sum(),
                    }
                };
                let mut groups: Vec<usize> = (0..p.n_group).collect();
                groups.sort_by(|&a, &b| score(b).partial_cmp(&score(a)).unwrap());
                for (i, v) in sel.iter_mut().enumerate() {
                    if !groups[..p.topk_group].contains(&(i / gs)) {
                        *v = f64::NEG_INFINITY;
                    }
                }
            }
            let mut ids: Vec<usize> = (0..e).collect();
            ids.sort_by(|&a, &b| sel[b].partial_cmp(&sel[a]).unwrap());
            ids.truncate(p.top_k);
            let total: f64 = ids.iter().map(|&i| s[i]).sum();
            let norm = if p.renormalize { total } else { 1.0 };
            ids.iter()
                .map(|&i| (i, s[i] / norm * p.routed_scaling_factor))
                .collect()
        })
        .collect()
}

/// Runs `body` in a child process (this test binary, filtered to `test`), so that an abort
/// in the OpenCL runtime fails this one test instead of killing the whole binary.
pub fn in_child(test: &str, body: impl FnOnce()) {
    const CHILD: &str = "MOEMLA_OPENCL_TEST_CHILD";
    if std::env::var(CHILD).is_ok_and(|t| t == test) {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, test)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} in a child process: {}\n{text}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "{test}: the child ran no test\n{text}"
    );
}
