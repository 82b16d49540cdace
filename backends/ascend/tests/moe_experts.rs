//! moe_experts on the CANN emulator against a plain f64 reference of the contract.

mod common;

use moemla_core::{ops, Backend, DType, DeviceTensor, Error, ExpertsParams, HostTensor};

/// y[t] = sum_j w[t,j] * W2[e] @ (silu(W1[e] x[t]) * (W3[e] x[t])), in f64; a slot with id -1
/// or weight 0 is skipped (it contributes nothing, whatever its expert computes). With a
/// SwiGLU clamp c: silu(min(g, c)) * clamp(u, -c, c).
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    w13: &[f32],
    w2: &[f32],
    ids: &[i32],
    wts: &[f32],
    t: usize,
    h: usize,
    i: usize,
    k: usize,
    limit: Option<f64>,
) -> Vec<f64> {
    let mut y = vec![0.0; t * h];
    for tok in 0..t {
        let xr = &x[tok * h..(tok + 1) * h];
        for j in 0..k {
            let e = ids[tok * k + j];
            if e < 0 || wts[tok * k + j] == 0.0 {
                continue;
            }
            let e = e as usize;
            let dot = |row: &[f32]| -> f64 {
                row.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let act: Vec<f64> = (0..i)
                .map(|r| {
                    let mut g = dot(&w13[(e * 2 * i + r) * h..][..h]);
                    let mut u = dot(&w13[(e * 2 * i + i + r) * h..][..h]);
                    if let Some(c) = limit {
                        g = g.min(c);
                        u = u.clamp(-c, c);
                    }
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            for c in 0..h {
                let d: f64 = (0..i)
                    .map(|r| w2[(e * h + c) * i + r] as f64 * act[r])
                    .sum();
                y[tok * h + c] += wts[tok * k + j] as f64 * d;
            }
        }
    }
    y
}

fn check(dtype: DType) {
    let be = common::backend();
    let (t, h, i, e, k) = (33, 64, 32, 8, 3);
    let x = HostTensor::from_f32_as([t, h], &common::values(21, t * h, -1.0, 1.0), dtype).unwrap();
    let w13 = HostTensor::from_f32_as(
        [e, 2 * i, h],
        &common::values(22, e * 2 * i * h, -0.2, 0.2),
        dtype,
    )
    .unwrap();
    let w2 = HostTensor::from_f32_as([e, h, i], &common::values(23, e * h * i, -0.2, 0.2), dtype)
        .unwrap();
    // Every expert used, unevenly; some slots are -1 ("no expert"); expert 3 never used.
    let ids: Vec<i32> = (0..t * k)
        .map(|n| {
            if n % 7 == 5 {
                -1
            } else {
                [0, 1, 2, 4, 5, 6, 7][(n * 5 + n / 3) % 7]
            }
        })
        .collect();
    let wts = common::values(24, t * k, 0.0, 1.0);
    let y = ops::moe_experts(
        &be,
        &be.upload(&x).unwrap(),
        &be.upload(&w13).unwrap(),
        &be.upload(&w2).unwrap(),
        &be.upload(&HostTensor::from_slice([t, k], &ids).unwrap())
            .unwrap(),
        &be.upload(&HostTensor::from_slice([t, k], &wts).unwrap())
            .unwrap(),
        &ExpertsParams::default(),
    )
    .unwrap();
    assert_eq!(y.dtype(), dtype);
    let got = be.download(&y).unwrap().to_f32_vec().unwrap();
    let want = reference(
        &x.to_f32_vec().unwrap(),
        &w13.to_f32_vec().unwrap(),
        &w2.to_f32_vec().unwrap(),
        &ids,
        &wts,
        t,
        h,
        i,
        k,
        None,
    );
    let tol = match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        _ => 2e-2,
    };
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol + tol * w.abs(),
            "{dtype} y[{n}] = {g}, want {w}"
        );
    }
    assert!(want.iter().any(|w| w.abs() > 0.01), "degenerate reference");
}

/// Routed experts plus S shared experts (Is != I): y = routed + sum_s shared_s(x), the
/// shared part being the same reference with every token on experts 0..S, weight 1.
fn check_shared(dtype: DType, limit: Option<f64>) {
    let be = common::backend();
    let (t, h, i, e, k, sn, si) = (9, 48, 32, 4, 2, 2, 24);
    let host = |shape: &[usize], seed, lo, hi| {
        let n = shape.iter().product();
        HostTensor::from_f32_as(shape.to_vec(), &common::values(seed, n, lo, hi), dtype).unwrap()
    };
    let x = host(&[t, h], 31, -1.0, 1.0);
    let w13 = host(&[e, 2 * i, h], 32, -0.2, 0.2);
    let w2 = host(&[e, h, i], 33, -0.2, 0.2);
    let sw13 = host(&[sn, 2 * si, h], 34, -0.2, 0.2);
    let sw2 = host(&[sn, h, si], 35, -0.2, 0.2);
    // Token 0 has no routed expert at all: its y is the shared experts' alone.
    let ids: Vec<i32> = (0..t * k)
        .map(|n| if n < k { -1 } else { (n % e) as i32 })
        .collect();
    let wts = common::values(36, t * k, 0.1, 1.0);
    let dev = |h: &HostTensor| be.upload(h).unwrap();
    let (xd, w13d, w2d, sw13d, sw2d) = (dev(&x), dev(&w13), dev(&w2), dev(&sw13), dev(&sw2));
    let idd = dev(&HostTensor::from_slice([t, k], &ids).unwrap());
    let wtd = dev(&HostTensor::from_slice([t, k], &wts).unwrap());
    let inputs = ops::ExpertsInputs::new(&xd, &w13d, &w2d, &idd, &wtd).with_shared(&sw13d, &sw2d);
    let params = ExpertsParams {
        swiglu_limit: limit,
        ..Default::default()
    };
    let y = ops::moe_experts_with(&be, inputs, &params).unwrap();
    let got = be.download(&y).unwrap().to_f32_vec().unwrap();
    let xs = x.to_f32_vec().unwrap();
    let routed = reference(
        &xs,
        &w13.to_f32_vec().unwrap(),
        &w2.to_f32_vec().unwrap(),
        &ids,
        &wts,
        t,
        h,
        i,
        k,
        limit,
    );
    let every: Vec<i32> = (0..t).flat_map(|_| 0..sn as i32).collect();
    let shared = reference(
        &xs,
        &sw13.to_f32_vec().unwrap(),
        &sw2.to_f32_vec().unwrap(),
        &every,
        &vec![1.0; t * sn],
        t,
        h,
        si,
        sn,
        limit,
    );
    let tol = match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        _ => 2e-2,
    };
    for (n, g) in got.iter().enumerate() {
        let w = routed[n] + shared[n];
        assert!(
            (*g as f64 - w).abs() <= tol + tol * w.abs(),
            "{dtype} y[{n}] = {g}, want {w} (routed {}, shared {})",
            routed[n],
            shared[n]
        );
    }
    assert!(
        shared[..h].iter().any(|w| w.abs() > 0.01),
        "degenerate reference"
    );
    if limit.is_some() {
        // The clamp must change the result, or this case would not test it.
        let free = reference(
            &xs,
            &w13.to_f32_vec().unwrap(),
            &w2.to_f32_vec().unwrap(),
            &ids,
            &wts,
            t,
            h,
            i,
            k,
            None,
        );
        assert!(
            free.iter().zip(&routed).any(|(a, b)| (a - b).abs() > 0.05),
            "the clamp does not bite"
        );
    }
}

#[test]
fn shared_experts_are_added_with_weight_one() {
    for dtype in [DType::F32, DType::BF16] {
        check_shared(dtype, None);
    }
}

#[test]
fn the_swiglu_clamp_bites_gate_and_up() {
    // |g|, |u| reach ~1 here: c = 0.3 clamps many of them (aclnnClamp before aclnnSwiGlu).
    for dtype in [DType::F32, DType::F16] {
        check_shared(dtype, Some(0.3));
    }
}

#[test]
fn experts_match_reference_f32() {
    check(DType::F32);
}

#[test]
fn experts_match_reference_f16() {
    check(DType::F16);
}

#[test]
fn experts_match_reference_bf16() {
    check(DType::BF16);
}

#[test]
fn expert_id_out_of_range_is_an_index_error() {
    let be = common::backend();
    let (t, h, i, e, k) = (2, 16, 8, 4, 2);
    let up = |shape: &[usize]| {
        let n = shape.iter().product();
        be.upload(
            &HostTensor::from_f32_as(
                shape.to_vec(),
                &common::values(1, n, -1.0, 1.0),
                DType::BF16,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let ids = be
        .upload(&HostTensor::from_slice([t, k], &[0, 1, -1, 4]).unwrap())
        .unwrap();
    let wts = be
        .upload(&HostTensor::from_slice([t, k], &[0.5f32; 4]).unwrap())
        .unwrap();
    let err = ops::moe_experts(
        &be,
        &up(&[t, h]),
        &up(&[e, 2 * i, h]),
        &up(&[e, h, i]),
        &ids,
        &wts,
        &ExpertsParams::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::IndexOutOfRange { arg: "topk_ids", index, value: 4, .. } if index == &vec![1, 1]),
        "{err}"
    );
}

/// Uploads `values` as a `dtype` tensor of `shape`.
fn upload(be: &dyn Backend, shape: &[usize], values: &[f32], dtype: DType) -> DeviceTensor {
    be.upload(&HostTensor::from_f32_as(shape.to_vec(), values, dtype).unwrap())
        .unwrap()
}

fn empty_slots_case(dtype: DType) {
    let be = common::backend();
    let (t, h, i, e, k) = (3, 32, 16, 4, 3);
    let x = common::values(31, t * h, -1.0, 1.0);
    let mut w13 = common::values(32, e * 2 * i * h, -0.2, 0.2);
    let mut w2 = common::values(33, e * h * i, -0.2, 0.2);
    // Expert 0 computes NaN (its down projection is NaN), expert 2 inf/NaN (an inf in its
    // gate projection).
    w2[..h * i].fill(f32::NAN);
    w13[2 * 2 * i * h] = f32::INFINITY;
    // Row 0: an empty slot (-1) next to live ones; row 1: weights +0 and -0 on the
    // non-finite experts; row 2: a zero weight on expert 0 after two live slots.
    let ids = [1, -1, 3, 0, 1, 2, 3, 1, 0];
    let wts = [0.5, 0.7, 0.3, 0.0, 0.4, -0.0, 0.2, 0.3, 0.0f32];
    let (xh, w13h, w2h) = (
        HostTensor::from_f32_as([t, h], &x, dtype).unwrap(),
        HostTensor::from_f32_as([e, 2 * i, h], &w13, dtype).unwrap(),
        HostTensor::from_f32_as([e, h, i], &w2, dtype).unwrap(),
    );
    let y = ops::moe_experts(
        &be,
        &be.upload(&xh).unwrap(),
        &be.upload(&w13h).unwrap(),
        &be.upload(&w2h).unwrap(),
        &be.upload(&HostTensor::from_slice([t, k], &ids).unwrap())
            .unwrap(),
        &be.upload(&HostTensor::from_slice([t, k], &wts).unwrap())
            .unwrap(),
        &ExpertsParams::default(),
    )
    .unwrap();
    let got = be.download(&y).unwrap().to_f32_vec().unwrap();
    let want = reference(
        &xh.to_f32_vec().unwrap(),
        &w13h.to_f32_vec().unwrap(),
        &w2h.to_f32_vec().unwrap(),
        &ids,
        &wts,
        t,
        h,
        i,
        k,
        None,
    );
    let tol = if dtype == DType::F32 { 1e-4 } else { 2e-2 };
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            w.is_finite() && (*g as f64 - w).abs() <= tol + tol * w.abs(),
            "{dtype} y[{n}] = {g}, want {w}"
        );
    }
    assert!(want.iter().any(|w| w.abs() > 0.01), "degenerate reference");
}

#[test]
fn empty_and_zero_weight_slots_ignore_non_finite_experts_f32() {
    empty_slots_case(DType::F32);
}

#[test]
fn empty_and_zero_weight_slots_ignore_non_finite_experts_bf16() {
    empty_slots_case(DType::BF16);
}

#[test]
fn grouped_matmul_limits_are_unsupported() {
    // aclnnGroupedMatmulV4: at most 1024 groups, K (H for gate/up, I for down) <= 65535.
    let be = common::backend();
    let run = |t: usize, h: usize, i: usize, e: usize| {
        let ids = vec![0i32; t];
        let x = upload(&be, &[t, h], &vec![0.5; t * h], DType::BF16);
        let w13 = upload(&be, &[e, 2 * i, h], &vec![0.1; e * 2 * i * h], DType::BF16);
        let w2 = upload(&be, &[e, h, i], &vec![0.1; e * h * i], DType::BF16);
        let ids = be
            .upload(&HostTensor::from_slice([t, 1], &ids).unwrap())
            .unwrap();
        let wts = be
            .upload(&HostTensor::from_slice([t, 1], &vec![1.0f32; t]).unwrap())
            .unwrap();
        ops::moe_experts(&be, &x, &w13, &w2, &ids, &wts, &ExpertsParams::default())
    };
    assert!(run(1, 2, 1, 1024).is_ok());
    for (h, i, e, what) in [
        (2, 1, 1025, "E=1025"),
        (65536, 1, 1, "H=65536"),
        (2, 65536, 1, "I=65536"),
    ] {
        let err = run(1, h, i, e).unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { what: w, .. } if w == what),
            "{what}: {err}"
        );
    }
    // An input error is reported before the capability check.
    let ids = be
        .upload(&HostTensor::from_slice([1, 1], &[1025i32]).unwrap())
        .unwrap();
    let err = ops::moe_experts(
        &be,
        &upload(&be, &[1, 2], &[0.5; 2], DType::BF16),
        &upload(&be, &[1025, 2, 2], &vec![0.1; 1025 * 4], DType::BF16),
        &upload(&be, &[1025, 2, 1], &vec![0.1; 1025 * 2], DType::BF16),
        &ids,
        &be.upload(&HostTensor::from_slice([1, 1], &[1.0f32]).unwrap())
            .unwrap(),
        &ExpertsParams::default(),
    )
    .unwrap_err();
    assert!(matches!(&err, Error::IndexOutOfRange { .. }), "{err}");
}

#[test]
fn fp8_weights_are_dequantized_with_their_block_scales() {
    // w8a16: e4m3 weights with 128x128 block scales (partial edge blocks: H 200, I 72),
    // codes including 0x80 (-0.0) and ±448, compared with the reference over the
    // contract's dequantized weights.
    let be = common::backend();
    let (t, h, i, e, k): (usize, usize, usize, usize, usize) = (5, 200, 72, 2, 2);
    let code = |n: usize, seed| -> Vec<u8> {
        let v = common::values(seed, n, 0.0, 254.0);
        v.iter()
            .enumerate()
            .map(|(j, &x)| match j % 97 {
                0 => 0x80,
                1 => 0x7E,
                2 => 0xFE,
                _ if x as u8 & 0x7F == 0x7F => 0x00,
                _ => x as u8,
            })
            .collect()
    };
    let (rb13, cb) = ((2 * i).div_ceil(128), h.div_ceil(128));
    let (rb2, cb2) = (h.div_ceil(128), i.div_ceil(128));
    let c13 = code(e * 2 * i * h, 81);
    let c2 = code(e * h * i, 82);
    let s13 = common::values(83, e * rb13 * cb, 1e-3, 3e-3);
    let s2 = common::values(84, e * rb2 * cb2, 1e-3, 3e-3);
    let deq = |c: &[u8], s: &[f32], rows: usize, cols: usize, cbs: usize| -> Vec<f32> {
        let rbs = rows.div_ceil(128);
        (0..c.len())
            .map(|n| {
                let (ex, r, col) = (n / (rows * cols), n / cols % rows, n % cols);
                moemla_core::fp8::e4m3_decode(c[n]) * s[(ex * rbs + r / 128) * cbs + col / 128]
            })
            .collect()
    };
    let w13 = deq(&c13, &s13, 2 * i, h, cb);
    let w2 = deq(&c2, &s2, h, i, cb2);
    let x_host =
        HostTensor::from_f32_as([t, h], &common::values(85, t * h, -1.0, 1.0), DType::F32).unwrap();
    let ids: Vec<i32> = (0..t * k).map(|n| (n % e) as i32).collect();
    let wts = common::values(86, t * k, 0.2, 1.0);
    let up = |h: HostTensor| be.upload(&h).unwrap();
    let x = up(x_host.clone());
    let w13_t = up(HostTensor::from_bytes([e, 2 * i, h], DType::F8E4M3, c13).unwrap());
    let w2_t = up(HostTensor::from_bytes([e, h, i], DType::F8E4M3, c2).unwrap());
    let s13_t = up(HostTensor::from_slice([e, rb13, cb], &s13).unwrap());
    let s2_t = up(HostTensor::from_slice([e, rb2, cb2], &s2).unwrap());
    let id_t = up(HostTensor::from_slice([t, k], &ids).unwrap());
    let wt_t = up(HostTensor::from_slice([t, k], &wts).unwrap());
    let inputs =
        ops::ExpertsInputs::new(&x, &w13_t, &w2_t, &id_t, &wt_t).with_scales(&s13_t, &s2_t);
    let y = ops::moe_experts_with(&be, inputs, &ExpertsParams::default()).unwrap();
    let got = be.download(&y).unwrap().to_f32_vec().unwrap();
    let want = reference(
        &x_host.to_f32_vec().unwrap(),
        &w13,
        &w2,
        &ids,
        &wts,
        t,
        h,
        i,
        k,
        None,
    );
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 + 1e-4 * w.abs(),
            "y[{n}] = {g}, want {w}"
        );
    }
    assert!(want.iter().any(|w| w.abs() > 1e-3), "degenerate reference");
}
