//! The CPU's `mla_kv_quantize_into` and `dsa_indexer_topk_into` write the caller's outputs
//! in place: the bytes equal the allocating ops' (and, for the quantizer, the codec applied
//! row by row), every element of a reused output is overwritten, the tensors keep their
//! memory, and a repeated call allocates no tensor.

use moemla_core::fp8::{quantize_ds_v32_row, DS_V32_DIM, DS_V32_ROW_BYTES};
use moemla_core::ops;
use moemla_core::{
    Backend, DType, DeviceTensor, HostTensor, IndexerParams, KvFormat, KvQuantizeParams,
};
use moemla_cpu::{CpuBackend, CpuBuffer};

/// Deterministic values in about [-2, 2], without short periods.
fn vals(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

fn up(cpu: &CpuBackend, dims: &[usize], v: &[f32], dtype: DType) -> DeviceTensor {
    let host = HostTensor::from_slice(dims, v).unwrap();
    cpu.upload(&host.to_dtype(dtype).unwrap()).unwrap()
}

fn up_i32(cpu: &CpuBackend, dims: &[usize], v: &[i32]) -> DeviceTensor {
    cpu.upload(&HostTensor::from_slice(dims, v).unwrap())
        .unwrap()
}

fn addr(t: &DeviceTensor) -> usize {
    t.buffer::<CpuBuffer>("cpu", "test", "t").unwrap().addr()
}

fn bytes(cpu: &CpuBackend, t: &DeviceTensor) -> Vec<u8> {
    cpu.download(t).unwrap().as_bytes().to_vec()
}

#[test]
fn kv_quantize_into_writes_the_codec_bytes_in_place_without_allocating() {
    let cpu = CpuBackend::new();
    let p = KvQuantizeParams {
        kv_format: KvFormat::Fp8DsV32,
    };
    let n = 5;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let kv = up(&cpu, &[n, DS_V32_DIM], &vals(n * DS_V32_DIM, 3), dtype);
        // The reference: the codec on each row of kv as the op reads it.
        let rows = cpu.download(&kv).unwrap().to_f32_vec().unwrap();
        let mut want = vec![0u8; n * DS_V32_ROW_BYTES];
        for (out, row) in want
            .chunks_mut(DS_V32_ROW_BYTES)
            .zip(rows.chunks(DS_V32_DIM))
        {
            quantize_ds_v32_row(row.try_into().unwrap(), out.try_into().unwrap());
        }
        let out = cpu
            .upload(
                &HostTensor::from_slice([n, DS_V32_ROW_BYTES], &vec![0xA5u8; n * DS_V32_ROW_BYTES])
                    .unwrap(),
            )
            .unwrap();
        let at = addr(&out);
        ops::mla_kv_quantize_into(&cpu, &kv, &p, &out).unwrap();
        assert_eq!(bytes(&cpu, &out), want, "{dtype}");
        let alloc = ops::mla_kv_quantize(&cpu, &kv, &p).unwrap();
        assert_eq!(bytes(&cpu, &alloc), want, "{dtype}");
        let before = cpu.traffic().unwrap();
        ops::mla_kv_quantize_into(&cpu, &kv, &p, &out).unwrap();
        let moved = cpu.traffic().unwrap().since(&before);
        assert_eq!(moved.allocations, 0, "{moved}");
        assert_eq!(addr(&out), at);
        assert_eq!(bytes(&cpu, &out), want, "{dtype}");
    }
}

#[test]
fn indexer_topk_into_equals_the_allocating_op_in_place_without_allocating() {
    let cpu = CpuBackend::new();
    let (b, s_q, h_i, d_i, bs, blocks, k) = (2, 2, 3, 16, 4, 6, 5);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let q = up(
            &cpu,
            &[b, s_q, h_i, d_i],
            &vals(b * s_q * h_i * d_i, 1),
            dtype,
        );
        let w = up(&cpu, &[b, s_q, h_i], &vals(b * s_q * h_i, 2), DType::F32);
        let cache = up(&cpu, &[blocks, bs, d_i], &vals(blocks * bs * d_i, 5), dtype);
        let table = up_i32(&cpu, &[b, 3], &[4, 1, 0, 2, 5, 3]);
        // Sequence 1 attends fewer than top_k positions at its first query: -1 / -inf.
        let lens = up_i32(&cpu, &[b], &[11, 5]);
        for causal in [false, true] {
            let p = IndexerParams { top_k: k, causal };
            let want = ops::dsa_indexer_topk(&cpu, &q, &w, &cache, &table, &lens, &p).unwrap();
            let n = b * s_q * k;
            let ids = up_i32(&cpu, &[b, s_q, k], &vec![7; n]);
            let scores = up(&cpu, &[b, s_q, k], &vec![f32::NAN; n], DType::F32);
            let at = (addr(&ids), addr(&scores));
            let run = || {
                ops::dsa_indexer_topk_into(&cpu, &q, &w, &cache, &table, &lens, &p, &ids, &scores)
                    .unwrap()
            };
            run();
            let before = cpu.traffic().unwrap();
            run();
            let moved = cpu.traffic().unwrap().since(&before);
            assert_eq!(moved.allocations, 0, "{moved}");
            assert_eq!((addr(&ids), addr(&scores)), at);
            let got_ids = cpu.download(&ids).unwrap().to_i32_vec().unwrap();
            assert_eq!(bytes(&cpu, &ids), bytes(&cpu, &want.topk_indices));
            assert_eq!(bytes(&cpu, &scores), bytes(&cpu, &want.topk_scores));
            // Sequence 1 attends 5 positions; causally its first query attends 4, so its
            // last entry is -1.
            assert_eq!(got_ids.contains(&-1), causal, "{got_ids:?}");
            assert!(got_ids.iter().any(|&i| i >= 0), "{got_ids:?}");
        }
    }
}
