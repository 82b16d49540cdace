//! `moe_experts` validation: ranks, dtypes, every dim, owning backend.

use super::{shells, Cases, Expect};
use crate::harness::Ctx;
use moemla_core::{ops, DType, ExpertsParams, Op};

const OP: Op = Op::MoeExperts;
const NAMES: [&str; 5] = ["x", "w13", "w2", "topk_ids", "topk_weights"];

/// The five arguments as (dims, dtype); `valid()` is T 3, H 4, I 3, E 2, k 2.
#[derive(Clone)]
struct Args([(Vec<usize>, DType); 5]);

impl Args {
    fn valid() -> Self {
        Args([
            (vec![3, 4], DType::F32),
            (vec![2, 6, 4], DType::F32),
            (vec![2, 4, 3], DType::F32),
            (vec![3, 2], DType::I32),
            (vec![3, 2], DType::F32),
        ])
    }

    /// The valid call with argument `arg` (by name) replaced.
    fn with(arg: &str, dims: &[usize], dtype: DType) -> Self {
        let mut a = Self::valid();
        let i = NAMES.iter().position(|&n| n == arg).expect("argument name");
        a.0[i] = (dims.to_vec(), dtype);
        a
    }

    /// Runs the call; arguments named in `foreign` belong to another backend.
    fn run(
        &self,
        ctx: &Ctx<'_>,
        foreign: Option<&str>,
    ) -> moemla_core::Result<moemla_core::DeviceTensor> {
        let t = shells(ctx.backend.name(), &NAMES, &self.0, foreign);
        ops::moe_experts(
            ctx.backend,
            &t[0],
            &t[1],
            &t[2],
            &t[3],
            &t[4],
            &ExpertsParams::default(),
        )
    }
}

fn expect(
    c: &mut Cases,
    ctx: &Ctx<'_>,
    arg: &'static str,
    dims: &[usize],
    dtype: DType,
    want: Expect,
) {
    let label = format!("{arg} {dims:?} {dtype}");
    c.expect(&label, Args::with(arg, dims, dtype).run(ctx, None), want);
}

/// x rank 2, w13 rank 3, w2 rank 3, topk_ids rank 2, topk_weights rank 2.
pub fn rank(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let f32 = DType::F32;
    expect(&mut c, ctx, "x", &[3, 4, 1], f32, Expect::Rank(OP, "x", 3));
    expect(
        &mut c,
        ctx,
        "w13",
        &[12, 4],
        f32,
        Expect::Rank(OP, "w13", 2),
    );
    expect(
        &mut c,
        ctx,
        "w2",
        &[2, 4, 3, 1],
        f32,
        Expect::Rank(OP, "w2", 4),
    );
    expect(
        &mut c,
        ctx,
        "topk_ids",
        &[6],
        DType::I32,
        Expect::Rank(OP, "topk_ids", 1),
    );
    expect(
        &mut c,
        ctx,
        "topk_weights",
        &[3, 2, 1],
        f32,
        Expect::Rank(OP, "topk_weights", 3),
    );
    c.finish();
}

/// x F32 | F16 | BF16; w13 and w2 the dtype of x; topk_ids I32; topk_weights F32.
pub fn dtype(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    expect(
        &mut c,
        ctx,
        "x",
        &[3, 4],
        DType::I32,
        Expect::DType(OP, "x", DType::I32),
    );
    expect(
        &mut c,
        ctx,
        "x",
        &[3, 4],
        DType::F8E4M3,
        Expect::DType(OP, "x", DType::F8E4M3),
    );
    expect(
        &mut c,
        ctx,
        "w13",
        &[2, 6, 4],
        DType::F16,
        Expect::DType(OP, "w13", DType::F16),
    );
    expect(
        &mut c,
        ctx,
        "w2",
        &[2, 4, 3],
        DType::BF16,
        Expect::DType(OP, "w2", DType::BF16),
    );
    expect(
        &mut c,
        ctx,
        "topk_ids",
        &[3, 2],
        DType::F32,
        Expect::DType(OP, "topk_ids", DType::F32),
    );
    expect(
        &mut c,
        ctx,
        "topk_weights",
        &[3, 2],
        DType::BF16,
        Expect::DType(OP, "topk_weights", DType::BF16),
    );
    expect(
        &mut c,
        ctx,
        "topk_weights",
        &[3, 2],
        DType::I32,
        Expect::DType(OP, "topk_weights", DType::I32),
    );
    c.finish();
}

/// Every dim: T, H, E >= 1; 2I even and >= 2; H, E, I, T and k agree across arguments.
pub fn dims(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let (f, i) = (DType::F32, DType::I32);
    expect(
        &mut c,
        ctx,
        "x",
        &[0, 4],
        f,
        Expect::Dim(OP, "x", 0, "T", 0),
    );
    expect(
        &mut c,
        ctx,
        "x",
        &[3, 0],
        f,
        Expect::Dim(OP, "x", 1, "H", 0),
    );
    expect(
        &mut c,
        ctx,
        "w13",
        &[0, 6, 4],
        f,
        Expect::Dim(OP, "w13", 0, "E", 0),
    );
    expect(
        &mut c,
        ctx,
        "w13",
        &[2, 5, 4],
        f,
        Expect::Dim(OP, "w13", 1, "2I", 5),
    );
    expect(
        &mut c,
        ctx,
        "w13",
        &[2, 0, 4],
        f,
        Expect::Dim(OP, "w13", 1, "2I", 0),
    );
    expect(
        &mut c,
        ctx,
        "w13",
        &[2, 6, 5],
        f,
        Expect::Dim(OP, "w13", 2, "H", 5),
    );
    expect(
        &mut c,
        ctx,
        "w2",
        &[3, 4, 3],
        f,
        Expect::Dim(OP, "w2", 0, "E", 3),
    );
    expect(
        &mut c,
        ctx,
        "w2",
        &[2, 5, 3],
        f,
        Expect::Dim(OP, "w2", 1, "H", 5),
    );
    expect(
        &mut c,
        ctx,
        "w2",
        &[2, 4, 2],
        f,
        Expect::Dim(OP, "w2", 2, "I", 2),
    );
    expect(
        &mut c,
        ctx,
        "topk_ids",
        &[4, 2],
        i,
        Expect::Dim(OP, "topk_ids", 0, "T", 4),
    );
    let mut no_slots = Args::with("topk_ids", &[3, 0], i);
    no_slots.0[4] = (vec![3, 0], f);
    c.expect(
        "k = 0",
        no_slots.run(ctx, None),
        Expect::Dim(OP, "topk_ids", 1, "k", 0),
    );
    expect(
        &mut c,
        ctx,
        "topk_weights",
        &[2, 2],
        f,
        Expect::Dim(OP, "topk_weights", 0, "T", 2),
    );
    expect(
        &mut c,
        ctx,
        "topk_weights",
        &[3, 3],
        f,
        Expect::Dim(OP, "topk_weights", 1, "k", 3),
    );
    c.finish();
}

/// Each argument of another backend is rejected by name.
pub fn wrong_backend(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    for name in NAMES {
        c.expect(
            name,
            Args::valid().run(ctx, Some(name)),
            Expect::WrongBackend(OP, name),
        );
    }
    c.finish();
}
