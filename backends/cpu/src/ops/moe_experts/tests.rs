//! The CPU experts against a plain f64 reference.

use crate::test_util::{download_f32, upload_as, Lcg};
use crate::CpuBackend;
use moemla_core::{ops, Backend, DType, Error, ExpertsParams, HostTensor};

/// `y[t] = sum_j w[t,j] * W2[e] (silu(W1[e] x[t]) * W3[e] x[t])` in f64, written plainly.
fn reference(
    x: &[f32],
    w13: &[f32],
    w2: &[f32],
    ids: &[i32],
    weights: &[f32],
    (h, i, k): (usize, usize, usize),
) -> Vec<f64> {
    let t = x.len() / h;
    let mut y = vec![0.0f64; t * h];
    for tok in 0..t {
        let xt = &x[tok * h..(tok + 1) * h];
        for j in 0..k {
            let id = ids[tok * k + j];
            if id < 0 {
                continue;
            }
            let e = id as usize;
            let dot = |row: usize| -> f64 {
                let w = &w13[(e * 2 * i + row) * h..][..h];
                w.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let act: Vec<f64> = (0..i)
                .map(|r| {
                    let g = dot(r);
                    g / (1.0 + (-g).exp()) * dot(i + r)
                })
                .collect();
            for c in 0..h {
                let w = &w2[(e * h + c) * i..][..i];
                let d: f64 = w.iter().zip(&act).map(|(&a, &b)| a as f64 * b).sum();
                y[tok * h + c] += weights[tok * k + j] as f64 * d;
            }
        }
    }
    y
}

/// `topk_ids` and `topk_weights` [t, k] on `cpu`.
fn routing(
    cpu: &CpuBackend,
    (t, k): (usize, usize),
    ids: &[i32],
    weights: &[f32],
) -> (moemla_core::DeviceTensor, moemla_core::DeviceTensor) {
    let up = |h: HostTensor| cpu.upload(&h).unwrap();
    (
        up(HostTensor::from_slice([t, k], ids).unwrap()),
        up(HostTensor::from_slice([t, k], weights).unwrap()),
    )
}

fn check(dtype: DType, tol: f64) {
    let cpu = CpuBackend::new();
    let (t, h, i, e, k) = (9, 256, 96, 16, 6);
    let mut rng = Lcg::new(7);
    let (x, xs) = upload_as(&cpu, &[t, h], &rng.vec(t * h, -1.0, 1.0), dtype);
    let (w13, w13s) = upload_as(
        &cpu,
        &[e, 2 * i, h],
        &rng.vec(e * 2 * i * h, -0.1, 0.1),
        dtype,
    );
    let (w2, w2s) = upload_as(&cpu, &[e, h, i], &rng.vec(e * h * i, -0.1, 0.1), dtype);
    // Token 3 picks nobody in slot 2; experts 14 and 15 are never picked.
    let ids: Vec<i32> = (0..t * k)
        .map(|n| {
            if n == 3 * k + 2 {
                -1
            } else {
                ((n * 5 + n / k) % 14) as i32
            }
        })
        .collect();
    let weights = rng.vec(t * k, 0.0, 1.0);
    let (ids_t, w_t) = routing(&cpu, (t, k), &ids, &weights);
    let y = ops::moe_experts(&cpu, &x, &w13, &w2, &ids_t, &w_t, &ExpertsParams::default()).unwrap();
    assert_eq!(y.dtype(), dtype);
    let got = download_f32(&cpu, &y);
    let want = reference(&xs, &w13s, &w2s, &ids, &weights, (h, i, k));
    let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(scale > 1e-3, "degenerate test data");
    for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (scale + w.abs()),
            "y[{n}]: {g} vs {w}"
        );
    }
}

#[test]
fn experts_match_f64_reference_in_f32() {
    check(DType::F32, 1e-5);
}

#[test]
fn experts_match_f64_reference_in_half_types() {
    // Only the output rounding separates the results (inputs are compared as stored).
    check(DType::F16, 1e-3);
    check(DType::BF16, 8e-3);
}

#[test]
fn out_of_range_id_is_reported_at_its_position() {
    let cpu = CpuBackend::new();
    let up = |dims: &[usize], n: usize| upload_as(&cpu, dims, &vec![0.5; n], DType::F32).0;
    let (x, w13, w2) = (up(&[2, 4], 8), up(&[3, 4, 4], 48), up(&[3, 4, 2], 24));
    let ids = cpu
        .upload(&HostTensor::from_slice([2, 2], &[0, 1, 2, 3]).unwrap())
        .unwrap();
    let w = up(&[2, 2], 4);
    let err =
        ops::moe_experts(&cpu, &x, &w13, &w2, &ids, &w, &ExpertsParams::default()).unwrap_err();
    match err {
        Error::IndexOutOfRange {
            arg, index, value, ..
        } => {
            assert_eq!((arg, index, value), ("topk_ids", vec![1, 1], 3));
        }
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
}

#[test]
fn zero_weight_and_empty_slots_skip_a_non_finite_expert() {
    // Expert 1's weights hold NaN (gate) and inf (down): any token it computes is NaN.
    // It is routed only with weight +0.0 or -0.0, or with id -1 (whose weight is NaN):
    // those slots contribute nothing, so y is finite and equals y without them.
    let cpu = CpuBackend::new();
    let (t, h, i, e, k) = (4, 8, 4, 3, 3);
    let mut rng = Lcg::new(17);
    let x = rng.vec(t * h, -1.0, 1.0);
    let mut w13 = rng.vec(e * 2 * i * h, -0.3, 0.3);
    let mut w2 = rng.vec(e * h * i, -0.3, 0.3);
    w13[2 * i * h + 3] = f32::NAN;
    w2[h * i + 5] = f32::INFINITY;
    let ids = [0, 1, 2, 1, 2, -1, -1, 0, 1, 2, 1, 0];
    let weights = [
        0.5,
        0.0,
        0.25,
        -0.0,
        0.75,
        f32::NAN,
        f32::NAN,
        1.0,
        0.0,
        0.5,
        -0.0,
        0.125,
    ];
    let (xd, _) = upload_as(&cpu, &[t, h], &x, DType::F32);
    let (w13d, _) = upload_as(&cpu, &[e, 2 * i, h], &w13, DType::F32);
    let (w2d, _) = upload_as(&cpu, &[e, h, i], &w2, DType::F32);
    let ids_d = cpu
        .upload(&HostTensor::from_slice([t, k], &ids).unwrap())
        .unwrap();
    let w_d = cpu
        .upload(&HostTensor::from_slice([t, k], &weights).unwrap())
        .unwrap();
    let y = ops::moe_experts(
        &cpu,
        &xd,
        &w13d,
        &w2d,
        &ids_d,
        &w_d,
        &ExpertsParams::default(),
    )
    .unwrap();
    let got = download_f32(&cpu, &y);
    // The reference without those slots: their ids set to -1.
    let kept: Vec<i32> = ids
        .iter()
        .zip(&weights)
        .map(|(&id, &w)| if w == 0.0 || id < 0 { -1 } else { id })
        .collect();
    assert!(
        !kept.contains(&1),
        "expert 1 must only sit in skipped slots"
    );
    let want = reference(&x, &w13, &w2, &kept, &weights, (h, i, k));
    for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(g.is_finite(), "y[{n}] = {g}");
        assert!(
            (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "y[{n}]: {g} vs {w}"
        );
    }
}

/// The shared experts in f64: each of the S dense experts adds `W2_s (act(W1_s x[t],
/// W3_s x[t]))` with weight 1 to every token, `act` SwiGLU (clamped by `limit` if any).
fn shared_reference(
    x: &[f32],
    sw13: &[f32],
    sw2: &[f32],
    (h, is, s): (usize, usize, usize),
    limit: Option<f64>,
) -> Vec<f64> {
    let t = x.len() / h;
    let mut y = vec![0.0f64; t * h];
    for tok in 0..t {
        let xt = &x[tok * h..(tok + 1) * h];
        for e in 0..s {
            let dot = |row: usize| -> f64 {
                let w = &sw13[(e * 2 * is + row) * h..][..h];
                w.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let act: Vec<f64> = (0..is)
                .map(|r| {
                    let (mut g, mut u) = (dot(r), dot(is + r));
                    if let Some(c) = limit {
                        g = g.min(c);
                        u = u.clamp(-c, c);
                    }
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            for c in 0..h {
                let w = &sw2[(e * h + c) * is..][..is];
                let d: f64 = w.iter().zip(&act).map(|(&a, &b)| a as f64 * b).sum();
                y[tok * h + c] += d;
            }
        }
    }
    y
}

/// Routed experts (token 1's slots all -1) plus `s` shared experts of intermediate size 40
/// (routed: 24) against the f64 references, through `moe_experts_with` and
/// `moe_experts_into` (which must agree exactly).
fn check_shared(dtype: DType, t: usize, s: usize, tol: f64) {
    let cpu = CpuBackend::new();
    let (h, i, e, k, is) = (64, 24, 5, 2, 40);
    let mut rng = Lcg::new(23 + t as u64);
    let (x, xs) = upload_as(&cpu, &[t, h], &rng.vec(t * h, -1.0, 1.0), dtype);
    let (w13, w13s) = upload_as(
        &cpu,
        &[e, 2 * i, h],
        &rng.vec(e * 2 * i * h, -0.2, 0.2),
        dtype,
    );
    let (w2, w2s) = upload_as(&cpu, &[e, h, i], &rng.vec(e * h * i, -0.2, 0.2), dtype);
    let sw13v = rng.vec(s * 2 * is * h, -0.2, 0.2);
    let (sw13, sw13s) = upload_as(&cpu, &[s, 2 * is, h], &sw13v, dtype);
    let (sw2, sw2s) = upload_as(&cpu, &[s, h, is], &rng.vec(s * h * is, -0.2, 0.2), dtype);
    let ids: Vec<i32> = (0..t * k)
        .map(|n| {
            if n / k == 1 {
                -1
            } else {
                ((n * 3 + 1) % e) as i32
            }
        })
        .collect();
    let weights = rng.vec(t * k, 0.1, 1.0);
    let (ids_t, w_t) = routing(&cpu, (t, k), &ids, &weights);
    let inputs = ops::ExpertsInputs::new(&x, &w13, &w2, &ids_t, &w_t).with_shared(&sw13, &sw2);
    let params = ExpertsParams::default();
    let y = ops::moe_experts_with(&cpu, inputs, &params).unwrap();
    let got = download_f32(&cpu, &y);
    let routed = reference(&xs, &w13s, &w2s, &ids, &weights, (h, i, k));
    let shared = shared_reference(&xs, &sw13s, &sw2s, (h, is, s), None);
    let scale = shared.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(scale > 1e-2, "degenerate test data");
    for (n, (&g, (&r, &sh))) in got.iter().zip(routed.iter().zip(&shared)).enumerate() {
        let w = r + sh;
        let at = format!("{dtype} T {t} S {s}: y[{n}] = {g}, want {w} (routed {r})");
        assert!((g as f64 - w).abs() <= tol * (scale + w.abs()), "{at}");
        // Token 1 has no routed slot: its y is the shared experts' alone.
        if n / h == 1 {
            assert_eq!(r, 0.0, "{at}");
        }
    }
    let out = cpu.alloc_zeroed(&[t, h].into(), dtype).unwrap();
    ops::moe_experts_into(&cpu, inputs, &params, &out).unwrap();
    assert_eq!(download_f32(&cpu, &out), got, "{dtype} T {t} S {s}: _into");
}

#[test]
fn shared_experts_add_to_the_routed_sum_with_weight_one() {
    // T 3: every expert takes the matrix-vector path; T 40: tiles and GEMMs.
    for (t, s) in [(3, 1), (3, 2), (40, 2)] {
        check_shared(DType::F32, t, s, 1e-5);
        check_shared(DType::F16, t, s, 1e-3);
        check_shared(DType::BF16, t, s, 8e-3);
    }
}

#[test]
fn the_swiglu_clamp_applies_to_shared_experts() {
    // Every routed slot is -1: y is the shared expert's output alone, whose gate and up
    // values (up to ~6) are clamped at 1.5.
    let cpu = CpuBackend::new();
    let (t, h, is) = (4, 32, 16);
    let mut rng = Lcg::new(5);
    let x = rng.vec(t * h, -1.0, 1.0);
    let sw13 = rng.vec(2 * is * h, -0.6, 0.6);
    let sw2 = rng.vec(h * is, -0.3, 0.3);
    let up = |dims: &[usize], v: &[f32]| upload_as(&cpu, dims, v, DType::F32).0;
    let (xd, w13, w2) = (
        up(&[t, h], &x),
        up(&[2, 2, h], &[0.1; 4 * 32]),
        up(&[2, h, 1], &[0.1; 64]),
    );
    let (sw13d, sw2d) = (up(&[1, 2 * is, h], &sw13), up(&[1, h, is], &sw2));
    let ids = cpu
        .upload(&HostTensor::from_slice([t, 1], &[-1; 4]).unwrap())
        .unwrap();
    let w = up(&[t, 1], &[1.0; 4]);
    let params = ExpertsParams {
        swiglu_limit: Some(1.5),
        ..ExpertsParams::default()
    };
    let inputs = ops::ExpertsInputs::new(&xd, &w13, &w2, &ids, &w).with_shared(&sw13d, &sw2d);
    let got = download_f32(&cpu, &ops::moe_experts_with(&cpu, inputs, &params).unwrap());
    let clamped = shared_reference(&x, &sw13, &sw2, (h, is, 1), Some(1.5));
    let plain = shared_reference(&x, &sw13, &sw2, (h, is, 1), None);
    let diff = clamped
        .iter()
        .zip(&plain)
        .fold(0.0f64, |a, (c, p)| a.max((c - p).abs()));
    assert!(diff > 0.1, "the clamp must bite ({diff})");
    for (n, (&g, &w)) in got.iter().zip(&clamped).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "y[{n}]: {g} vs {w}"
        );
    }
}

#[test]
fn activations_are_rounded_before_an_fp8_down_projection_only_on_its_bf16_dot() {
    use super::fp8::{Fp8Weights, Weights};
    use super::rounds_before_fp8_down;
    use crate::storage::FloatSlice;
    use half::bf16;
    let (codes, scales) = ([0x38u8; 4], [1.0f32]);
    let fp8 = Weights::Fp8(Fp8Weights {
        codes: &codes,
        scales: &scales,
        rows: 2,
        cols: 2,
    });
    let w16 = [bf16::ONE; 4];
    let dense = Weights::Float(FloatSlice::BF16(&w16));
    let (x16, x32) = (FloatSlice::BF16(&w16[..2]), FloatSlice::F32(&[1.0, 2.0]));
    // Only a BF16 run with FP8 w2, and only where the FP8 bf16-dot path exists (a CPU with
    // AVX512-BF16 but no VBMI, such as Cooper Lake, keeps f32 activations).
    assert!(rounds_before_fp8_down(x16, fp8, true));
    assert!(!rounds_before_fp8_down(x16, fp8, false));
    assert!(!rounds_before_fp8_down(x32, fp8, true));
    assert!(!rounds_before_fp8_down(x16, dense, true));
}

#[test]
fn rounding_to_bf16_is_nearest_even_across_parallel_chunks() {
    // Past two chunks; 1 + 2^-8 is a tie that goes to even (1.0), 1 + 3 * 2^-8 one that
    // goes up, 1 + 2^-9 rounds down; the rest checked on the bits (round half to even at
    // bit 16).
    let len = 2 * super::ROUND_CHUNK + 37;
    let mut v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.731).sin() * 3.7).collect();
    let at = super::ROUND_CHUNK + 5;
    v[at] = 1.0 + 1.0 / 256.0;
    v[at + 1] = 1.0 + 3.0 / 256.0;
    v[at + 2] = 1.0 + 1.0 / 512.0;
    let src = v.clone();
    super::round_to_bf16(&mut v);
    assert_eq!(v[at..at + 3], [1.0, 1.0 + 4.0 / 256.0, 1.0]);
    for (i, (&got, &x)) in v.iter().zip(&src).enumerate() {
        let b = x.to_bits();
        let want = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
        assert_eq!(got.to_bits(), want, "[{i}] {x}");
    }
}

/// Routed and shared experts with every weight laid out by `pack_expert_weights` (F32:
/// in panels where the CPU has AVX-512F) against the f64 references, at widths that are
/// not multiples of 16 and with 1 to 150 tokens per expert (token blocks of every size).
#[test]
fn packed_weights_match_the_f64_reference_at_odd_shapes() {
    use moemla_core::ExpertWeight::{Down, GateUp};
    let cpu = CpuBackend::new();
    // (T, H, I, E, k, S, Is)
    for (t, h, i, e, k, s, is) in [
        (40, 37, 21, 3, 2, 1, 19),
        (5, 64, 48, 4, 2, 0, 0),
        (300, 40, 24, 2, 1, 2, 33),
        (1, 16, 16, 8, 6, 1, 16),
    ] {
        let mut rng = Lcg::new(41 + t as u64);
        let f32s = |n, rng: &mut Lcg, a: f32| rng.vec(n, -a, a);
        let (x, xs) = upload_as(&cpu, &[t, h], &f32s(t * h, &mut rng, 1.0), DType::F32);
        let w13v = f32s(e * 2 * i * h, &mut rng, 0.3);
        let (w13, _) = upload_as(&cpu, &[e, 2 * i, h], &w13v, DType::F32);
        let w2v = f32s(e * h * i, &mut rng, 0.3);
        let (w2, _) = upload_as(&cpu, &[e, h, i], &w2v, DType::F32);
        let sw13v = f32s(s * 2 * is * h, &mut rng, 0.3);
        let sw2v = f32s(s * h * is, &mut rng, 0.3);
        let ids: Vec<i32> = (0..t * k).map(|n| ((n * 7 + n / k) % e) as i32).collect();
        let weights = rng.vec(t * k, 0.1, 1.0);
        let (ids_t, w_t) = routing(&cpu, (t, k), &ids, &weights);
        let pack = |w: &moemla_core::DeviceTensor, kind| {
            let p = ops::pack_expert_weights(&cpu, w, kind).unwrap();
            assert_eq!(
                p.same_buffer(w),
                !crate::panels::available(),
                "F32 weights go into panels exactly where the CPU has AVX-512F"
            );
            let plain = download_f32(&cpu, w);
            assert_eq!(download_f32(&cpu, &p), plain, "download");
            let mut part = HostTensor::from_slice([3], &[0.0f32; 3]).unwrap();
            cpu.download_into(&p, 5, &mut part).unwrap();
            assert_eq!(part.to_f32_vec().unwrap(), plain[5..8], "download_into");
            p
        };
        let (w13p, w2p) = (pack(&w13, GateUp), pack(&w2, Down));
        let mut inputs = ops::ExpertsInputs::new(&x, &w13p, &w2p, &ids_t, &w_t);
        let shared = (s > 0).then(|| {
            let (a, _) = upload_as(&cpu, &[s, 2 * is, h], &sw13v, DType::F32);
            let (b, _) = upload_as(&cpu, &[s, h, is], &sw2v, DType::F32);
            (pack(&a, GateUp), pack(&b, Down))
        });
        if let Some((a, b)) = &shared {
            inputs = inputs.with_shared(a, b);
        }
        let y = ops::moe_experts_with(&cpu, inputs, &ExpertsParams::default()).unwrap();
        let got = download_f32(&cpu, &y);
        let routed = reference(&xs, &w13v, &w2v, &ids, &weights, (h, i, k));
        let sh = shared_reference(&xs, &sw13v, &sw2v, (h, is, s), None);
        let want: Vec<f64> = routed.iter().zip(&sh).map(|(r, s)| r + s).collect();
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(scale > 1e-2, "degenerate test data");
        for (n, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let at = format!("T {t} H {h} I {i} E {e} S {s}: y[{n}] = {g}, want {w}");
            assert!((g as f64 - w).abs() <= 1e-5 * (scale + w.abs()), "{at}");
        }
    }
}

/// What a tensor in panels is refused for, each with a typed error naming the argument.
#[test]
fn packed_weights_are_refused_where_they_do_not_belong() {
    use moemla_core::ExpertWeight::{Down, GateUp};
    if !crate::panels::available() {
        return; // F32 weights stay as stored: nothing to refuse.
    }
    let cpu = CpuBackend::new();
    let (t, h, i, e, k) = (2, 32, 16, 2, 1);
    let mut rng = Lcg::new(3);
    let (x, _) = upload_as(&cpu, &[t, h], &rng.vec(t * h, -1.0, 1.0), DType::F32);
    let (w13, _) = upload_as(
        &cpu,
        &[e, 2 * i, h],
        &rng.vec(e * 2 * i * h, -1.0, 1.0),
        DType::F32,
    );
    let (w2, _) = upload_as(&cpu, &[e, h, i], &rng.vec(e * h * i, -1.0, 1.0), DType::F32);
    let ids_t = cpu
        .upload(&HostTensor::from_slice([t, k], &[0i32, 1]).unwrap())
        .unwrap();
    let w_t = cpu
        .upload(&HostTensor::from_slice([t, k], &[1.0f32, 1.0]).unwrap())
        .unwrap();
    let before = cpu.traffic().unwrap();
    let w13p = ops::pack_expert_weights(&cpu, &w13, GateUp).unwrap();
    let after = cpu.traffic().unwrap();
    assert_eq!(
        after.allocations,
        before.allocations + 1,
        "packing allocates one tensor"
    );
    let p = ExpertsParams::default();
    let arg_of = |r: moemla_core::Result<_>| match r {
        Err(Error::Input { arg, .. }) => arg,
        other => panic!("expected Error::Input, got {other:?}"),
    };
    // w13 in panels, w2 as stored.
    let r = ops::moe_experts(&cpu, &x, &w13p, &w2, &ids_t, &w_t, &p);
    assert_eq!(arg_of(r), "w2");
    // w13 packed as the down projection (its dims allow it): refused as w13.
    let wrong = ops::pack_expert_weights(&cpu, &w13, Down).unwrap();
    let w2p = ops::pack_expert_weights(&cpu, &w2, Down).unwrap();
    let r = ops::moe_experts(&cpu, &x, &wrong, &w2p, &ids_t, &w_t, &p);
    assert_eq!(arg_of(r), "w13");
    // Packing again as the same kind keeps the tensor; as the other kind is refused.
    let again = ops::pack_expert_weights(&cpu, &w13p, GateUp).unwrap();
    assert!(again.same_buffer(&w13p));
    assert_eq!(arg_of(ops::pack_expert_weights(&cpu, &w13p, Down)), "w2");
    // Copies and other ops do not read the panels.
    let dst = cpu.alloc_zeroed(w13.shape(), DType::F32).unwrap();
    let r = cpu.copy_into(&w13p, 0, &dst, 0, 4);
    assert!(
        matches!(&r, Err(Error::Device { message, .. }) if message.contains("pack_expert_weights")),
        "{r:?}"
    );
    // The contract's checks come first: a rank-2 tensor, an odd 2I.
    let r = ops::pack_expert_weights(&cpu, &x, GateUp);
    assert!(matches!(r, Err(Error::Rank { arg: "w13", .. })), "{r:?}");
    let (odd, _) = upload_as(&cpu, &[1, 3, 4], &[0.0; 12], DType::F32);
    let r = ops::pack_expert_weights(&cpu, &odd, GateUp);
    assert!(
        matches!(
            r,
            Err(Error::Dim {
                arg: "w13",
                dim: 1,
                ..
            })
        ),
        "{r:?}"
    );
}
