//! `mla_kv_quantize_into` and `dsa_indexer_topk_into` on OpenCL launch into the caller's
//! buffers: the bytes equal the codec's (quantizer) and the allocating op's (both), every
//! element of a reused output is overwritten, and a repeated call allocates nothing and
//! uploads nothing.

mod common;

use common::{backend, float_tensor, int_tensor, read_i32};
use moemla_core::fp8::{quantize_ds_v32_row, DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::ops;
use moemla_core::{
    Backend, DType, DeviceTensor, HostTensor, IndexerParams, KvFormat, KvQuantizeParams,
};

fn bytes(b: &dyn Backend, t: &DeviceTensor) -> Vec<u8> {
    b.download(t).unwrap().as_bytes().to_vec()
}

#[test]
fn v2_into_ops_write_the_callers_buffers_and_allocate_nothing_when_repeated() {
    let Some(be) = backend() else { return };
    let be: &dyn Backend = &*be;

    // mla_kv_quantize_into: the codec's bytes, row by row, over every stale byte.
    let p = KvQuantizeParams {
        kv_format: KvFormat::Fp8DsV32,
    };
    let n = 3;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let values = common::uniform(7, n * DS_V32_DIM, -3.0, 3.0);
        let (kv, stored) = float_tensor(be, &[n, DS_V32_DIM], &values, dtype);
        let mut want = vec![0u8; n * DS_V32_ROW_BYTES];
        for (out, row) in want
            .chunks_mut(DS_V32_ROW_BYTES)
            .zip(stored.chunks(DS_V32_DIM))
        {
            let row: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            quantize_ds_v32_row(row[..].try_into().unwrap(), out.try_into().unwrap());
        }
        let stale = vec![0xA5u8; n * DS_V32_ROW_BYTES];
        let out = be
            .upload(&HostTensor::from_slice([n, DS_V32_ROW_BYTES], &stale).unwrap())
            .unwrap();
        ops::mla_kv_quantize_into(be, &kv, &p, &out).unwrap();
        be.synchronize().unwrap();
        let before = be.traffic().unwrap();
        ops::mla_kv_quantize_into(be, &kv, &p, &out).unwrap();
        be.synchronize().unwrap();
        let moved = be.traffic().unwrap().since(&before);
        assert_eq!(
            (moved.allocations, moved.uploads),
            (0, 0),
            "{dtype}: {moved}"
        );
        assert_eq!(bytes(be, &out), want, "{dtype}");
        let alloc = ops::mla_kv_quantize(be, &kv, &p).unwrap();
        assert_eq!(bytes(be, &alloc), want, "{dtype}");
    }

    // dsa_indexer_topk_into: the allocating op's results over stale contents.
    let (b, s_q, h_i, d_i, bs, blocks, k) = (2, 2, 3, 16, 4, 6, 5);
    for dtype in [DType::F32, DType::BF16] {
        let qv = common::uniform(1, b * s_q * h_i * d_i, -1.0, 1.0);
        let (q, _) = float_tensor(be, &[b, s_q, h_i, d_i], &qv, dtype);
        let wv = common::uniform(2, b * s_q * h_i, -1.0, 1.0);
        let (w, _) = float_tensor(be, &[b, s_q, h_i], &wv, DType::F32);
        let kvals = common::uniform(3, blocks * bs * d_i, -1.0, 1.0);
        let (cache, _) = float_tensor(be, &[blocks, bs, d_i], &kvals, dtype);
        let table = int_tensor(be, &[b, 3], &[4, 1, 0, 2, 5, 3]);
        let lens = int_tensor(be, &[b], &[11, 5]);
        for causal in [false, true] {
            let p = IndexerParams { top_k: k, causal };
            let want = ops::dsa_indexer_topk(be, &q, &w, &cache, &table, &lens, &p).unwrap();
            let m = b * s_q * k;
            let ids = int_tensor(be, &[b, s_q, k], &vec![7; m]);
            let (scores, _) = float_tensor(be, &[b, s_q, k], &vec![f32::NAN; m], DType::F32);
            let run = || {
                ops::dsa_indexer_topk_into(be, &q, &w, &cache, &table, &lens, &p, &ids, &scores)
                    .unwrap();
                be.synchronize().unwrap();
            };
            run();
            let before = be.traffic().unwrap();
            run();
            let moved = be.traffic().unwrap().since(&before);
            assert_eq!((moved.allocations, moved.uploads), (0, 0), "{moved}");
            assert_eq!(bytes(be, &ids), bytes(be, &want.topk_indices));
            assert_eq!(bytes(be, &scores), bytes(be, &want.topk_scores));
            // Sequence 1 attends 5 positions; causally its first query attends 4.
            let got = read_i32(be, &ids);
            assert_eq!(got.contains(&-1), causal, "{got:?}");
            assert!(
                got.iter().all(|&i| i == -1 || (0..24).contains(&i)),
                "{got:?}"
            );
        }
    }
}
