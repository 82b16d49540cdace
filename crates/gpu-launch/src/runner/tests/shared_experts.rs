//! `moe_experts` with fused shared experts on the fake device: the routed launches, then
//! the shared rows, gate/up and down over every token with the shared weights (top_k 1,
//! Is, the clamp), then the shared combine reading both outputs; enqueued only.

use super::*;

fn addr(b: &FakeBackend, t: &DeviceTensor) -> Arg {
    Arg::Ptr(b.runner.buffer(t, "t", "t").unwrap().addr)
}

#[test]
fn shared_experts_run_after_the_routed_down_and_the_combine_adds_them() {
    let (b, fake) = backend();
    // T 3, k 2, E 4, H 64, I 32; S 2 shared experts of Is 40.
    let x = f32s(&b, &[3, 64]);
    let w13 = f32s(&b, &[4, 64, 64]);
    let w2 = f32s(&b, &[4, 64, 32]);
    let (sw13, sw2) = (f32s(&b, &[2, 80, 64]), f32s(&b, &[2, 64, 40]));
    // Token 1's slots are all -1: only its shared experts contribute.
    let ids = i32s(&b, &[3, 2], &[0, 3, -1, -1, 1, 1]);
    let w = f32s(&b, &[3, 2]);
    let params = ExpertsParams {
        swiglu_limit: Some(7.0),
        ..ExpertsParams::default()
    };
    b.synchronize().unwrap();
    fake.take_log();
    let inputs = ops::ExpertsInputs::new(&x, &w13, &w2, &ids, &w).with_shared(&sw13, &sw2);
    let y = ops::moe_experts_with(&b, inputs, &params).unwrap();
    assert!(!has(&fake.take_log(), "sync"));
    let l = queued(&fake);
    let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "moemla_moe_align",
            "moemla_moe_gate_up_f32",
            "moemla_moe_down_f32",
            "moemla_moe_shared_rows",
            "moemla_moe_gate_up_f32",
            "moemla_moe_down_f32",
            "moemla_moe_combine_shared_f32"
        ]
    );
    let (down, rows, gu, sdown, comb) = (&l[2].1, &l[3].1, &l[4].1, &l[5].1, &l[6].1);
    // rows (T, seg_tiles, rows, tile_expert, meta): T 3 is one tile per shared expert.
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[..2], [Arg::I32(3), Arg::I32(1)]);
    // gate/up (x, shared_w13, rows, tile_expert, meta, act, H, Is, top_k 1, limit).
    assert_eq!(gu.len(), 10);
    assert_eq!(gu[..2], [addr(&b, &x), addr(&b, &sw13)]);
    assert_eq!(gu[2..5], rows[2..5]);
    assert_eq!(
        gu[6..],
        [Arg::I32(64), Arg::I32(40), Arg::I32(1), Arg::F32(7.0)]
    );
    // down (act, shared_w2, rows, tile_expert, meta, yshared, H, Is).
    assert_eq!(sdown.len(), 8);
    assert_eq!(sdown[..2], [gu[5], addr(&b, &sw2)]);
    assert_eq!(sdown[2..5], rows[2..5]);
    assert_eq!(sdown[6..], [Arg::I32(64), Arg::I32(40)]);
    // The shared workspace is not the routed one.
    for a in &sdown[2..6] {
        assert!(!down[2..6].contains(a), "{a:?}");
    }
    // combine (yslot, slot_pos, weights, yshared, S, seg_rows, y, H, k).
    assert_eq!(comb.len(), 9);
    assert_eq!((comb[0], comb[3]), (down[5], sdown[5]));
    assert_eq!(comb[2], addr(&b, &w));
    assert_eq!(comb[4..6], [Arg::I32(2), Arg::I32(64)]);
    assert_eq!(comb[6], addr(&b, &y));
    assert_eq!(comb[7..], [Arg::I32(64), Arg::I32(2)]);
    b.synchronize().unwrap();
    // Without shared experts nothing of this is launched.
    experts(&b, &[0, 3, -1, -1, 1, 1]).unwrap();
    let names: Vec<String> = queued(&fake).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names.last().unwrap(), "moemla_moe_combine_f32");
    assert_eq!(names.len(), 4);
    b.synchronize().unwrap();
}

#[test]
fn cuda_and_hip_list_shared_experts_in_every_float_dtype() {
    let all = super::super::supported();
    for dtype in DType::FLOATS {
        let s = moemla_core::OpSupport::with_format(
            Op::MoeExperts,
            dtype,
            moemla_core::Format::SharedExperts,
        );
        assert!(all.contains(&s), "{dtype:?}");
    }
}
