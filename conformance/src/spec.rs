//! The tensors each op's case files carry (names and dtype rules), from the contract.

use moemla_core::{DType, Op};

/// What dtype a case tensor must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The run dtype (F32, F16 or BF16), the same for every `Run` tensor of the case.
    Run,
    /// Always F32.
    F32,
    /// Always I32.
    I32,
}

impl Rule {
    /// The dtype this rule requires in a case of run dtype `run`.
    pub(crate) fn dtype(self, run: DType) -> DType {
        match self {
            Rule::Run => run,
            Rule::F32 => DType::F32,
            Rule::I32 => DType::I32,
        }
    }
}

/// One tensor argument: its name (without the `in.` / `out.` prefix), dtype rule and
/// whether a case must carry it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arg {
    pub name: &'static str,
    pub rule: Rule,
    pub required: bool,
}

/// The tensors of one op. The first input decides the run dtype (logits, x, q).
#[derive(Debug)]
pub(crate) struct OpSpec {
    pub inputs: &'static [Arg],
    /// Expected outputs as stored: floats as F32, ids as I32.
    pub outputs: &'static [Arg],
}

const fn arg(name: &'static str, rule: Rule, required: bool) -> Arg {
    Arg {
        name,
        rule,
        required,
    }
}

const MOE_ROUTE: OpSpec = OpSpec {
    inputs: &[
        arg("logits", Rule::Run, true),
        arg("bias", Rule::F32, false),
    ],
    outputs: &[
        arg("topk_ids", Rule::I32, true),
        arg("topk_weights", Rule::F32, true),
    ],
};

const MOE_EXPERTS: OpSpec = OpSpec {
    inputs: &[
        arg("x", Rule::Run, true),
        arg("w13", Rule::Run, true),
        arg("w2", Rule::Run, true),
        arg("topk_ids", Rule::I32, true),
        arg("topk_weights", Rule::F32, true),
    ],
    outputs: &[arg("y", Rule::F32, true)],
};

const MLA_DECODE: OpSpec = OpSpec {
    inputs: &[
        arg("q", Rule::Run, true),
        arg("kv_cache", Rule::Run, true),
        arg("block_table", Rule::I32, true),
        arg("cache_seqlens", Rule::I32, true),
    ],
    outputs: &[arg("o", Rule::F32, true), arg("lse", Rule::F32, true)],
};

/// The tensor table of `op`.
pub(crate) fn spec(op: Op) -> &'static OpSpec {
    match op {
        Op::MoeRoute => &MOE_ROUTE,
        Op::MoeExperts => &MOE_EXPERTS,
        Op::MlaDecode => &MLA_DECODE,
    }
}
