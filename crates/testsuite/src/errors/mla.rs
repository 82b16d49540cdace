//! `mla_decode` validation: ranks, dtypes, every dim (block_size > 0 included), heads,
//! head_dim_v, softmax_scale, owning backend.

use super::{shells, Cases, Expect};
use crate::harness::Ctx;
use moemla_core::{ops, DType, MlaDecodeParams, Op};

const OP: Op = Op::MlaDecode;
const NAMES: [&str; 4] = ["q", "kv_cache", "block_table", "cache_seqlens"];

/// The four arguments as (dims, dtype); `valid()` is B 2, Sq 1, Hq 4, Hkv 2, Dqk 8,
/// 3 blocks of 4, max_blocks 2.
#[derive(Clone)]
struct Args([(Vec<usize>, DType); 4]);

impl Args {
    fn valid() -> Self {
        Args([
            (vec![2, 1, 4, 8], DType::F32),
            (vec![3, 4, 2, 8], DType::F32),
            (vec![2, 2], DType::I32),
            (vec![2], DType::I32),
        ])
    }

    fn with(arg: &str, dims: &[usize], dtype: DType) -> Self {
        let mut a = Self::valid();
        let i = NAMES.iter().position(|&n| n == arg).expect("argument name");
        a.0[i] = (dims.to_vec(), dtype);
        a
    }

    fn run(
        &self,
        ctx: &Ctx<'_>,
        foreign: Option<&str>,
        p: &MlaDecodeParams,
    ) -> moemla_core::Result<moemla_core::MlaDecodeOutput> {
        let t = shells(ctx.backend.name(), &NAMES, &self.0, foreign);
        ops::mla_decode(ctx.backend, &t[0], &t[1], &t[2], &t[3], p)
    }
}

fn params() -> MlaDecodeParams {
    MlaDecodeParams {
        softmax_scale: 0.5,
        causal: true,
        head_dim_v: 6,
        kv_format: Default::default(),
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
    c.expect(
        &label,
        Args::with(arg, dims, dtype).run(ctx, None, &params()),
        want,
    );
}

/// q and kv_cache rank 4, block_table rank 2, cache_seqlens rank 1.
pub fn rank(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let (f, i) = (DType::F32, DType::I32);
    expect(&mut c, ctx, "q", &[2, 4, 8], f, Expect::Rank(OP, "q", 3));
    expect(
        &mut c,
        ctx,
        "kv_cache",
        &[12, 2, 8],
        f,
        Expect::Rank(OP, "kv_cache", 3),
    );
    expect(
        &mut c,
        ctx,
        "block_table",
        &[4],
        i,
        Expect::Rank(OP, "block_table", 1),
    );
    expect(
        &mut c,
        ctx,
        "cache_seqlens",
        &[2, 1],
        i,
        Expect::Rank(OP, "cache_seqlens", 2),
    );
    c.finish();
}

/// q F32 | F16 | BF16; kv_cache the dtype of q; block_table and cache_seqlens I32.
pub fn dtype(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    expect(
        &mut c,
        ctx,
        "q",
        &[2, 1, 4, 8],
        DType::I32,
        Expect::DType(OP, "q", DType::I32),
    );
    expect(
        &mut c,
        ctx,
        "q",
        &[2, 1, 4, 8],
        DType::F8E4M3,
        Expect::DType(OP, "q", DType::F8E4M3),
    );
    expect(
        &mut c,
        ctx,
        "kv_cache",
        &[3, 4, 2, 8],
        DType::F16,
        Expect::DType(OP, "kv_cache", DType::F16),
    );
    expect(
        &mut c,
        ctx,
        "block_table",
        &[2, 2],
        DType::F32,
        Expect::DType(OP, "block_table", DType::F32),
    );
    expect(
        &mut c,
        ctx,
        "cache_seqlens",
        &[2],
        DType::F32,
        Expect::DType(OP, "cache_seqlens", DType::F32),
    );
    c.finish();
}

/// Every dim: B, Sq, Hq, Dqk, num_blocks, block_size, Hkv, max_blocks >= 1; Dqk and B agree.
pub fn dims(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    let (f, i) = (DType::F32, DType::I32);
    for (d, name) in ["B", "Sq", "Hq", "Dqk"].into_iter().enumerate() {
        let mut dims = vec![2, 1, 4, 8];
        dims[d] = 0;
        expect(&mut c, ctx, "q", &dims, f, Expect::Dim(OP, "q", d, name, 0));
    }
    for (d, name) in ["num_blocks", "block_size", "Hkv"].into_iter().enumerate() {
        let mut dims = vec![3, 4, 2, 8];
        dims[d] = 0;
        expect(
            &mut c,
            ctx,
            "kv_cache",
            &dims,
            f,
            Expect::Dim(OP, "kv_cache", d, name, 0),
        );
    }
    expect(
        &mut c,
        ctx,
        "kv_cache",
        &[3, 4, 2, 7],
        f,
        Expect::Dim(OP, "kv_cache", 3, "Dqk", 7),
    );
    expect(
        &mut c,
        ctx,
        "block_table",
        &[3, 2],
        i,
        Expect::Dim(OP, "block_table", 0, "B", 3),
    );
    expect(
        &mut c,
        ctx,
        "block_table",
        &[2, 0],
        i,
        Expect::Dim(OP, "block_table", 1, "max_blocks", 0),
    );
    expect(
        &mut c,
        ctx,
        "cache_seqlens",
        &[3],
        i,
        Expect::Dim(OP, "cache_seqlens", 0, "B", 3),
    );
    c.finish();
}

/// Hq must be a multiple of Hkv.
pub fn heads(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    expect(
        &mut c,
        ctx,
        "kv_cache",
        &[3, 4, 3, 8],
        DType::F32,
        Expect::Dim(OP, "kv_cache", 2, "Hkv", 3),
    );
    expect(
        &mut c,
        ctx,
        "kv_cache",
        &[3, 4, 8, 8],
        DType::F32,
        Expect::Dim(OP, "kv_cache", 2, "Hkv", 8),
    );
    c.finish();
}

/// 1 <= head_dim_v < Dqk.
pub fn head_dim_v(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    for (dv, rule) in [(0, ">= 1"), (8, "< Dqk"), (9, "< Dqk")] {
        let p = MlaDecodeParams {
            head_dim_v: dv,
            ..params()
        };
        let got = Args::valid().run(ctx, None, &p);
        c.expect(
            &format!("head_dim_v {dv}"),
            got,
            Expect::Param(OP, "head_dim_v", rule),
        );
    }
    c.finish();
}

/// softmax_scale finite and > 0 as the f32 kernels use (1e300 is inf and 1e-300 is 0 in f32).
pub fn softmax_scale(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    for s in [
        0.0,
        -0.5,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e300,
        1e-300,
    ] {
        let p = MlaDecodeParams {
            softmax_scale: s,
            ..params()
        };
        let got = Args::valid().run(ctx, None, &p);
        c.expect(
            &format!("softmax_scale {s}"),
            got,
            Expect::Param(OP, "softmax_scale", "finite and > 0"),
        );
    }
    c.finish();
}

/// Each argument of another backend is rejected by name.
pub fn wrong_backend(ctx: &Ctx<'_>) {
    let mut c = Cases::default();
    for name in NAMES {
        c.expect(
            name,
            Args::valid().run(ctx, Some(name), &params()),
            Expect::WrongBackend(OP, name),
        );
    }
    c.finish();
}
