//! Index contents, checked by the backend (on GPUs: the kernels' error flag): the first bad
//! element in row-major order is reported with its position, value and valid range (the
//! same `valid` strings as `moemla_core::vendor::indices`). After an error the backend must still
//! compute correctly.

use crate::cases::experts::{run_experts, ExpertsData, ExpertsDims};
use crate::cases::mla::{MlaProblem, MlaSpec, UNUSED_ENTRY};
use crate::compare::{check_close, ensure, Tol};
use crate::harness::Ctx;
use crate::rng::Rng;
use moemla_core::{ops, DType, Error, ExpertsParams, Op};

/// Runs `moe_experts` (E 4, k 2, T = ids.len() / 2) with `ids` and expects the index
/// error at `index` with `value`, then checks a valid call on the same backend.
fn experts_index_error(ctx: &Ctx<'_>, ids: &[i32], index: [usize; 2], value: i64) {
    let d = ExpertsDims {
        tokens: ids.len() / 2,
        hidden: 4,
        inter: 2,
        experts: 4,
        top_k: 2,
    };
    let weights = vec![0.5; ids.len()];
    let valid_ids: Vec<i32> = (0..ids.len()).map(|i| (i % 5) as i32 - 1).collect();
    for dtype in ctx.float_dtypes(Op::MoeExperts) {
        let data = ExpertsData::random(d, &mut Rng::new(0x1d));
        let (x, _) = ctx.upload_as(&[d.tokens, d.hidden], &data.x, dtype);
        let (w13, _) = ctx.upload_as(&[d.experts, 2 * d.inter, d.hidden], &data.w13, dtype);
        let (w2, _) = ctx.upload_as(&[d.experts, d.hidden, d.inter], &data.w2, dtype);
        let id_t = ctx.upload_i32(&[d.tokens, d.top_k], ids);
        let (w_t, _) = ctx.upload_as(&[d.tokens, d.top_k], &weights, DType::F32);
        // Reported by the call itself or, where ops only enqueue, by the next synchronize.
        let got = ops::moe_experts(
            ctx.backend,
            &x,
            &w13,
            &w2,
            &id_t,
            &w_t,
            &ExpertsParams::default(),
        )
        .and_then(|_| ctx.backend.synchronize());
        let want = Error::IndexOutOfRange {
            op: Op::MoeExperts,
            arg: "topk_ids",
            index: index.to_vec(),
            value,
            valid: "[-1, 4)".into(),
        };
        assert_eq!(
            got.map(|_| ()),
            Err(want),
            "{dtype} T {} topk_ids {ids:?}",
            d.tokens
        );
        let (y, exp) = run_experts(ctx, dtype, d, &data, &valid_ids, &weights);
        let what = format!("{dtype} y after an index error");
        ensure(check_close(&what, &y, &exp, Tol::of(dtype)));
    }
}

/// 64 tokens of valid ids with bad ones written at the given (row, slot) positions.
fn many_tokens_with(bad: &[(usize, i32)]) -> Vec<i32> {
    let mut ids: Vec<i32> = (0..128).map(|i| i % 5 - 1).collect();
    for &(at, v) in bad {
        ids[at] = v;
    }
    ids
}

/// An id >= E is reported at its position (the first bad one, row-major).
pub fn topk_id_above_range(ctx: &Ctx<'_>) {
    experts_index_error(ctx, &[0, 1, 2, 4, 5, -1], [1, 1], 4);
    experts_index_error(ctx, &[0, 1, 2, 3, -1, i32::MAX], [2, 1], i32::MAX as i64);
    // Several bad ids far apart (different work-groups on a device): the first one wins.
    let ids = many_tokens_with(&[(127, 9), (81, 4), (100, 7)]);
    experts_index_error(ctx, &ids, [40, 1], 4);
}

/// An id < -1 is reported at its position.
pub fn topk_id_below_minus_one(ctx: &Ctx<'_>) {
    experts_index_error(ctx, &[0, -2, -5, 1, 0, 0], [0, 1], -2);
    experts_index_error(ctx, &[0, 1, 2, 3, 0, i32::MIN], [2, 1], i32::MIN as i64);
    let ids = many_tokens_with(&[(126, -2), (64, i32::MIN), (90, -3)]);
    experts_index_error(ctx, &ids, [32, 0], i32::MIN as i64);
}

/// B 2, Sq 1, blocks of 4, lengths 5 / 9: row 0 uses 2 table entries, row 1 uses 3.
fn mla_problem() -> MlaProblem {
    let spec = MlaSpec {
        s_q: 1,
        h_q: 2,
        h_kv: 1,
        d_qk: 8,
        d_v: 4,
        block_size: 4,
        seqlens: vec![5, 9],
        spare_blocks: 1,
        causal: false,
        softmax_scale: 0.5,
    };
    MlaProblem::random(&spec, &mut Rng::new(0x1e))
}

/// Runs `problem` and expects `want`; then checks the unmodified problem still computes
/// correctly on the same backend.
fn mla_index_error(ctx: &Ctx<'_>, problem: &MlaProblem, want: Error) {
    for dtype in ctx.float_dtypes(Op::MlaDecode) {
        // Reported by the call itself or, where ops only enqueue, by the next synchronize.
        let got = problem
            .call(ctx, dtype)
            .and_then(|_| ctx.backend.synchronize());
        assert_eq!(
            got,
            Err(want.clone()),
            "{dtype} table {:?} seqlens {:?}",
            problem.table,
            problem.seqlens
        );
        let (o, lse, exp) = mla_problem().run(ctx, dtype);
        ensure(check_close(
            &format!("{dtype} o after an index error"),
            &o,
            &exp.o,
            Tol::of(dtype),
        ));
        ensure(check_close(
            &format!("{dtype} lse after an index error"),
            &lse,
            &exp.lse,
            Tol::of(dtype),
        ));
    }
}

fn bad_entry(index: [usize; 2], value: i64, num_blocks: usize) -> Error {
    Error::IndexOutOfRange {
        op: Op::MlaDecode,
        arg: "block_table",
        index: index.to_vec(),
        value,
        valid: format!("[0, {num_blocks}) (num_blocks)"),
    }
}

fn bad_seqlen(b: usize, value: i64, capacity: usize) -> Error {
    Error::IndexOutOfRange {
        op: Op::MlaDecode,
        arg: "cache_seqlens",
        index: vec![b],
        value,
        valid: format!("[0, {capacity}] (max_blocks * block_size)"),
    }
}

/// A used block-table entry outside [0, num_blocks) is reported (first bad, row-major).
pub fn block_table_entry_out_of_range(ctx: &Ctx<'_>) {
    let base = mla_problem();
    let (nb, mb) = (base.dims.num_blocks, base.dims.max_blocks);
    let mut p = base.clone();
    p.table[mb + 1] = nb as i32;
    p.table[mb + 2] = -1;
    mla_index_error(ctx, &p, bad_entry([1, 1], nb as i64, nb));
    let mut p = base.clone();
    p.table[1] = -3;
    p.table[mb] = UNUSED_ENTRY;
    mla_index_error(ctx, &p, bad_entry([0, 1], -3, nb));
}

/// Entries past a row's length are never read: huge or negative values there are fine.
pub fn unused_block_table_entries_are_ignored(ctx: &Ctx<'_>) {
    for dtype in ctx.float_dtypes(Op::MlaDecode) {
        let mut p = mla_problem();
        let mb = p.dims.max_blocks;
        // Row 0 (length 5) uses columns 0..2, row 1 (length 9) columns 0..3.
        p.table[2] = -7;
        p.table[mb + 3] = UNUSED_ENTRY;
        let (o, lse, exp) = p.run(ctx, dtype);
        ensure(check_close(
            &format!("{dtype} o"),
            &o,
            &exp.o,
            Tol::of(dtype),
        ));
        ensure(check_close(
            &format!("{dtype} lse"),
            &lse,
            &exp.lse,
            Tol::of(dtype),
        ));
    }
}

/// A negative sequence length is reported.
pub fn seqlen_negative(ctx: &Ctx<'_>) {
    let mut p = mla_problem();
    p.seqlens[1] = -1;
    let capacity = p.dims.max_blocks * p.dims.block_size;
    mla_index_error(ctx, &p, bad_seqlen(1, -1, capacity));
}

/// A length above max_blocks * block_size is reported; exactly the capacity is valid.
pub fn seqlen_above_capacity(ctx: &Ctx<'_>) {
    let mut p = mla_problem();
    let capacity = p.dims.max_blocks * p.dims.block_size;
    p.seqlens[0] = capacity as i32 + 1;
    mla_index_error(ctx, &p, bad_seqlen(0, capacity as i64 + 1, capacity));
    for dtype in ctx.float_dtypes(Op::MlaDecode) {
        let mut p = mla_problem();
        let (nb, mb) = (p.dims.num_blocks as i32, p.dims.max_blocks);
        // Row 1 at full capacity: every column of the table is used.
        p.seqlens[1] = capacity as i32;
        for j in 0..mb {
            p.table[mb + j] = (j as i32 * 3 + 1) % nb;
        }
        p.kv.iter_mut()
            .filter(|v| v.is_nan())
            .for_each(|v| *v = 0.25);
        let (o, lse, exp) = p.run(ctx, dtype);
        ensure(check_close(
            &format!("{dtype} o at capacity"),
            &o,
            &exp.o,
            Tol::of(dtype),
        ));
        ensure(check_close(
            &format!("{dtype} lse at capacity"),
            &lse,
            &exp.lse,
            Tol::of(dtype),
        ));
    }
}

/// Sequence lengths are checked before the block table.
pub fn seqlens_checked_before_block_table(ctx: &Ctx<'_>) {
    let mut p = mla_problem();
    let capacity = p.dims.max_blocks * p.dims.block_size;
    p.table[0] = -1;
    p.seqlens[1] = 1000;
    mla_index_error(ctx, &p, bad_seqlen(1, 1000, capacity));
}

/// Backends are shared across threads (`Send + Sync`). A backend that reports index errors
/// from the call itself keeps them with their own call when calls run at the same time as
/// valid ones, and the valid calls still compute correctly. A backend whose ops only
/// enqueue reports an index error at the next synchronize of its queue, whichever thread
/// calls it (as CUDA's errors are per stream): there the same sequence runs on one thread.
pub fn concurrent_calls_keep_errors_apart(ctx: &Ctx<'_>) {
    if reports_index_errors_at_synchronize(ctx) {
        topk_id_above_range(ctx);
        block_table_entry_out_of_range(ctx);
        unused_block_table_entries_are_ignored(ctx);
        seqlens_checked_before_block_table(ctx);
        return;
    }
    let tests: [fn(&Ctx<'_>); 4] = [
        topk_id_above_range,
        block_table_entry_out_of_range,
        unused_block_table_entries_are_ignored,
        seqlens_checked_before_block_table,
    ];
    std::thread::scope(|scope| {
        for first in 0..tests.len() {
            scope.spawn(move || {
                for round in 0..2 {
                    tests[(first + round) % tests.len()](ctx);
                }
            });
        }
    });
}

/// Whether the backend's ops enqueue and leave index errors to the next synchronize
/// (probed with one bad expert id; the error is consumed by that synchronize).
fn reports_index_errors_at_synchronize(ctx: &Ctx<'_>) -> bool {
    let Some(&dtype) = ctx.float_dtypes(Op::MoeExperts).first() else {
        return false;
    };
    let d = ExpertsDims {
        tokens: 1,
        hidden: 4,
        inter: 2,
        experts: 4,
        top_k: 2,
    };
    let data = ExpertsData::random(d, &mut Rng::new(0x1f));
    let (x, _) = ctx.upload_as(&[1, 4], &data.x, dtype);
    let (w13, _) = ctx.upload_as(&[4, 4, 4], &data.w13, dtype);
    let (w2, _) = ctx.upload_as(&[4, 4, 2], &data.w2, dtype);
    let ids = ctx.upload_i32(&[1, 2], &[0, 9]);
    let (w, _) = ctx.upload_as(&[1, 2], &[0.5, 0.5], DType::F32);
    let at_call = ops::moe_experts(
        ctx.backend,
        &x,
        &w13,
        &w2,
        &ids,
        &w,
        &ExpertsParams::default(),
    );
    let at_sync = ctx.backend.synchronize();
    at_call.is_ok() && at_sync.is_err()
}
