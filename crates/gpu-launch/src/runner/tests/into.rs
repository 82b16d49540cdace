//! The `_into` forms on the fake device: the kernels write the caller's tensors (their
//! addresses are the output arguments), and after a warm-up call a repeated call allocates
//! nothing (the workspace and flags are reused).

use super::*;

fn addr(b: &FakeBackend, t: &DeviceTensor) -> Arg {
    Arg::Ptr(b.runner.buffer(t, "t", "t").unwrap().addr)
}

/// Runs `op` twice and returns the second call's log (after the first has been checked).
fn second_call(b: &FakeBackend, fake: &Fake, op: impl Fn()) -> Vec<String> {
    op();
    b.synchronize().unwrap();
    fake.take_log();
    op();
    fake.take_log()
}

#[test]
fn route_and_experts_into_write_the_callers_tensors_and_allocate_nothing() {
    let (b, fake) = backend();
    let logits = f32s(&b, &[5, 64]);
    let ids = b.alloc_zeroed(&Shape::new(vec![5, 6]), DType::I32).unwrap();
    let w = b.alloc_zeroed(&Shape::new(vec![5, 6]), DType::F32).unwrap();
    let params = RouteParams::deepseek_v2();
    let route = || {
        let inputs = moemla_core::ops::RouteInputs::new(&logits);
        ops::moe_route_into(&b, inputs, &params, &ids, &w).unwrap();
    };
    assert_eq!(
        second_call(&b, &fake, route),
        ["enter", "launch moemla_moe_route_f32"]
    );
    let (_, args) = queued(&fake).pop().unwrap();
    assert_eq!(args[6..8], [addr(&b, &ids), addr(&b, &w)]);

    let x = f32s(&b, &[3, 64]);
    let w13 = f32s(&b, &[4, 64, 64]);
    let w2 = f32s(&b, &[4, 64, 32]);
    let topk_ids = i32s(&b, &[3, 2], &[0, 3, -1, 2, 1, 1]);
    let topk_w = f32s(&b, &[3, 2]);
    let y = b
        .alloc_zeroed(&Shape::new(vec![3, 64]), DType::F32)
        .unwrap();
    let experts = || {
        let inputs = moemla_core::ops::ExpertsInputs::new(&x, &w13, &w2, &topk_ids, &topk_w);
        ops::moe_experts_into(&b, inputs, &ExpertsParams::default(), &y).unwrap();
    };
    let log = second_call(&b, &fake, experts);
    assert!(!has(&log, "alloc") && !has(&log, "sync"), "{log:?}");
    let (kernel, args) = queued(&fake).pop().unwrap();
    assert_eq!(kernel, "moemla_moe_combine_f32");
    assert_eq!(args[3], addr(&b, &y));
}

#[test]
fn decode_and_sparse_decode_into_write_the_callers_tensors_and_allocate_nothing() {
    let (b, fake) = backend();
    let q = f32s(&b, &[2, 1, 4, 24]);
    let kv = f32s(&b, &[4, 8, 1, 24]);
    let table = i32s(&b, &[2, 2], &[0, 1, 2, 3]);
    let seqlens = i32s(&b, &[2], &[16, 9]);
    let mut p = MlaDecodeParams::deepseek_v3();
    p.softmax_scale = 0.2;
    p.causal = false;
    p.head_dim_v = 16;
    let o = b
        .alloc_zeroed(&Shape::new(vec![2, 1, 4, 16]), DType::F32)
        .unwrap();
    let lse = b
        .alloc_zeroed(&Shape::new(vec![2, 4, 1]), DType::F32)
        .unwrap();
    let decode = || ops::mla_decode_into(&b, &q, &kv, &table, &seqlens, &p, &o, &lse).unwrap();
    let log = second_call(&b, &fake, decode);
    assert!(!has(&log, "alloc") && !has(&log, "sync"), "{log:?}");
    let (kernel, args) = queued(&fake).pop().unwrap();
    assert_eq!(kernel, "moemla_mla_combine_f32");
    // (o_part, lse_part, o, lse, ...)
    assert_eq!(args[2..4], [addr(&b, &o), addr(&b, &lse)]);

    let q = f32s(&b, &[2, 2, 4, 24]);
    let indices = i32s(&b, &[2, 2, 3], &[0, -1, 31, 5, 5, 6, 7, 8, 9, 1, 2, 3]);
    let sp = moemla_core::SparseDecodeParams {
        softmax_scale: 0.2,
        head_dim_v: 16,
        kv_format: moemla_core::KvFormat::Dense,
    };
    let o = b
        .alloc_zeroed(&Shape::new(vec![2, 2, 4, 16]), DType::F32)
        .unwrap();
    let lse = b
        .alloc_zeroed(&Shape::new(vec![2, 4, 2]), DType::F32)
        .unwrap();
    let sparse = || {
        let inputs = moemla_core::ops::SparseDecodeInputs::new(&q, &kv, &indices);
        ops::mla_sparse_decode_into(&b, inputs, &sp, &o, &lse).unwrap();
    };
    let log = second_call(&b, &fake, sparse);
    assert!(!has(&log, "alloc") && !has(&log, "sync"), "{log:?}");
    let (kernel, args) = queued(&fake).pop().unwrap();
    assert_eq!(kernel, "moemla_mla_sparse_combine_f32");
    // (o_part, lse_part, attn_sink, o, lse, ...)
    assert_eq!(args[3..5], [addr(&b, &o), addr(&b, &lse)]);
}

#[test]
fn kv_quantize_and_indexer_into_write_the_callers_tensors_and_allocate_nothing() {
    let (b, fake) = backend();
    let kv = f32s(&b, &[3, 576]);
    let out = b
        .alloc_zeroed(&Shape::new(vec![3, 656]), DType::U8)
        .unwrap();
    let params = moemla_core::KvQuantizeParams {
        kv_format: moemla_core::KvFormat::Fp8DsV32,
    };
    let quantize = || ops::mla_kv_quantize_into(&b, &kv, &params, &out).unwrap();
    let log = second_call(&b, &fake, quantize);
    assert!(!has(&log, "alloc") && !has(&log, "sync"), "{log:?}");
    let (kernel, args) = queued(&fake).pop().unwrap();
    assert_eq!(kernel, "moemla_mla_kv_quantize_f32");
    // (kv, kv_fp8, err)
    assert_eq!(args[..2], [addr(&b, &kv), addr(&b, &out)]);

    let q = f32s(&b, &[2, 2, 4, 16]);
    let w = f32s(&b, &[2, 2, 4]);
    let k = f32s(&b, &[4, 8, 16]);
    let table = i32s(&b, &[2, 2], &[0, 1, 2, 3]);
    let seqlens = i32s(&b, &[2], &[16, 3]);
    let p = moemla_core::IndexerParams {
        top_k: 5,
        causal: true,
    };
    let ids = b
        .alloc_zeroed(&Shape::new(vec![2, 2, 5]), DType::I32)
        .unwrap();
    let scores = b
        .alloc_zeroed(&Shape::new(vec![2, 2, 5]), DType::F32)
        .unwrap();
    let indexer =
        || ops::dsa_indexer_topk_into(&b, &q, &w, &k, &table, &seqlens, &p, &ids, &scores).unwrap();
    let log = second_call(&b, &fake, indexer);
    assert!(!has(&log, "alloc") && !has(&log, "sync"), "{log:?}");
    let (kernel, args) = queued(&fake).pop().unwrap();
    assert_eq!(kernel, "moemla_dsa_indexer_topk");
    // (scores, block_table, cache_seqlens, cand, cand_stride, topk_indices, topk_scores, ..)
    assert_eq!(args[5..7], [addr(&b, &ids), addr(&b, &scores)]);
    b.synchronize().unwrap();
}
