//! `moe_experts` with fused shared experts on the OpenCL device against an f64 reference:
//! S 1 and 2, Is != I and not a multiple of the GEMM tile, T across tile edges, a token
//! whose routed slots are all -1 (its y is the shared experts' alone), the SwiGLU clamp on
//! shared experts, and the `_into` form (the same bytes).

mod common;

use common::{assert_close, backend, float_tensor, int_tensor, read_f32, tolerance, uniform};
use moemla_core::ops::{self, ExpertsInputs};
use moemla_core::{Backend, DType, ExpertsParams};

/// `y[t] = sum_j w[t,j] FFN_{ids[t,j]}(x[t]) + sum_s FFN_s(x[t])` in f64, with the SwiGLU
/// clamp `limit` (if any) on every expert. Weights as stored ([E, 2I, H], [E, H, I]).
#[derive(Clone, Copy)]
struct Reference<'a> {
    x: &'a [f64],
    hidden: usize,
    limit: Option<f64>,
}

impl Reference<'_> {
    /// Expert `e` of (`w13`, `w2`) with intermediate size `inter`, on token `t`, added to
    /// `y` with weight `w`.
    fn add(
        &self,
        y: &mut [f64],
        (w13, w2, inter): (&[f64], &[f64], usize),
        e: usize,
        t: usize,
        w: f64,
    ) {
        let h = self.hidden;
        let xt = &self.x[t * h..(t + 1) * h];
        let dot = |row: usize| -> f64 {
            let wr = &w13[(e * 2 * inter + row) * h..][..h];
            wr.iter().zip(xt).map(|(a, b)| a * b).sum()
        };
        let act: Vec<f64> = (0..inter)
            .map(|r| {
                let (mut g, mut u) = (dot(r), dot(inter + r));
                if let Some(c) = self.limit {
                    g = g.min(c);
                    u = u.clamp(-c, c);
                }
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        for c in 0..h {
            let wr = &w2[(e * h + c) * inter..][..inter];
            y[t * h + c] += w * wr.iter().zip(&act).map(|(a, b)| a * b).sum::<f64>();
        }
    }
}

/// One call with T tokens, S shared experts of Is; token 1's routed slots are all -1.
fn check(dtype: DType, t: usize, s: usize, is: usize, limit: Option<f64>) {
    let Some(be) = backend() else { return };
    let (h, i, e, k) = (40, 24, 5, 2);
    let seed = (t * 131 + s * 17 + is) as u64;
    let x_scale = if limit.is_some() { 4.0 } else { 1.0 };
    let (x, xs) = float_tensor(
        &*be,
        &[t, h],
        &uniform(seed, t * h, -x_scale, x_scale),
        dtype,
    );
    let w = |n: usize, salt: u64| uniform(seed + salt, n, -0.3, 0.3);
    let (w13, w13s) = float_tensor(&*be, &[e, 2 * i, h], &w(e * 2 * i * h, 1), dtype);
    let (w2, w2s) = float_tensor(&*be, &[e, h, i], &w(e * h * i, 2), dtype);
    let (sw13, sw13s) = float_tensor(&*be, &[s, 2 * is, h], &w(s * 2 * is * h, 3), dtype);
    let (sw2, sw2s) = float_tensor(&*be, &[s, h, is], &w(s * h * is, 4), dtype);
    let ids: Vec<i32> = (0..t * k)
        .map(|n| {
            if n / k == 1 {
                -1
            } else {
                ((n * 3 + 2) % e) as i32
            }
        })
        .collect();
    let weights = uniform(seed + 5, t * k, 0.1, 1.0);
    let ids_d = int_tensor(&*be, &[t, k], &ids);
    let (w_d, _) = float_tensor(&*be, &[t, k], &weights, DType::F32);
    let params = ExpertsParams {
        swiglu_limit: limit,
        ..ExpertsParams::default()
    };
    let inputs = ExpertsInputs::new(&x, &w13, &w2, &ids_d, &w_d).with_shared(&sw13, &sw2);
    let y = ops::moe_experts_with(&*be, inputs, &params).unwrap();
    let got = read_f32(&*be, &y);

    let r = Reference {
        x: &xs,
        hidden: h,
        limit,
    };
    let (mut want, mut shared_only) = (vec![0.0; t * h], vec![0.0; t * h]);
    for tok in 0..t {
        for j in 0..k {
            if let Ok(ex) = usize::try_from(ids[tok * k + j]) {
                let wt = weights[tok * k + j] as f64;
                r.add(&mut want, (&w13s, &w2s, i), ex, tok, wt);
            }
        }
        for sh in 0..s {
            r.add(&mut want, (&sw13s, &sw2s, is), sh, tok, 1.0);
            r.add(&mut shared_only, (&sw13s, &sw2s, is), sh, tok, 1.0);
        }
    }
    // The shared part must matter (a backend that drops it fails), and so must the clamp
    // on it (a backend that clamps only routed experts fails).
    let biggest = shared_only.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(biggest > 0.1, "degenerate shared output");
    if limit.is_some() {
        let plain = Reference { limit: None, ..r };
        let mut unclamped = vec![0.0; t * h];
        for tok in 0..t {
            for sh in 0..s {
                plain.add(&mut unclamped, (&sw13s, &sw2s, is), sh, tok, 1.0);
            }
        }
        let bite =
            (unclamped.iter().zip(&shared_only)).fold(0.0f64, |a, (u, c)| a.max((u - c).abs()));
        assert!(bite > 0.1, "the clamp does not bite ({bite})");
    }
    let what = format!("{dtype} T {t} S {s} Is {is} limit {limit:?}");
    assert_close(&what, &got, &want, tolerance(dtype));
    assert_close(
        &format!("{what} token 1"),
        &got[h..2 * h],
        &shared_only[h..2 * h],
        tolerance(dtype),
    );

    let out = be.alloc_zeroed(&[t, h].into(), dtype).unwrap();
    ops::moe_experts_into(&*be, inputs, &params, &out).unwrap();
    assert_eq!(read_f32(&*be, &out), got, "{what}: _into");
}

#[test]
fn shared_experts_add_to_the_routed_sum_in_every_dtype() {
    for dtype in DType::FLOATS {
        check(dtype, 3, 1, 48, None);
        check(dtype, 17, 2, 20, None);
    }
}

#[test]
fn the_swiglu_clamp_applies_to_shared_experts() {
    check(DType::F32, 5, 2, 20, Some(1.5));
    check(DType::BF16, 18, 1, 36, Some(1.5));
}
