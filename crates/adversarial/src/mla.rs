//! mla_decode with random sizes, block tables and sequence lengths holding out-of-range and
//! i32-extreme values, NaN in every cache slot no sequence uses, and extreme softmax scales.

use crate::values::{extreme_param, float_dtype, unit_f32, upload_as, upload_i32, usable_positive};
use crate::{describe, ensure, is_capability_error};
use moemla_core::{ops, Backend, DType, Error, MlaDecodeParams};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// One generated decode problem.
#[derive(Clone, Debug)]
pub struct MlaCase {
    batch: usize,
    s_q: usize,
    h_q: usize,
    h_kv: usize,
    d_qk: usize,
    block_size: usize,
    num_blocks: usize,
    max_blocks: usize,
    dtype: DType,
    params: MlaDecodeParams,
    table: Vec<i32>,
    seqlens: Vec<i32>,
    q: Vec<f32>,
    cache: Vec<f32>,
}

fn table_entry(num_blocks: usize) -> impl Strategy<Value = i32> {
    let nb = num_blocks as i32;
    prop_oneof![10 => 0..nb, 1 => Just(-1), 1 => Just(nb), 1 => Just(i32::MAX), 1 => Just(i32::MIN)]
}

fn seqlen(capacity: usize) -> impl Strategy<Value = i32> {
    let cap = capacity as i32;
    prop_oneof![10 => 0..=cap, 1 => Just(-1), 1 => Just(cap + 1), 1 => Just(i32::MAX)]
}

fn case() -> impl Strategy<Value = MlaCase> {
    let dims = (
        1usize..4,
        1usize..4,
        1usize..3,
        1usize..5,
        2usize..41,
        1usize..18,
        1usize..7,
        1usize..6,
    );
    (dims, float_dtype()).prop_flat_map(
        |((batch, s_q, h_kv, group, d_qk, block_size, num_blocks, max_blocks), dtype)| {
            let h_q = h_kv * group;
            (
                1..d_qk,
                prop::collection::vec(unit_f32(), batch * s_q * h_q * d_qk),
                prop::collection::vec(unit_f32(), num_blocks * block_size * h_kv * d_qk),
                prop::collection::vec(table_entry(num_blocks), batch * max_blocks),
                prop::collection::vec(seqlen(max_blocks * block_size), batch),
                any::<bool>(),
                extreme_param(),
            )
                .prop_map(move |(d_v, q, cache, table, seqlens, causal, scale)| {
                    let mut c = MlaCase {
                        batch,
                        s_q,
                        h_q,
                        h_kv,
                        d_qk,
                        block_size,
                        num_blocks,
                        max_blocks,
                        dtype,
                        q,
                        cache,
                        table,
                        seqlens,
                        params: MlaDecodeParams {
                            softmax_scale: scale,
                            causal,
                            head_dim_v: d_v,
                            kv_format: Default::default(),
                        },
                    };
                    poison_unused_slots(&mut c);
                    c
                })
        },
    )
}

/// Fills every cache row that no sequence reads with NaN: it must never reach a result.
fn poison_unused_slots(c: &mut MlaCase) {
    let row = c.h_kv * c.d_qk;
    let mut used = vec![false; c.num_blocks * c.block_size];
    for b in 0..c.batch {
        let len = c.seqlens[b].clamp(0, (c.max_blocks * c.block_size) as i32) as usize;
        for p in 0..len {
            let block = c.table[b * c.max_blocks + p / c.block_size];
            if (0..c.num_blocks as i32).contains(&block) {
                used[block as usize * c.block_size + p % c.block_size] = true;
            }
        }
    }
    for (slot, _) in used.iter().enumerate().filter(|(_, u)| !**u) {
        c.cache[slot * row..(slot + 1) * row].fill(f32::NAN);
    }
}

/// Whether every index the contract says is read is in range.
fn indices_valid(c: &MlaCase) -> bool {
    let capacity = (c.max_blocks * c.block_size) as i32;
    (0..c.batch).all(|b| {
        let len = c.seqlens[b];
        (0..=capacity).contains(&len)
            && (0..(len as usize).div_ceil(c.block_size))
                .all(|j| (0..c.num_blocks as i32).contains(&c.table[b * c.max_blocks + j]))
    })
}

/// A bad scale is `Error::Param`; a bad seqlen or used table entry is `IndexOutOfRange`;
/// otherwise o is finite, lse finite or -inf exactly where the range is empty, and the NaN
/// in unused slots never shows.
pub fn property(backend: &dyn Backend, mut runner: TestRunner) -> Result<(), String> {
    runner
        .run(&case(), |c| {
            let fail = |e: Error| TestCaseError::fail(format!("setup: {e}"));
            let (q, _) = upload_as(backend, &[c.batch, c.s_q, c.h_q, c.d_qk], &c.q, c.dtype)
                .map_err(fail)?;
            let cache_dims = [c.num_blocks, c.block_size, c.h_kv, c.d_qk];
            let (cache, _) = upload_as(backend, &cache_dims, &c.cache, c.dtype).map_err(fail)?;
            let table = upload_i32(backend, &[c.batch, c.max_blocks], &c.table).map_err(fail)?;
            let seqlens = upload_i32(backend, &[c.batch], &c.seqlens).map_err(fail)?;
            let result = ops::mla_decode(backend, &q, &cache, &table, &seqlens, &c.params)
                .and_then(|out| {
                    let o = backend.download(&out.o)?.to_f32_vec()?;
                    Ok((o, backend.download(&out.lse)?.to_f32_vec()?))
                });
            let scale_ok = usable_positive(c.params.softmax_scale);
            let (o, lse) = match result {
                Err(e) if !scale_ok => {
                    return ensure(
                        matches!(
                            e,
                            Error::Param {
                                param: "softmax_scale",
                                ..
                            }
                        ),
                        || format!("bad softmax_scale: expected Error::Param, got {e:?}"),
                    )
                }
                Err(e) if !indices_valid(&c) => {
                    return ensure(
                        matches!(
                            &e,
                            Error::IndexOutOfRange {
                                arg: "block_table" | "cache_seqlens",
                                ..
                            }
                        ),
                        || format!("bad index: expected IndexOutOfRange, got {e:?}"),
                    )
                }
                Err(e) => {
                    return ensure(is_capability_error(&e), || {
                        format!("valid call failed: {e}")
                    })
                }
                Ok(out) => out,
            };
            ensure(scale_ok && indices_valid(&c), || {
                "bad scale or index accepted".into()
            })?;
            ensure(o.iter().all(|v| v.is_finite()), || "o is not finite".into())?;
            for b in 0..c.batch {
                for h in 0..c.h_q {
                    for i in 0..c.s_q {
                        let len = c.seqlens[b] as i64;
                        let range = if c.params.causal {
                            len - c.s_q as i64 + i as i64 + 1
                        } else {
                            len
                        };
                        let v = lse[(b * c.h_q + h) * c.s_q + i];
                        let ok = if range <= 0 {
                            v == f32::NEG_INFINITY
                        } else {
                            v.is_finite()
                        };
                        ensure(ok, || {
                            format!("lse[{b}, {h}, {i}] = {v} with range {range}")
                        })?;
                    }
                }
            }
            Ok(())
        })
        .map_err(describe)
}
