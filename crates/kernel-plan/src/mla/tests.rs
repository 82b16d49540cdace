use super::*;

/// An H100 (SXM): 132 SMs, 227 KiB of shared memory a block, tensor cores.
pub(crate) fn h100() -> DeviceLimits {
    DeviceLimits::cuda(132, 227 * 1024, true)
}

fn v3(batch: usize, s_q: usize, h_q: usize, seqlen: usize) -> MlaSizes {
    MlaSizes {
        batch,
        s_q,
        h_q,
        h_kv: 1,
        d_qk: 576,
        d_v: 512,
        num_blocks: batch * seqlen / 64,
        block_size: 64,
        max_blocks: seqlen / 64,
    }
}

#[test]
fn splits_cover_every_position_exactly_once() {
    for seqlen in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 4096, 4097] {
        for num_splits in 1..=9 {
            for block_n in [16usize, 32, 64] {
                let mut seen = vec![0u32; seqlen];
                let mut prev_end = 0;
                for split in 0..num_splits {
                    let (start, end) = split_range(seqlen, split, num_splits, block_n);
                    assert!(start <= end && end <= seqlen);
                    if start < end {
                        assert_eq!(start, prev_end, "splits are contiguous");
                        assert_eq!(start % block_n, 0, "a split starts on a step");
                        prev_end = end;
                    }
                    for c in &mut seen[start..end] {
                        *c += 1;
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "{seqlen} {num_splits} {block_n}"
                );
            }
        }
    }
}

#[test]
fn shared_memory_follows_the_documented_layout() {
    // bf16, Dqk 576, Dv 512, 16 rows, 64 positions:
    // Q 16*584*2, K 64*584*2, O 16*512*4, S 16*64*4, P 16*72*2, stats 16*16.
    let want = 18_688 + 74_752 + 32_768 + 4_096 + 2_304 + 256;
    assert_eq!(decode_shared_bytes(2, 576, 512, 16, 64).unwrap(), want);
    // Unaligned regions round up to 16 bytes: Dqk 5 -> KS 24; 1 row of f32 = 96 bytes.
    assert_eq!(
        decode_shared_bytes(4, 5, 3, 1, 16).unwrap(),
        96 + 16 * 96 + 32 + 64 + 96 + 16
    );
}

#[test]
fn memory_bound_shape_uses_tensor_tiles_and_one_full_wave() {
    let p = plan(&v3(128, 1, 16, 4096), DType::BF16, &h100()).unwrap();
    // 16 x 32 tiles: 93 KiB each, two blocks per SM (a 64-position tile needs 130 KiB).
    assert_eq!((p.block_q, p.block_n), (16, 32));
    assert!(2 * (decode_shared_bytes(2, 576, 512, 16, 32).unwrap() + 1024) <= 228 * 1024);
    // 128 blocks without splitting; 2 splits are 256 blocks, one wave of 2 * 132 slots.
    assert_eq!(p.num_splits, 2);
    assert_eq!(p.launches[1].grid, [2, 1, 128]);
    assert_eq!(p.launches[1].block, [256, 1, 1]);
    assert_eq!(p.launches[1].kernel, "moemla_mla_decode_bf16");
    assert_eq!(p.launches[2].grid, [128 * 16, 1, 1]);
    assert_eq!(p.workspace.o_part.bytes, 2 * 128 * 16 * 512 * 4);
    assert_eq!(p.workspace.lse_part.bytes, 2 * 128 * 16 * 4);
    assert_eq!(p.o_bytes, 128 * 16 * 512 * 2);
    assert_eq!(p.lse_bytes, 128 * 16 * 4);
    assert_eq!(p.launches[0].grid, [ceil_div(128 * 64, 256) as u32, 1, 1]);
}

#[test]
fn compute_bound_shape_has_sixteen_row_tiles() {
    let p = plan(&v3(128, 2, 128, 4096), DType::BF16, &h100()).unwrap();
    // 2 * 128 rows per kv head = 16 tiles of 16; 2048 blocks -> no split.
    assert_eq!(p.launches[1].grid, [1, 16, 128]);
    assert_eq!(p.num_splits, 1);
}

#[test]
fn small_shared_memory_shrinks_the_portable_tile() {
    let gfx942 = DeviceLimits::hip(304, 64, 64 * 1024);
    let p = plan(&v3(4, 1, 16, 512), DType::F32, &gfx942).unwrap();
    assert!(decode_shared_bytes(4, 576, 512, p.block_q, p.block_n).unwrap() <= 64 * 1024);
    assert_eq!((p.block_q, p.block_n), (4, 16));
    // Short caches get few splits: 512 positions at >= 256 a split.
    assert_eq!(p.num_splits, 2);
}

#[test]
fn a_head_dim_too_wide_for_shared_memory_is_unsupported() {
    let mut s = v3(1, 1, 16, 64);
    s.d_qk = 200_000;
    s.d_v = 512;
    let err = plan(&s, DType::F32, &h100()).unwrap_err();
    assert_eq!(err.op, Op::MlaDecode);
}

#[test]
fn sm80_prefers_two_resident_blocks_over_a_wider_tile() {
    let a100 = DeviceLimits::cuda(108, 163 * 1024, true);
    // 32 positions (93 KiB) do not fit twice in 164 KiB and 64 (130 KiB) only once;
    // 16 positions (71 KiB) fit twice, and two resident blocks come first.
    let p = plan(&v3(8, 1, 16, 1024), DType::BF16, &a100).unwrap();
    assert_eq!((p.block_q, p.block_n), (16, 16));
    assert!(2 * (decode_shared_bytes(2, 576, 512, 16, 16).unwrap() + 1024) <= 164 * 1024);
}

#[test]
fn split_count_is_capped() {
    assert_eq!(choose_splits(1, 1 << 20, 132), MAX_SPLITS);
    assert_eq!(choose_splits(1, 10, 132), 1);
    assert_eq!(choose_splits(10_000, 1 << 20, 132), 1);
}

#[test]
fn split_count_fills_whole_waves_of_two_blocks_per_sm() {
    // FlashMLA's decode shape on 132 SMs: 128 (batch, head tile) blocks per split. Two
    // splits are one wave of 256 blocks (3 would be 1.45 waves).
    assert_eq!(choose_splits(128, 4096, 132), 2);
    // One block per split: as many splits as the length allows, up to one wave.
    assert_eq!(choose_splits(1, 4096, 132), 16);
    assert_eq!(choose_splits(4, 1 << 20, 132), MAX_SPLITS);
    // Already more blocks than a wave holds: no split.
    assert_eq!(choose_splits(2048, 4096, 132), 1);
    // 100 blocks on 108 SMs (216 slots): 2 splits fill 200 of them.
    assert_eq!(choose_splits(100, 8192, 108), 2);
}

#[test]
fn sizes_that_overflow_are_plan_errors_not_wraps() {
    let mut s = v3(1, 1, 16, 64);
    s.max_blocks = usize::MAX / 2;
    let e = plan(&s, DType::F32, &h100()).unwrap_err();
    assert_eq!(e.what, "max_blocks * block_size");
    let mut s = v3(1, 1, 16, 64);
    s.block_size = 1 << 16;
    s.max_blocks = 1 << 16;
    let e = plan(&s, DType::F32, &h100()).unwrap_err();
    assert!(e.what.starts_with("max_blocks * block_size = "), "{e:?}");
    let mut s = v3(1 << 16, 1 << 16, 16, 64);
    s.num_blocks = 1;
    let e = plan(&s, DType::F32, &h100()).unwrap_err();
    assert!(e.what.starts_with("B * Sq * Hq = "), "{e:?}");
    assert_eq!(decode_shared_bytes(4, usize::MAX - 4, 8, 1, 16), None);
}

#[test]
fn batch_times_kv_heads_beyond_grid_z_is_unsupported() {
    let mut s = v3(70_000, 1, 1, 64);
    s.num_blocks = 1;
    let e = plan(&s, DType::F32, &h100()).unwrap_err();
    assert!(e.what.contains("grid z"), "{e:?}");
}

#[test]
fn the_fp8_cache_plan_is_the_dense_plan_with_the_fp8_kernel() {
    let s = MlaSizes {
        batch: 4,
        s_q: 1,
        h_q: 16,
        h_kv: 1,
        d_qk: 576,
        d_v: 512,
        num_blocks: 64,
        block_size: 64,
        max_blocks: 16,
    };
    let limits = DeviceLimits::cuda(132, 227 * 1024, true);
    let dense = plan(&s, DType::BF16, &limits).unwrap();
    let fp8 = plan_with(&s, DType::BF16, true, &limits).unwrap();
    assert_eq!(fp8.launches[1].kernel, "moemla_mla_decode_fp8_bf16");
    assert_eq!(
        (fp8.launches[1].grid, fp8.launches[1].shared_bytes),
        (dense.launches[1].grid, dense.launches[1].shared_bytes)
    );
    assert_eq!(fp8.workspace, dense.workspace);
    assert_eq!(fp8.launches[0], dense.launches[0]);
    assert_eq!(fp8.launches[2], dense.launches[2]);
}
